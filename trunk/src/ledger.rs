//! The aggregator's ledger: reports coalesced in memory between database commits, and the rule
//! for what may be acknowledged.
//!
//! Every report from a trunk (open, cumulative count, close) and every direct phone's count is
//! [`Ledger::record`]ed here under its [`SessionKey`]. Reports of one session merge into one entry
//! (the larger count wins), so a flush writes one row per session that changed, however many bytes
//! or replays arrived. A flush takes the sessions that changed longest ago
//! ([`Ledger::begin_flush`] returns them as a [`Flight`]), the caller writes [`Ledger::rows`] in one
//! transaction, and then reports the outcome:
//!
//! - [`Ledger::commit_succeeded`] hands back one acknowledgement per row, addressed to the route
//!   (trunk link or phone) the session's latest report came from. Only now is anything acknowledged.
//! - [`Ledger::commit_failed`] puts the flight back, first in line for the next flush.
//!
//! Several flights may be in the air at once: a session is in at most one of them, so concurrent
//! transactions never write the same row. Reports that arrive for a session in flight wait for
//! the next flush after that flight lands.
//!
//! The cost of every step follows the sessions that changed, never the table's size: changed
//! sessions wait in a first-in, first-out queue of their keys (kept in the table's own storage),
//! and a flight names its sessions by key. The table is a fixed slice the caller provides, so
//! memory is bounded: when [`Ledger::room`] runs low the caller stops reading from trunks
//! (backpressure), and the gateways hold their counts, which costs them nothing since counts are
//! cumulative.
//!
//! The store must keep, per session, the larger of the stored and the written count
//! (`GREATEST`): that is what makes a replay change nothing twice.

use crate::frame::{AckEntry, CloseReason, MAX_DEVICE_ID_LEN};
use crate::time::{Duration, Instant};
use crate::ShortBytes;

/// The gateway number [`SessionKey::gateway`] uses for phones connected straight to the
/// aggregator (no gateway).
pub const DIRECT: u32 = 0;

/// Which session a report is about, across the whole system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// The aggregator's number for the gateway (its database id), or [`DIRECT`].
    pub gateway: u32,
    /// The gateway's boot epoch (for direct phones: the aggregator process's).
    pub boot_epoch: u64,
    /// The session id within that boot.
    pub session: u64,
}

/// One report about a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Update<'a> {
    /// Cumulative bytes received, if the report carries a count.
    pub total: Option<u64>,
    /// The session's device id, if the report carries it (an Open).
    pub device: Option<&'a [u8]>,
    /// The session ended, if the report says so (a Close).
    pub closed: Option<CloseReason>,
}

/// What one flush writes for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row<'a> {
    /// Which session.
    pub key: SessionKey,
    /// The largest count reported; the store keeps the larger of this and what it has.
    pub total: u64,
    /// The device id, if a report since the last commit carried it (the store keeps the first).
    pub device: Option<&'a [u8]>,
    /// The session ended, if a report since the last commit said so.
    pub closed: Option<CloseReason>,
    /// Since when the row's oldest report waits (the low 32 bits of the caller's milliseconds);
    /// see [`Row::waited`].
    since_ms: u32,
}

impl Row<'_> {
    /// How long the row's oldest report has waited at `now` (the caller's clock, as given to
    /// [`Ledger::record`]): the row's flush lag if its flight commits now.
    pub fn waited(&self, now: Instant) -> Duration {
        Duration::from_millis(u64::from(elapsed_ms(now, self.since_ms)))
    }
}

/// Milliseconds from `since_ms` (the low 32 bits of a caller's clock) to `now`: right across
/// the 32-bit wrap (every 49 days), and 0 when `since_ms` is a little ahead of `now`, which
/// happens when callers read their clock before taking the lock that orders their calls (a
/// report recorded at 1,001 ms by one thread, its flight begun at 1,000 by another). Without
/// that, such a report would seem to have waited 49 days.
fn elapsed_ms(now: Instant, since_ms: u32) -> u32 {
    let d = low_millis(now).wrapping_sub(since_ms);
    if d > u32::MAX / 2 {
        0
    } else {
        d
    }
}

/// The low 32 bits of an instant's milliseconds: what a slot keeps (truncated on purpose: only
/// differences are taken, wrapping, and no report waits 49 days).
fn low_millis(t: Instant) -> u32 {
    t.as_millis() as u32
}

/// The ledger's table is full: stop reading reports until a flush frees entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LedgerFull;

impl core::fmt::Display for LedgerFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("the ledger is full until a commit frees room")
    }
}

impl core::error::Error for LedgerFull {}

