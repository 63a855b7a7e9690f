//! The gateway side: phone sessions on one side, K trunk links to the aggregator on the other.
//!
//! [`Gateway`] is a sans-IO state machine. The firmware (embassy) and host builds drive it the same
//! way: they tell it what phones did ([`Gateway::open`], [`Gateway::record`], [`Gateway::close`]) and
//! what links did ([`Gateway::connected`], [`Gateway::handle_message`], [`Gateway::disconnected`]),
//! and they ask it what to send ([`Gateway::poll_transmit`]) and when to wake up
//! ([`Gateway::poll_timeout`]).
//!
//! # How counts stay exact
//! Each session keeps three numbers: `count` (bytes its phone sent), `sent` (the count last reported
//! on the session's current link) and `acked` (the count the aggregator said a database commit
//! holds). Reports are cumulative, so repeating one is harmless. When a link is lost, every session
//! it carried goes back to `sent = acked` and is replayed on whichever link is up; nothing is kept
//! per message, so a gateway holds no retransmission buffers, and while the aggregator is away its
//! memory does not grow: counts simply accumulate in place. Any session's acknowledgement may
//! travel on any link, so a lost link rewinds every session that is not fully acknowledged.
//!
//! # Which link carries which session
//! Session `i` prefers link `i mod K`; if that link is not up, the next one that is. A session whose
//! preferred link changes (a link fell, came back, or was asked to go away) is replayed on its new
//! link; the aggregator keeps the larger of two reports, so a count in flight on both links at once
//! is still counted once.

use crate::auth;
use crate::frame::{
    self, AckEntry, Close, CloseReason, DecodeError, EncodeError, Frame, Hello, MessageWriter, Open,
    RefuseCode, MAX_DEVICE_ID_LEN, MAX_GATEWAY_ID_LEN, NONCE_LEN, PROOF_LEN, PROTOCOL_VERSION,
};
use crate::time::{Duration, Instant, PollAt};
use crate::ShortBytes;

/// Most links one gateway keeps (a bound on its fixed link table).
pub const MAX_LINKS: usize = 8;
/// Longest gateway secret accepted.
pub const MAX_SECRET_LEN: usize = 64;
/// The smallest transmit buffer [`Gateway::poll_transmit`] works with: a Hello fits in it, and
/// so does any session's Open. A Welcome allowing smaller messages is refused.
pub const MIN_TRANSMIT_BUFFER: usize = 256;
/// A Welcome cannot make the gateway ping more often than this.
pub const MIN_PING_INTERVAL: Duration = Duration::from_millis(1_000);

/// Timings and bounds of a gateway. Every field has a default fit for mobile phones behind a site
/// gateway; see `docs/trunk-protocol.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayConfig {
    /// How often counts are flushed on each link: the batching window. Default 250 ms.
    pub flush_interval: Duration,
    /// Send a ping when a link was quiet this long in either direction. Default 15 s.
    pub ping_interval: Duration,
    /// A link that received nothing for this long is dead. Default 45 s.
    pub link_timeout: Duration,
    /// A link that is not up this long after it connected is dead. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest frame payload the aggregator is sent (its decoding bound). Default 16 KiB.
    pub max_payload_len: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(250),
            ping_interval: Duration::from_secs(15),
            link_timeout: Duration::from_secs(45),
            handshake_timeout: Duration::from_secs(10),
            max_payload_len: frame::DEFAULT_MAX_PAYLOAD_LEN,
        }
    }
}

/// Who a gateway is: its id, its secret and this boot's epoch.
#[derive(Debug, Clone, Copy)]
pub struct Identity<'a> {
    /// The provisioned name (1 to [`crate::frame::MAX_GATEWAY_ID_LEN`] bytes).
    pub gateway_id: &'a [u8],
    /// The provisioned secret the handshake proves, never sent.
    pub secret: &'a [u8],
    /// Must differ at every boot (a persistent counter, or 64 random bits): session ids restart
    /// at every boot and the epoch keeps them apart.
    pub boot_epoch: u64,
}

/// A session's identity on the trunk: unique within one gateway boot epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl core::fmt::Display for SessionId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a session slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Unused: free for the next phone.
    Free,
    /// The phone is connected; its bytes are counted.
    Open,
    /// The phone is gone (for this reason); the slot stays until the aggregator acknowledges the
    /// close.
    Closing(CloseReason),
}

bit_flags! {
    /// What a session has told its current link and heard back.
    struct SlotFlags {
        /// The Open was written on the session's current link.
        const OPEN_SENT = 1 << 0;
        /// The aggregator acknowledged something of this session, so it holds the Open.
        const OPEN_ACKED = 1 << 1;
        /// The Close was written on the session's current link.
        const CLOSE_SENT = 1 << 2;
        /// The durable total grew since [`Gateway::poll_durable`] last returned it.
        const NOTIFY = 1 << 3;
        /// In the gateway's queue of sessions that may have something to report.
        const REPORT_QUEUED = 1 << 4;
        /// In the gateway's queue of sessions whose durable total grew.
        const NOTIFY_QUEUED = 1 << 5;
    }
}

/// The end of a [`SlotQueue`].
const NIL: u32 = u32::MAX;

/// A first-in first-out list of slot indexes threaded through the slots themselves (a `u32` per
/// slot and queue): adding and taking are O(1), and it needs no storage of its own. So a flush
/// or an acknowledgement costs what changed, not a walk over every phone's slot (19,000 slots of
/// 72 bytes are 1.4 MB of memory to read, and each flush of each link read them all).
#[derive(Debug, Clone, Copy)]
struct SlotQueue {
    head: u32,
    tail: u32,
}

/// Which of a slot's queue fields a [`SlotQueue`] uses.
type NextField = fn(&mut SessionSlot) -> &mut u32;

fn next_report(slot: &mut SessionSlot) -> &mut u32 {
    &mut slot.next_report
}

fn next_notify(slot: &mut SessionSlot) -> &mut u32 {
    &mut slot.next_notify
}

impl SlotQueue {
    const EMPTY: Self = Self { head: NIL, tail: NIL };

    fn push(&mut self, slots: &mut [SessionSlot], index: usize, next: NextField) {
        let i = index as u32;
        *next(&mut slots[index]) = NIL;
        match self.tail {
            NIL => self.head = i,
            tail => *next(&mut slots[tail as usize]) = i,
        }
        self.tail = i;
    }

    fn pop(&mut self, slots: &mut [SessionSlot], next: NextField) -> Option<usize> {
        if self.head == NIL {
            return None;
        }
        let index = self.head as usize;
        self.unlink(slots, NIL, index, next);
        Some(index)
    }

    /// Takes out `index`, which follows `prev` in the queue (`NIL`: it is the head).
    fn unlink(&mut self, slots: &mut [SessionSlot], prev: u32, index: usize, next: NextField) {
        let after = core::mem::replace(next(&mut slots[index]), NIL);
        match prev {
            NIL => self.head = after,
            prev => *next(&mut slots[prev as usize]) = after,
        }
        if self.tail == index as u32 {
            self.tail = prev;
        }
    }
}

/// Gives `slot` the session `fresh`, keeping the slot's places in the gateway's queues (a slot
/// leaves a queue when the queue reaches it, and a freed or reused slot may still be in one).
fn replace_session(slot: &mut SessionSlot, mut fresh: SessionSlot) {
    fresh.next_report = slot.next_report;
    fresh.next_notify = slot.next_notify;
    for queued in [SlotFlags::REPORT_QUEUED, SlotFlags::NOTIFY_QUEUED] {
        if slot.flags.contains(queued) {
            fresh.flags.insert(queued);
        }
    }
    *slot = fresh;
}

/// One phone session's trunk state: the whole of what a gateway keeps per phone for the trunk.
/// Allocate them as the caller likes (a static array on a board, a `Vec` on a host):
/// `size_of::<SessionSlot>()` bytes each, reported in `docs/benchmarks.md`.
#[derive(Debug, Clone, Copy)]
pub struct SessionSlot {
    count: u64,
    sent: u64,
    acked: u64,
    generation: u32,
    /// The next slot in the gateway's queue of sessions to report ([`NIL`]: none).
    next_report: u32,
    /// The next slot in the gateway's queue of sessions to notify ([`NIL`]: none).
    next_notify: u32,
    state: SlotState,
    flags: SlotFlags,
    /// The link the session's reports went to since its last rewind.
    link: Option<u8>,
    device: ShortBytes<MAX_DEVICE_ID_LEN>,
}

impl SessionSlot {
    /// An unused slot, for initialising storage (also in a `static`).
    pub const FREE: Self = Self {
        count: 0,
        sent: 0,
        acked: 0,
        generation: 0,
        next_report: NIL,
        next_notify: NIL,
        state: SlotState::Free,
        flags: SlotFlags::NONE,
        link: None,
        device: ShortBytes::EMPTY,
    };

    /// Where this slot stands.
    pub fn state(&self) -> SlotState {
        self.state
    }
}

/// Where a link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPhase {
    /// No transport.
    Down,
    /// Transport up; waiting for the aggregator's challenge.
    AwaitChallenge,
    /// Challenge received; the Hello is to be sent.
    SendHello,
    /// Hello sent; waiting for Welcome.
    AwaitWelcome,
    /// Authenticated: carries sessions.
    Up,
    /// The aggregator asked us to go: no new reports, acknowledgements still welcome.
    Draining,
}