bit_flags! {
    /// What a part of a slot holds.
    struct PartFlags {
        /// The part holds reports (not yet written, or being written).
        const DIRTY = 1 << 0;
        /// A report carried the device id.
        const HAS_DEVICE = 1 << 1;
        /// A report closed the session.
        const CLOSED = 1 << 2;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    total: u64,
    flags: PartFlags,
    reason: u8,
    /// Since when the part's oldest report waits (low 32 bits of the caller's milliseconds; in
    /// what was padding: the part stays 16 bytes).
    since_ms: u32,
}

impl Part {
    const NONE: Self = Self { total: 0, flags: PartFlags::NONE, reason: 0, since_ms: 0 };

    /// Adds `other`'s reports, which arrived later than this part's (if it has any).
    fn merge(&mut self, other: Part) {
        if !self.flags.contains(PartFlags::DIRTY) {
            self.since_ms = other.since_ms;
        }
        self.total = self.total.max(other.total);
        if other.flags.contains(PartFlags::CLOSED) {
            self.reason = other.reason;
        }
        self.flags.insert(other.flags);
    }
}

/// One entry of the ledger's table. Allocate `2^k` of them (`vec![LedgerSlot::EMPTY; n]`):
/// `size_of::<LedgerSlot>()` bytes each, reported in `docs/benchmarks.md`.
#[derive(Debug, Clone, Copy)]
pub struct LedgerSlot {
    key: SessionKey,
    route: u32,
    used: bool,
    pending: Part,
    inflight: Part,
    device: ShortBytes<MAX_DEVICE_ID_LEN>,
    /// Entry `i` of the queue of changed sessions lives in slot `i` (not the session's slot):
    /// the queue never holds more keys than the table holds sessions.
    queued: Queued,
}

/// One entry of the queue of changed sessions: the key.
type Queued = SessionKey;

impl LedgerSlot {
    /// An unused slot: what a new table is filled with.
    pub const EMPTY: Self = Self {
        key: SessionKey { gateway: 0, boot_epoch: 0, session: 0 },
        route: 0,
        used: false,
        pending: Part::NONE,
        inflight: Part::NONE,
        device: ShortBytes::EMPTY,
        queued: SessionKey { gateway: 0, boot_epoch: 0, session: 0 },
    };
}

/// The sessions of one flush, between [`Ledger::begin_flush`] and its commit. It names them by
/// key in a buffer the caller lends, and is consumed by [`Ledger::commit_succeeded`] or
/// [`Ledger::commit_failed`], so a flight lands once.
#[derive(Debug)]
#[must_use = "a flight must land: commit_succeeded or commit_failed"]
pub struct Flight<'k> {
    keys: &'k [SessionKey],
    /// The caller's time when the flight began.
    began: Instant,
    /// How long the flight's oldest report had waited when it began.
    waited_ms: u32,
}

impl Flight<'_> {
    /// Sessions in this flight.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the flight carries no session (nothing had changed).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The sessions, oldest change first.
    pub fn keys(&self) -> &[SessionKey] {
        self.keys
    }

    /// How long the flight's oldest report has waited at `now` (the caller's clock, as given to
    /// [`Ledger::record`]): the flush lag of this flight if it commits now; the largest of its
    /// rows' [`Row::waited`].
    pub fn waited(&self, now: Instant) -> Duration {
        Duration::from_millis(u64::from(self.waited_ms)) + (now - self.began)
    }
}

/// The coalescing table; see the module documentation.
pub struct Ledger<S> {
    slots: S,
    mask: usize,
    seed: u64,
    used: usize,
    dirty: usize,
    inflight: usize,
    max_used: usize,
    /// The queue of changed sessions not in flight: `queue_len` keys from `queue_head`, in the
    /// slots' `queued` fields, wrapping at the table's size.
    queue_head: usize,
    queue_len: usize,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: every input bit affects every output bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The slots a ledger over `len` uses: the largest power of two not above it.
const fn used_slots(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1usize << (usize::BITS - 1 - len.leading_zeros())
    }
}

/// How many sessions a ledger over `len` slots holds at most (7/8 of the slots it uses): for
/// sizing it against the messages it must take.
pub const fn sessions_in(len: usize) -> usize {
    let cap = used_slots(len);
    cap - cap / 8
}

impl<S: AsRef<[LedgerSlot]> + AsMut<[LedgerSlot]>> Ledger<S> {
    /// A ledger over `slots` (all [`LedgerSlot::EMPTY`]; only the largest power-of-two prefix is
    /// used, and at most 7/8 of it is filled). `seed` should be random: it keys the hash, so
    /// session ids a gateway chooses cannot be crafted to collide.
    pub fn new(slots: S, seed: u64) -> Self {
        let len = slots.as_ref().len();
        let cap = used_slots(len);
        Self {
            slots,
            mask: cap.wrapping_sub(1),
            seed,
            used: 0,
            dirty: 0,
            inflight: 0,
            max_used: sessions_in(len),
            queue_head: 0,
            queue_len: 0,
        }
    }