#[derive(Debug, Clone, Copy)]
struct Link {
    phase: LinkPhase,
    since: Instant,
    last_rx: Instant,
    last_tx: Instant,
    next_flush: Instant,
    nonce: [u8; NONCE_LEN],
    challenge: [u8; NONCE_LEN],
    pong_due: Option<u64>,
    ping_sent: Option<u64>,
    pings: u64,
    /// Slot index where an interrupted flush resumes.
    resume: Option<usize>,
    /// Value of `Gateway::reroutes` when this link's last complete scan of every session began.
    scanned: u64,
    /// Value of `Gateway::reroutes` when the scan in progress (see `resume`) began.
    scan_from: u64,
    /// Ping when quiet this long: the shorter of ours and the aggregator's (Welcome).
    ping_interval: Duration,
    max_message_len: usize,
    not_before: Instant,
    failures: u32,
}

impl Link {
    const DOWN: Self = Self {
        phase: LinkPhase::Down,
        since: Instant::ZERO,
        last_rx: Instant::ZERO,
        last_tx: Instant::ZERO,
        next_flush: Instant::ZERO,
        nonce: [0; NONCE_LEN],
        challenge: [0; NONCE_LEN],
        pong_due: None,
        ping_sent: None,
        pings: 0,
        resume: None,
        scanned: 0,
        scan_from: 0,
        ping_interval: Duration::MAX,
        max_message_len: usize::MAX,
        not_before: Instant::ZERO,
        failures: 0,
    };
}

/// Why a gateway could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The gateway id is empty or longer than [`crate::frame::MAX_GATEWAY_ID_LEN`].
    GatewayIdLength,
    /// The secret is empty or too long.
    SecretLength,
    /// The number of links is not 1 to [`MAX_LINKS`].
    Links,
    /// The session storage holds no slot.
    NoSessions,
    /// The session storage holds more slots than a slot index (`u32`) can name.
    TooManySessions,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::GatewayIdLength => {
                write!(f, "the gateway id must be 1 to {} bytes", crate::frame::MAX_GATEWAY_ID_LEN)
            }
            Self::SecretLength => f.write_str("the secret is empty or too long"),
            Self::Links => write!(f, "a gateway has 1 to {MAX_LINKS} links"),
            Self::NoSessions => f.write_str("the session storage holds no slot"),
            Self::TooManySessions => write!(f, "a gateway holds at most {} sessions", NIL - 1),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Why a session could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// Every session slot is taken: the phone should be answered 503.
    Full,
    /// The device id is empty or longer than [`MAX_DEVICE_ID_LEN`].
    DeviceId,
}

impl core::fmt::Display for OpenError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Full => f.write_str("every session slot is taken"),
            Self::DeviceId => write!(f, "the device id must be 1 to {MAX_DEVICE_ID_LEN} bytes"),
        }
    }
}

impl core::error::Error for OpenError {}

/// The session id names no live session (it closed, or never existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UnknownSession;

impl core::fmt::Display for UnknownSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("no live session has this id")
    }
}

impl core::error::Error for UnknownSession {}

/// Why a link must be closed. The caller closes the transport and calls [`Gateway::disconnected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// The aggregator sent bytes that are not frames.
    Decode(DecodeError),
    /// A frame that makes no sense now (the text says which).
    Protocol(&'static str),
    /// The aggregator refused the link (unknown gateway, bad proof, ...).
    Refused(RefuseCode),
    /// The handshake or the link went silent past its timeout.
    TimedOut,
    /// The transmit buffer is smaller than [`MIN_TRANSMIT_BUFFER`].
    BufferTooSmall,
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Decode(e) => write!(f, "the aggregator sent bytes that are not frames: {e}"),
            Self::Protocol(what) => write!(f, "protocol error: {what}"),
            Self::Refused(code) => write!(f, "the aggregator refused the link (code {})", code.0),
            Self::TimedOut => f.write_str("the link went silent past its timeout"),
            Self::BufferTooSmall => write!(f, "the transmit buffer is under {MIN_TRANSMIT_BUFFER} bytes"),
        }
    }
}

impl core::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Decode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DecodeError> for LinkError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

impl From<EncodeError> for LinkError {
    fn from(_: EncodeError) -> Self {
        Self::BufferTooSmall
    }
}

/// The gateway's trunk state machine, over session storage `S` (`[SessionSlot; N]`,
/// `&'static mut [SessionSlot]`, `Vec<SessionSlot>`, ...).
pub struct Gateway<S> {
    config: GatewayConfig,
    gateway_id: ShortBytes<MAX_GATEWAY_ID_LEN>,
    secret: ShortBytes<MAX_SECRET_LEN>,
    boot_epoch: u64,
    slots: S,
    links: [Link; MAX_LINKS],
    link_count: usize,
    live: usize,
    open_cursor: usize,
    /// Sessions that may have something to report (opened, counted or closed since they were
    /// last written): a flush writes these.
    reports: SlotQueue,
    /// Sessions whose durable total grew: [`Gateway::poll_durable`] takes them from here.
    notify: SlotQueue,
    /// Bumped whenever sessions may have moved between links (a link came up, went down or was
    /// asked to go away): each link then scans every session once, then goes back to `reports`.
    reroutes: u64,
}

impl<S: AsRef<[SessionSlot]> + AsMut<[SessionSlot]>> Gateway<S> {
    /// A gateway with `links` trunk links (1..=[`MAX_LINKS`]) and as many sessions as `slots` has
    /// (every slot must be [`SessionSlot::FREE`]).
    pub fn new(
        config: GatewayConfig,
        identity: Identity<'_>,
        links: usize,
        slots: S,
    ) -> Result<Self, ConfigError> {
        if identity.gateway_id.is_empty() {
            return Err(ConfigError::GatewayIdLength);
        }
        let gateway_id = ShortBytes::new(identity.gateway_id).ok_or(ConfigError::GatewayIdLength)?;
        let secret = ShortBytes::new(identity.secret).ok_or(ConfigError::SecretLength)?;
        if identity.secret.is_empty() {
            return Err(ConfigError::SecretLength);
        }
        if links == 0 || links > MAX_LINKS {
            return Err(ConfigError::Links);
        }
        if slots.as_ref().is_empty() {
            return Err(ConfigError::NoSessions);
        }
        if slots.as_ref().len() >= NIL as usize {
            return Err(ConfigError::TooManySessions);
        }
        Ok(Self {
            config,
            gateway_id,
            secret,
            boot_epoch: identity.boot_epoch,
            slots,
            links: [Link::DOWN; MAX_LINKS],
            link_count: links,
            live: 0,
            open_cursor: 0,
            reports: SlotQueue::EMPTY,
            notify: SlotQueue::EMPTY,
            reroutes: 1,
        })
    }

    /// The session capacity.
    pub fn capacity(&self) -> usize {
        self.slots.as_ref().len()
    }

    /// Sessions open (or closed but not yet acknowledged closed).
    pub fn live_sessions(&self) -> usize {
        self.live
    }

    /// The number of links.
    pub fn link_count(&self) -> usize {
        self.link_count
    }

    /// This boot's epoch.
    pub fn boot_epoch(&self) -> u64 {
        self.boot_epoch
    }

    /// Where link `link` stands.
    pub fn link_phase(&self, link: usize) -> LinkPhase {
        self.links.get(link).map_or(LinkPhase::Down, |l| l.phase)
    }

    // ----- phone side -----

    /// A phone connected: give it a session. `device` is its optional device id.
    pub fn open(&mut self, device: Option<&[u8]>) -> Result<SessionId, OpenError> {
        let device = match device {
            None => ShortBytes::EMPTY,
            Some([]) => return Err(OpenError::DeviceId),
            Some(d) => ShortBytes::new(d).ok_or(OpenError::DeviceId)?,
        };
        let n = self.capacity();
        if self.live >= n {
            return Err(OpenError::Full);
        }
        let start = self.open_cursor;
        let slots = self.slots.as_mut();
        let index = (0..n).map(|k| (start + k) % n).find(|&i| slots[i].state == SlotState::Free);
        let Some(index) = index else { return Err(OpenError::Full) };
        let slot = &mut slots[index];
        let generation = slot.generation;
        replace_session(
            slot,
            SessionSlot { generation, state: SlotState::Open, device, ..SessionSlot::FREE },
        );
        let id = SessionId(u64::from(generation) * n as u64 + index as u64);
        self.open_cursor = (index + 1) % n;
        self.live += 1;
        self.queue_report(index);
        Ok(id)
    }

    /// Puts the session at slot `index` in the queue the next flush writes, if not there yet.
    fn queue_report(&mut self, index: usize) {
        let slots = self.slots.as_mut();
        if !slots[index].flags.contains(SlotFlags::REPORT_QUEUED) {
            slots[index].flags.insert(SlotFlags::REPORT_QUEUED);
            self.reports.push(slots, index, next_report);
        }
    }