    /// Sessions the table holds (changed, or being committed).
    pub fn len(&self) -> usize {
        self.used
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Sessions with reports not yet in a flush (some of them may be waiting for their flight
    /// to land).
    pub fn dirty(&self) -> usize {
        self.dirty
    }

    /// Sessions a flush could take now: changed, and not in a flight.
    pub fn ready(&self) -> usize {
        self.queue_len
    }

    /// Sessions in flights being committed.
    pub fn in_flight(&self) -> usize {
        self.inflight
    }

    /// How many more sessions the table can take. Reading a message of `n` reports needs at
    /// most `n` of room.
    pub fn room(&self) -> usize {
        self.max_used - self.used
    }

    fn home(&self, key: &SessionKey) -> usize {
        let h = mix(self.seed ^ u64::from(key.gateway));
        let h = mix(h ^ key.boot_epoch);
        (mix(h ^ key.session) as usize) & self.mask
    }

    fn find(&self, key: &SessionKey) -> (usize, bool) {
        let slots = self.slots.as_ref();
        let mut i = self.home(key);
        loop {
            let slot = &slots[i];
            if !slot.used {
                return (i, false);
            }
            if slot.key == *key {
                return (i, true);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slot of a session the ledger holds (flights and the queue only name such sessions).
    fn slot_of(&self, key: &SessionKey) -> usize {
        let (i, found) = self.find(key);
        debug_assert!(found, "a queued or flying session is in the table");
        i
    }

    fn queue_push_back(&mut self, entry: Queued) {
        debug_assert!(self.queue_len <= self.mask);
        let at = (self.queue_head + self.queue_len) & self.mask;
        self.slots.as_mut()[at].queued = entry;
        self.queue_len += 1;
    }

    fn queue_push_front(&mut self, entry: Queued) {
        debug_assert!(self.queue_len <= self.mask);
        self.queue_head = self.queue_head.wrapping_sub(1) & self.mask;
        self.slots.as_mut()[self.queue_head].queued = entry;
        self.queue_len += 1;
    }

    fn queue_pop_front(&mut self) -> Option<Queued> {
        if self.queue_len == 0 {
            return None;
        }
        let key = self.slots.as_ref()[self.queue_head].queued;
        self.queue_head = (self.queue_head + 1) & self.mask;
        self.queue_len -= 1;
        Some(key)
    }

    /// Adds one report that arrived at `now` (the caller's clock; it is only used to tell how
    /// long reports wait, see [`Flight::waited`]); `route` is where its
    /// acknowledgement should go (the caller's number for a trunk link or phone connection).
    /// Every report makes the session dirty, even one that adds nothing: a replay on a new link
    /// must be acknowledged on that link.
    pub fn record(
        &mut self,
        key: SessionKey,
        route: u32,
        update: Update<'_>,
        now: Instant,
    ) -> Result<(), LedgerFull> {
        let (i, found) = if self.max_used == 0 { return Err(LedgerFull) } else { self.find(&key) };
        if !found {
            if self.used >= self.max_used {
                return Err(LedgerFull);
            }
            let queued = self.slots.as_ref()[i].queued;
            self.slots.as_mut()[i] = LedgerSlot { key, used: true, queued, ..LedgerSlot::EMPTY };
            self.used += 1;
        }
        let slot = &mut self.slots.as_mut()[i];
        let mut part = Part {
            total: update.total.unwrap_or(0),
            flags: PartFlags::DIRTY,
            reason: 0,
            since_ms: low_millis(now),
        };
        if let Some(device) = update.device.and_then(ShortBytes::new) {
            if !device.is_empty() {
                slot.device = device;
                part.flags.insert(PartFlags::HAS_DEVICE);
            }
        }
        if let Some(reason) = update.closed {
            part.flags.insert(PartFlags::CLOSED);
            part.reason = reason.0;
        }
        let newly_dirty = !slot.pending.flags.contains(PartFlags::DIRTY);
        let flying = slot.inflight.flags.contains(PartFlags::DIRTY);
        slot.pending.merge(part);
        slot.route = route;
        if newly_dirty {
            self.dirty += 1;
            // A session in flight joins the queue when its flight lands.
            if !flying {
                self.queue_push_back(key);
            }
        }
        Ok(())
    }

    /// Whether a flush is being committed.
    pub fn is_flushing(&self) -> bool {
        self.inflight > 0
    }

    /// Starts a flight, at `now`, with up to `keys.len()` of the sessions that changed longest
    /// ago and are not in another flight; their keys are written to `keys`. Costs O(sessions
    /// taken).
    pub fn begin_flush<'k>(&mut self, keys: &'k mut [SessionKey], now: Instant) -> Flight<'k> {
        let mut taken = 0;
        let mut waited_ms = 0;
        while taken < keys.len() {
            let Some(key) = self.queue_pop_front() else { break };
            let i = self.slot_of(&key);
            let slot = &mut self.slots.as_mut()[i];
            // Not simply the first entry's: sessions put back by a failed flight wait longer
            // than entries queued before them.
            waited_ms = waited_ms.max(elapsed_ms(now, slot.pending.since_ms));
            slot.inflight = slot.pending;
            slot.pending = Part { total: slot.pending.total, ..Part::NONE };
            keys[taken] = key;
            taken += 1;
        }
        self.dirty -= taken;
        self.inflight += taken;
        Flight { keys: &keys[..taken], began: now, waited_ms }
    }

    /// The rows of a flight, in its order.
    pub fn rows<'a>(&'a self, flight: &'a Flight<'_>) -> impl Iterator<Item = Row<'a>> + 'a {
        flight.keys.iter().map(move |key| {
            let s = &self.slots.as_ref()[self.slot_of(key)];
            Row {
                key: s.key,
                total: s.inflight.total,
                device: s.inflight.flags.contains(PartFlags::HAS_DEVICE).then(|| s.device.as_slice()),
                closed: s
                    .inflight
                    .flags
                    .contains(PartFlags::CLOSED)
                    .then_some(CloseReason(s.inflight.reason)),
                since_ms: s.inflight.since_ms,
            }
        })
    }

    /// The flight's transaction committed: `ack(route, key, entry)` is called once per row, and
    /// sessions with nothing newer are forgotten. Costs O(sessions in the flight).
    pub fn commit_succeeded(&mut self, flight: Flight<'_>, mut ack: impl FnMut(u32, SessionKey, AckEntry)) {
        for key in flight.keys {
            let i = self.slot_of(key);
            let slot = &mut self.slots.as_mut()[i];
            let entry = AckEntry {
                session: slot.key.session,
                total: slot.inflight.total,
                closed: slot.inflight.flags.contains(PartFlags::CLOSED),
            };
            ack(slot.route, slot.key, entry);
            // A close that is durable stays durable: later reports need not repeat it.
            slot.inflight = Part::NONE;
            let dirty = slot.pending.flags.contains(PartFlags::DIRTY);
            self.inflight -= 1;
            if dirty {
                // Its new reports arrived while it flew: their wait counts from their arrival.
                self.queue_push_back(*key);
            } else {
                self.remove(i);
            }
        }
    }

    /// The flight's transaction failed: its sessions go back to the front of the queue, so the
    /// next flush writes them first. Costs O(sessions in the flight).
    pub fn commit_failed(&mut self, flight: Flight<'_>) {
        // Backwards, so that pushing each to the front keeps the flight's order.
        for key in flight.keys.iter().rev() {
            let i = self.slot_of(key);
            let slot = &mut self.slots.as_mut()[i];
            let was_dirty = slot.pending.flags.contains(PartFlags::DIRTY);
            let inflight = slot.inflight;
            slot.pending.merge(inflight);
            // The flight's reports are older than any that arrived while it flew.
            slot.pending.since_ms = inflight.since_ms;
            slot.inflight = Part::NONE;
            self.inflight -= 1;
            if !was_dirty {
                self.dirty += 1;
            }
            self.queue_push_front(*key);
        }
    }

    /// Removes slot `i` by shifting later members of its probe run back (no tombstones, so lookups
    /// stay short however long the aggregator runs). The queue lives in the `queued` fields by
    /// queue position, not by session, so it does not move.
    fn remove(&mut self, i: usize) {
        let mask = self.mask;
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let slot = self.slots.as_ref()[j];
            if !slot.used {
                break;
            }
            let home = self.home(&slot.key);
            // The entry at j may fill the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                let queued = self.slots.as_ref()[hole].queued;
                self.slots.as_mut()[hole] = LedgerSlot { queued, ..slot };
                hole = j;
            }
        }
        let queued = self.slots.as_ref()[hole].queued;
        self.slots.as_mut()[hole] = LedgerSlot { queued, ..LedgerSlot::EMPTY };
        self.used -= 1;
    }
}

impl<S> core::fmt::Debug for Ledger<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ledger")
            .field("capacity", &self.mask.wrapping_add(1))
            .field("used", &self.used)
            .field("dirty", &self.dirty)
            .field("ready", &self.queue_len)
            .field("inflight", &self.inflight)
            .finish_non_exhaustive()
    }
}