    fn slot_index(&self, id: SessionId) -> Option<usize> {
        let n = self.capacity() as u64;
        let index = (id.0 % n) as usize;
        let generation = id.0 / n;
        let slot = &self.slots.as_ref()[index];
        (slot.state != SlotState::Free && u64::from(slot.generation) == generation).then_some(index)
    }

    /// The phone sent `bytes` payload bytes; returns the session's new total.
    pub fn record(&mut self, id: SessionId, bytes: u64) -> Result<u64, UnknownSession> {
        let index = self.slot_index(id).ok_or(UnknownSession)?;
        let slot = &mut self.slots.as_mut()[index];
        if slot.state != SlotState::Open {
            return Err(UnknownSession);
        }
        slot.count = slot.count.saturating_add(bytes);
        let count = slot.count;
        self.queue_report(index);
        Ok(count)
    }

    /// The phone is gone. Its session stays until the aggregator acknowledges the close.
    pub fn close(&mut self, id: SessionId, reason: CloseReason) -> Result<(), UnknownSession> {
        let index = self.slot_index(id).ok_or(UnknownSession)?;
        let slot = &mut self.slots.as_mut()[index];
        if slot.state != SlotState::Open {
            return Err(UnknownSession);
        }
        slot.state = SlotState::Closing(reason);
        self.queue_report(index);
        Ok(())
    }

    /// Bytes the phone sent on this session.
    pub fn total(&self, id: SessionId) -> Option<u64> {
        self.slot_index(id).map(|i| self.slots.as_ref()[i].count)
    }

    /// Bytes of this session a database commit holds.
    pub fn durable(&self, id: SessionId) -> Option<u64> {
        self.slot_index(id).map(|i| self.slots.as_ref()[i].acked)
    }

    /// The next open session whose durable total grew since it was last returned, for telling its
    /// phone. Returns `None` quickly when there is none.
    pub fn poll_durable(&mut self) -> Option<(SessionId, u64)> {
        let n = self.capacity();
        let slots = self.slots.as_mut();
        while let Some(index) = self.notify.pop(slots, next_notify) {
            let slot = &mut slots[index];
            slot.flags.remove(SlotFlags::NOTIFY_QUEUED);
            // Not set any more when the slot was freed (or freed and reused) while queued.
            if slot.flags.contains(SlotFlags::NOTIFY) {
                slot.flags.remove(SlotFlags::NOTIFY);
                let id = SessionId(u64::from(slot.generation) * n as u64 + index as u64);
                return Some((id, slot.acked));
            }
        }
        None
    }

    // ----- link side -----

    /// Link `link`'s transport (TLS and WebSocket) is up; `nonce` must be fresh random bytes.
    pub fn connected(&mut self, link: usize, now: Instant, nonce: [u8; NONCE_LEN]) {
        if link >= self.link_count {
            return;
        }
        // A new transport replaces whatever the link had: what it carried is replayed.
        self.disconnected(link, now);
        let l = &mut self.links[link];
        *l = Link {
            phase: LinkPhase::AwaitChallenge,
            since: now,
            last_rx: now,
            last_tx: now,
            nonce,
            failures: l.failures,
            not_before: l.not_before,
            pings: l.pings,
            ..Link::DOWN
        };
    }

    /// Link `link` is gone (closed, reset, timed out, refused). Its sessions will be replayed on the
    /// links that are up, from their last acknowledged counts.
    pub fn disconnected(&mut self, link: usize, now: Instant) {
        let Some(l) = self.links[..self.link_count].get_mut(link) else { return };
        if l.phase == LinkPhase::Down {
            return;
        }
        if l.phase != LinkPhase::Up && l.phase != LinkPhase::Draining {
            l.failures = l.failures.saturating_add(1);
        }
        l.phase = LinkPhase::Down;
        l.since = now;
        // Rewind every session, not only those this link carried: the aggregator sends an
        // acknowledgement on the link that brought a session's latest report, and when reports
        // race between links that may be this one. Sessions that are fully acknowledged have
        // nothing to replay, so this costs only the replays that are needed.
        for slot in self.slots.as_mut() {
            if slot.state != SlotState::Free {
                rewind(slot);
            }
        }
        self.reroutes += 1;
    }

    /// How long to wait before reconnecting link `link`: the aggregator's go-away hint, or
    /// exponential backoff with jitter after failed attempts (`random`: any random `u32`).
    pub fn reconnect_delay(&self, link: usize, now: Instant, random: u32) -> Duration {
        let Some(l) = self.links.get(link) else { return Duration::ZERO };
        let backoff = crate::backoff::Backoff::TRUNK.delay(l.failures, random);
        backoff.max(l.not_before - now)
    }

    /// Handles one WebSocket message received on `link`.
    pub fn handle_message(&mut self, link: usize, message: &[u8], now: Instant) -> Result<(), LinkError> {
        if link >= self.link_count || self.links[link].phase == LinkPhase::Down {
            return Err(LinkError::Protocol("message on a link that is down"));
        }
        self.links[link].last_rx = now;
        for frame in frame::frames(message, frame::MAX_PAYLOAD_LEN) {
            self.handle_frame(link, frame?, now)?;
        }
        Ok(())
    }

    fn handle_frame(&mut self, link: usize, frame: Frame<'_>, now: Instant) -> Result<(), LinkError> {
        let phase = self.links[link].phase;
        match frame {
            Frame::Challenge(c) if phase == LinkPhase::AwaitChallenge => {
                let l = &mut self.links[link];
                l.challenge = c.nonce;
                l.phase = LinkPhase::SendHello;
            }
            Frame::Welcome(w) if phase == LinkPhase::AwaitWelcome => {
                if usize::from(w.link) != link {
                    return Err(LinkError::Protocol("welcome names another link"));
                }
                if w.max_message_len < MIN_TRANSMIT_BUFFER as u64 {
                    return Err(LinkError::Protocol("welcome allows messages too small to carry a session"));
                }
                let told = Duration::from_millis(w.ping_interval_ms);
                let ping = self.config.ping_interval.min(told.max(MIN_PING_INTERVAL));
                let l = &mut self.links[link];
                l.phase = LinkPhase::Up;
                l.failures = 0;
                l.next_flush = now;
                l.max_message_len = usize::try_from(w.max_message_len).unwrap_or(usize::MAX);
                l.ping_interval = ping;
                l.scanned = 0;
                l.resume = None;
                self.reroutes += 1;
            }
            Frame::Ack(acks) if matches!(phase, LinkPhase::Up | LinkPhase::Draining) => {
                for entry in acks.iter() {
                    self.apply_ack(entry)?;
                }
            }
            Frame::Ping(n) if phase != LinkPhase::AwaitChallenge => self.links[link].pong_due = Some(n),
            Frame::Pong(n) => {
                let l = &mut self.links[link];
                if l.ping_sent == Some(n) {
                    l.ping_sent = None;
                }
            }
            Frame::GoAway(g) if matches!(phase, LinkPhase::Up | LinkPhase::Draining) => {
                let l = &mut self.links[link];
                l.phase = LinkPhase::Draining;
                l.not_before = now + Duration::from_millis(g.retry_after_ms);
                // Its unfinished flush is abandoned: those sessions move to other links.
                l.resume = None;
                self.reroutes += 1;
            }
            Frame::Refuse(r) => return Err(LinkError::Refused(r.code)),
            _ => return Err(LinkError::Protocol("unexpected frame for the link's state")),
        }
        Ok(())
    }

    fn apply_ack(&mut self, entry: AckEntry) -> Result<(), LinkError> {
        let Some(index) = self.slot_index(SessionId(entry.session)) else {
            return Ok(()); // a session already forgotten: a late duplicate
        };
        let slots = self.slots.as_mut();
        let slot = &mut slots[index];
        if entry.total > slot.count {
            return Err(LinkError::Protocol("acknowledged more bytes than were counted"));
        }
        slot.flags.insert(SlotFlags::OPEN_ACKED);
        if entry.total > slot.acked {
            slot.acked = entry.total;
            if !slot.flags.contains(SlotFlags::NOTIFY) && slot.state == SlotState::Open {
                slot.flags.insert(SlotFlags::NOTIFY);
                if !slot.flags.contains(SlotFlags::NOTIFY_QUEUED) {
                    slot.flags.insert(SlotFlags::NOTIFY_QUEUED);
                    self.notify.push(slots, index, next_notify);
                }
            }
        }
        let slot = &mut slots[index];
        if entry.closed {
            // The close may have been sent on a link lost since (so its close_sent flag was rewound): the
            // aggregator can only have it from us, so a closing session is all that is required.
            if !matches!(slot.state, SlotState::Closing(_)) {
                return Err(LinkError::Protocol("acknowledged a close of an open session"));
            }
            if entry.total == slot.count {
                let generation = slot.generation.wrapping_add(1);
                replace_session(slot, SessionSlot { generation, ..SessionSlot::FREE });
                self.live -= 1;
            }
        }
        Ok(())
    }

    /// The link a session at slot `index` should travel on now.
    fn route(&self, index: usize) -> Option<usize> {
        let k = self.link_count;
        (0..k).map(|j| (index + j) % k).find(|&l| self.links[l].phase == LinkPhase::Up)
    }

    /// The next WebSocket message to send on `link`, written into `out`; `Ok(None)` when there is
    /// nothing to send now. Call it until it returns `None` after every event and timeout.
    /// An error means the link must be closed (then call [`Gateway::disconnected`]).
    pub fn poll_transmit(
        &mut self,
        link: usize,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, LinkError> {
        if out.len() < MIN_TRANSMIT_BUFFER {
            return Err(LinkError::BufferTooSmall);
        }
        if link >= self.link_count {
            return Ok(None);
        }
        let l = self.links[link];
        match l.phase {
            LinkPhase::Down => return Ok(None),
            LinkPhase::AwaitChallenge | LinkPhase::SendHello | LinkPhase::AwaitWelcome => {
                if now - l.since > self.config.handshake_timeout {
                    return Err(LinkError::TimedOut);
                }
            }
            LinkPhase::Up | LinkPhase::Draining => {
                if now - l.last_rx > self.config.link_timeout {
                    return Err(LinkError::TimedOut);
                }
            }
        }
        let limit = out.len().min(l.max_message_len);
        let mut w = MessageWriter::new(&mut out[..limit], self.config.max_payload_len);
        if l.phase == LinkPhase::SendHello {
            // The Hello travels alone: the aggregator's first message must be exactly one Hello.
            self.write_hello(link, &mut w)?;
            self.links[link].phase = LinkPhase::AwaitWelcome;
            self.links[link].last_tx = now;
            return Ok(Some(w.finish()));
        }
        if let Some(n) = l.pong_due {
            w.frame(&Frame::Pong(n))?;
            self.links[link].pong_due = None;
        }
        if matches!(l.phase, LinkPhase::Up | LinkPhase::Draining) && l.ping_sent.is_none() {
            let quiet = now - l.last_rx.min(l.last_tx);
            if quiet >= l.ping_interval.min(self.config.ping_interval) {
                let n = l.pings.wrapping_add(1);
                w.frame(&Frame::Ping(n))?;
                let l = &mut self.links[link];
                l.pings = n;
                l.ping_sent = Some(n);
            }
        }
        if l.phase == LinkPhase::Up && (l.resume.is_some() || now >= l.next_flush) {
            self.flush(link, now, &mut w);
        }
        let len = w.finish();
        if len == 0 {
            return Ok(None);
        }
        self.links[link].last_tx = now;
        Ok(Some(len))
    }

    fn write_hello(&self, link: usize, w: &mut MessageWriter<'_>) -> Result<(), LinkError> {
        let l = &self.links[link];
        let mut hello = Hello {
            version: PROTOCOL_VERSION,
            link: link as u8,
            boot_epoch: self.boot_epoch,
            nonce: l.nonce,
            gateway_id: self.gateway_id.as_slice(),
            proof: [0; PROOF_LEN],
        };
        hello.proof = auth::prove(self.secret.as_slice(), &l.challenge, &hello);
        w.frame(&Frame::Hello(hello))?;
        Ok(())
    }

    /// Writes the opens, counts and closes that `link` carries, as many as fit; remembers where it
    /// stopped so the next message goes on from there.
    fn flush(&mut self, link: usize, now: Instant, w: &mut MessageWriter<'_>) {
        let l = self.links[link];
        if (l.resume.is_some() || l.scanned != self.reroutes) && !self.scan_all(link, w) {
            return; // the message is full: the next one goes on with the scan at once
        }
        let done = self.write_reports(link, w);
        // Not done: the message is full, and the next one goes on with the queue at once.
        self.links[link].next_flush = if done { now + self.config.flush_interval } else { now };
    }

    /// After sessions moved between links: writes every session `link` now carries (a session
    /// that moved here is replayed from what is durable). `false` if the message filled first;
    /// the next call goes on from there.
    fn scan_all(&mut self, link: usize, w: &mut MessageWriter<'_>) -> bool {
        let l = self.links[link];
        let resume = l.resume;
        // Links that change while a scan is split over several messages must not count as scanned.
        let scan_from = if resume.is_some() { l.scan_from } else { self.reroutes };
        let n = self.capacity();
        let mut stopped = None;
        for index in resume.unwrap_or(0)..n {
            if self.slots.as_ref()[index].state == SlotState::Free || self.route(index) != Some(link) {
                continue;
            }
            if !self.write_one(link, index, w) {
                stopped = Some(index);
                break;
            }
        }
        let l = &mut self.links[link];
        l.resume = stopped;
        l.scan_from = scan_from;
        if stopped.is_none() {
            l.scanned = scan_from;
        }
        stopped.is_none()
    }

    /// Writes the queued sessions that `link` carries, taking each out of the queue once written
    /// (or freed); those of other links stay for them. `false` if the message filled first.
    fn write_reports(&mut self, link: usize, w: &mut MessageWriter<'_>) -> bool {
        let mut prev = NIL;
        let mut at = self.reports.head;
        while at != NIL {
            let index = at as usize;
            let next = self.slots.as_ref()[index].next_report;
            let free = self.slots.as_ref()[index].state == SlotState::Free;
            let mine = !free && self.route(index) == Some(link);
            if mine && !self.write_one(link, index, w) {
                return false; // it stays in the queue, where it was
            }
            if free || mine {
                let slots = self.slots.as_mut();
                slots[index].flags.remove(SlotFlags::REPORT_QUEUED);
                self.reports.unlink(slots, prev, index, next_report);
            } else {
                prev = at;
            }
            at = next;
        }
        true
    }

    /// Writes what session `index` has to say on `link`, which now carries it; `false` if the
    /// message is full.
    fn write_one(&mut self, link: usize, index: usize, w: &mut MessageWriter<'_>) -> bool {
        let n = self.capacity();
        let slot = &mut self.slots.as_mut()[index];
        if slot.link != Some(link as u8) {
            rewind(slot); // moved here from another link: replay from what is durable
            slot.link = Some(link as u8);
        }
        write_session(slot, n, index, w)
    }

    /// When [`Gateway::poll_transmit`] may next have something to do on some link:
    /// [`PollAt::Now`] when a link has something ready, [`PollAt::Never`] when every link is
    /// down (then only an event, a connection or a phone, gives it work).
    pub fn poll_timeout(&self) -> PollAt {
        let c = &self.config;
        // A timeout fires once its duration has passed: one millisecond after the deadline.
        let tick = Duration::from_millis(1);
        self.links[..self.link_count]
            .iter()
            .map(|l| match l.phase {
                LinkPhase::Down => PollAt::Never,
                LinkPhase::SendHello => PollAt::Now,
                LinkPhase::AwaitChallenge | LinkPhase::AwaitWelcome => {
                    PollAt::At(l.since + c.handshake_timeout + tick)
                }
                LinkPhase::Up | LinkPhase::Draining => {
                    if l.pong_due.is_some() || (l.phase == LinkPhase::Up && l.resume.is_some()) {
                        return PollAt::Now;
                    }
                    let mut t = l.last_rx + c.link_timeout + tick;
                    if l.ping_sent.is_none() {
                        let ping = l.ping_interval.min(c.ping_interval);
                        t = t.min(l.last_rx.min(l.last_tx) + ping);
                    }
                    if l.phase == LinkPhase::Up {
                        t = t.min(l.next_flush);
                    }
                    PollAt::At(t)
                }
            })
            .min()
            .unwrap_or(PollAt::Never)
    }
}

/// Forget what was reported on the session's link: replay from the acknowledged state.
fn rewind(slot: &mut SessionSlot) {
    slot.sent = slot.acked;
    if !slot.flags.contains(SlotFlags::OPEN_ACKED) {
        slot.flags.remove(SlotFlags::OPEN_SENT);
    }
    slot.flags.remove(SlotFlags::CLOSE_SENT);
    slot.link = None;
}

/// Writes what one session has to say; `false` if the message is full (what was written stays
/// recorded in the slot's flags, so nothing is said twice on the same link needlessly).
fn write_session(slot: &mut SessionSlot, n: usize, index: usize, w: &mut MessageWriter<'_>) -> bool {
    let id = u64::from(slot.generation) * n as u64 + index as u64;
    if !slot.flags.contains(SlotFlags::OPEN_SENT) {
        let device = (!slot.device.is_empty()).then(|| slot.device.as_slice());
        if w.frame(&Frame::Open(Open { session: id, device })).is_err() {
            return false;
        }
        slot.flags.insert(SlotFlags::OPEN_SENT);
    }
    if let SlotState::Closing(reason) = slot.state {
        if !slot.flags.contains(SlotFlags::CLOSE_SENT) {
            let close = Close { session: id, total: slot.count, reason };
            if w.frame(&Frame::Close(close)).is_err() {
                return false;
            }
            slot.flags.insert(SlotFlags::CLOSE_SENT);
            slot.sent = slot.count;
        }
    } else if slot.count > slot.sent {
        if !w.count(id, slot.count) {
            return false;
        }
        slot.sent = slot.count;
    }
    true
}

impl<S: AsRef<[SessionSlot]>> core::fmt::Debug for Gateway<S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The secret is deliberately left out.
        f.debug_struct("Gateway")
            .field("gateway_id", &self.gateway_id)
            .field("boot_epoch", &self.boot_epoch)
            .field("capacity", &self.slots.as_ref().len())
            .field("live", &self.live)
            .field("links", &&self.links[..self.link_count])
            .finish_non_exhaustive()
    }
}
