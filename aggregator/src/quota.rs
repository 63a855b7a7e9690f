//! Per-gateway quotas (issue #12, finding M4): what one authenticated gateway may hold of this
//! process, so that it cannot take the ledger every gateway shares.
//!
//! The ledger (`trunk::ledger`) holds an entry per session with reports not yet committed, and
//! while it lacks room no link is read at all (backpressure, trunk_link.rs). Without a quota one
//! gateway that reports ever new session ids (or opens and closes them as fast as it can, or
//! reconnects with a new boot epoch each time: a boot row in the database, and a fresh start for
//! anything counted per boot) fills it, and every other gateway waits. Two bounds, both per
//! gateway and per process (each aggregator behind a balancer enforces its own):
//!
//! - **Sessions** (`--max-sessions-per-gateway`): the sessions of a gateway's boot that reported
//!   here and whose close this process has not yet acknowledged. That is what the gateway itself
//!   holds (it frees a session's slot only when its close is acknowledged), so an honest gateway
//!   stays within its own capacity; and every ledger entry of the boot is one of them, so the
//!   boot never holds more ledger entries than the quota, however fast it opens and closes
//!   sessions (a closed session counts until its close is committed). Reports of sessions beyond
//!   the quota are not recorded; the link is refused (`QUOTA`) after the rest of its message is.
//! - **Boots** (`--max-gateway-boots-per-hour`): how often a gateway may come with a boot epoch
//!   other than the one this process holds for it, in any hour (the first boot seen counts).
//!   One boot is live per gateway here: when a new one comes, the links of the previous one are
//!   refused (`SUPERSEDED`) at their next message, and its sessions stop counting. A boot beyond
//!   the limit is refused (`QUOTA`) at the handshake, before it is written to the database.
//!
//! One gateway therefore holds at most the session quota in the ledger while the database keeps
//! up, and at most the session quota times the boot limit while it is stalled for an hour.
//!
//! The cost on the hot path: one pass over each trunk message's frames and one hash lookup per
//! report, under a lock of the gateway's own (its links only), outside the ledger's lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use trunk::frame::{AckEntry, Frame};

/// The window of `--max-gateway-boots-per-hour`.
pub const BOOT_WINDOW: Duration = Duration::from_secs(3600);

/// What a gateway over its session quota is told to wait before reconnecting (in a GoAway sent
/// with the refusal): it replays everything when it comes back, so not at once.
pub const QUOTA_RETRY_MS: u64 = 30_000;

/// Session ids a gateway's message was refused for (a fast hash with a random seed: the ids come
/// from an authenticated gateway, as in `state.rs`).
pub type SessionSet = HashSet<u64, foldhash::fast::RandomState>;

/// The quotas of every gateway with links to this process.
pub struct Quotas {
    max_sessions: usize,
    max_boots: usize,
    gateways: Mutex<HashMap<u32, GatewayQuota>>,
}

struct GatewayQuota {
    boot: Arc<BootSessions>,
    /// When this process took each of the gateway's boots within the last [`BOOT_WINDOW`],
    /// oldest first (at most the boot limit).
    boots: VecDeque<Instant>,
}

/// The sessions of one gateway boot that count against its quota; every link of the boot holds
/// it.
pub struct BootSessions {
    epoch: u64,
    max: usize,
    /// A newer boot of the gateway was taken: links of this one must close.
    superseded: AtomicBool,
    unfinished: Mutex<SessionSet>,
}

/// Why a boot was refused at the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyBoots;

/// What [`BootSessions::admit`] says of one message.
#[derive(Debug)]
pub enum Admission {
    /// Every session it reports about is within the quota.
    All,
    /// These sessions are beyond it: record the rest, then refuse the link.
    Refused(SessionSet),
    /// A newer boot of the gateway was taken since the link came up: refuse the link.
    Superseded,
}

impl Quotas {
    pub fn new(max_sessions: usize, max_boots: usize) -> Self {
        Quotas { max_sessions: max_sessions.max(1), max_boots: max_boots.max(1), gateways: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u32, GatewayQuota>> {
        self.gateways.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a link of `gateway` in boot `epoch` may come up as far as the boot limit goes,
    /// without taking the boot yet (the database has not said whether it is a current boot).
    pub fn check_boot(&self, gateway: u32, epoch: u64, now: Instant) -> Result<(), TooManyBoots> {
        let mut gateways = self.lock();
        match gateways.get_mut(&gateway) {
            Some(g) if g.boot.epoch == epoch => Ok(()),
            Some(g) => {
                prune(&mut g.boots, now);
                if g.boots.len() >= self.max_boots {
                    Err(TooManyBoots)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Takes boot `epoch` of `gateway` for a link that is coming up: the gateway's current boot,
    /// or a new one (counted against the boot limit; the previous boot's links are told they are
    /// superseded).
    pub fn take_boot(
        &self,
        gateway: u32,
        epoch: u64,
        now: Instant,
    ) -> Result<Arc<BootSessions>, TooManyBoots> {
        let mut gateways = self.lock();
        let fresh = || Arc::new(BootSessions::new(epoch, self.max_sessions));
        match gateways.get_mut(&gateway) {
            Some(g) if g.boot.epoch == epoch => Ok(g.boot.clone()),
            Some(g) => {
                prune(&mut g.boots, now);
                if g.boots.len() >= self.max_boots {
                    return Err(TooManyBoots);
                }
                g.boots.push_back(now);
                g.boot.superseded.store(true, Ordering::Relaxed);
                g.boot = fresh();
                Ok(g.boot.clone())
            }
            None => {
                let boot = fresh();
                gateways.insert(gateway, GatewayQuota { boot: boot.clone(), boots: VecDeque::from([now]) });
                Ok(boot)
            }
        }
    }

    /// Forgets the gateways without links here whose boots are all older than the window (the
    /// next link of such a gateway starts afresh, its boot counted again).
    pub fn forget_idle(&self, now: Instant) {
        self.lock().retain(|_, g| {
            prune(&mut g.boots, now);
            Arc::strong_count(&g.boot) > 1 || !g.boots.is_empty()
        });
    }
}

/// Drops the boots taken more than [`BOOT_WINDOW`] before `now`.
fn prune(boots: &mut VecDeque<Instant>, now: Instant) {
    while boots.front().is_some_and(|t| now.saturating_duration_since(*t) >= BOOT_WINDOW) {
        boots.pop_front();
    }
}

impl BootSessions {
    fn new(epoch: u64, max: usize) -> Self {
        BootSessions { epoch, max, superseded: AtomicBool::new(false), unfinished: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, SessionSet> {
        self.unfinished.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions counted against the quota now.
    pub fn counted(&self) -> usize {
        self.lock().len()
    }

    /// Counts the sessions `message` (from a link of this boot) reports about: those already
    /// counted, and new ones while the quota has room, are admitted. Frames that do not decode
    /// are left to the trunk protocol, which refuses them.
    pub fn admit(&self, message: &[u8], max_payload_len: usize) -> Admission {
        if self.superseded.load(Ordering::Relaxed) {
            return Admission::Superseded;
        }
        let mut unfinished = self.lock();
        let mut refused: Option<SessionSet> = None;
        let mut one = |session: u64| {
            // One lookup for a session already counted, or while there is room.
            if unfinished.len() < self.max {
                unfinished.insert(session);
            } else if !unfinished.contains(&session) {
                refused.get_or_insert_with(SessionSet::default).insert(session);
            }
        };
        for frame in trunk::frame::frames(message, max_payload_len).flatten() {
            match frame {
                Frame::Open(o) => one(o.session),
                Frame::Counts(c) => c.iter().for_each(|e| one(e.session)),
                Frame::Close(c) => one(c.session),
                _ => {}
            }
        }
        match refused {
            None => Admission::All,
            Some(refused) => Admission::Refused(refused),
        }
    }

    /// Acknowledgements about to go to the gateway: sessions whose close they acknowledge no
    /// longer count (the gateway frees them when it reads this).
    pub fn acknowledged(&self, entries: &[AckEntry]) {
        if !entries.iter().any(|e| e.closed) {
            return;
        }
        let mut unfinished = self.lock();
        for e in entries.iter().filter(|e| e.closed) {
            unfinished.remove(&e.session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trunk::frame::{Close, CloseReason, MessageWriter, Open};

    fn message(frames: &[Frame<'_>]) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut w = MessageWriter::new(&mut buf, trunk::frame::DEFAULT_MAX_PAYLOAD_LEN);
        for f in frames {
            assert!(w.frame(f).is_ok());
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    }

    fn open(session: u64) -> Frame<'static> {
        Frame::Open(Open { session, device: Some(b"d") })
    }

    const MAX: usize = trunk::frame::DEFAULT_MAX_PAYLOAD_LEN;

    #[test]
    fn sessions_beyond_the_quota_are_refused_until_closes_are_acknowledged() {
        let quotas = Quotas::new(3, 4);
        let boot = quotas.take_boot(1, 7, Instant::now()).unwrap();
        assert!(matches!(boot.admit(&message(&[open(1), open(2)]), MAX), Admission::All));
        // Already counted: admitted again (replays), whatever the room.
        assert!(matches!(boot.admit(&message(&[open(1), open(2), open(3)]), MAX), Admission::All));
        match boot.admit(&message(&[open(4), open(2), open(5)]), MAX) {
            Admission::Refused(r) => assert_eq!(r, SessionSet::from_iter([4, 5])),
            other => panic!("{other:?}"),
        }
        // A close counts until it is acknowledged, so opening and closing fast gains nothing.
        let close = Frame::Close(Close { session: 3, total: 9, reason: CloseReason::NORMAL });
        assert!(matches!(boot.admit(&message(&[close]), MAX), Admission::All));
        assert!(matches!(boot.admit(&message(&[open(4)]), MAX), Admission::Refused(_)));
        boot.acknowledged(&[AckEntry { session: 3, total: 9, closed: false }]);
        assert_eq!(boot.counted(), 3, "a count's acknowledgement frees nothing");
        boot.acknowledged(&[AckEntry { session: 3, total: 9, closed: true }]);
        assert_eq!(boot.counted(), 2);
        assert!(matches!(boot.admit(&message(&[open(4)]), MAX), Admission::All));
        // Every link of the boot shares the count.
        let again = quotas.take_boot(1, 7, Instant::now()).unwrap();
        assert!(matches!(again.admit(&message(&[open(6)]), MAX), Admission::Refused(_)));
        // Garbage is left to the protocol.
        assert!(matches!(boot.admit(&[0xff, 0xff, 0xff], MAX), Admission::All));
    }

    #[test]
    fn a_new_boot_supersedes_the_last_and_boots_are_limited_per_hour() {
        let quotas = Quotas::new(10, 2);
        let t0 = Instant::now();
        let a = quotas.take_boot(1, 100, t0).unwrap();
        assert!(matches!(a.admit(&message(&[open(1)]), MAX), Admission::All));
        assert_eq!(quotas.check_boot(1, 100, t0), Ok(()), "the current boot is no new boot");
        let t1 = t0 + Duration::from_secs(600);
        assert_eq!(quotas.check_boot(1, 200, t1), Ok(()));
        let b = quotas.take_boot(1, 200, t1).unwrap();
        assert!(matches!(a.admit(&message(&[open(1)]), MAX), Admission::Superseded));
        assert_eq!(b.counted(), 0, "a new boot counts its own sessions");
        // Two boots this hour: a third is refused, the current one is still welcome, another
        // gateway is not affected.
        assert_eq!(quotas.check_boot(1, 300, t1), Err(TooManyBoots));
        assert!(quotas.take_boot(1, 300, t1).is_err());
        assert!(quotas.take_boot(1, 200, t1).is_ok());
        assert!(quotas.take_boot(2, 300, t1).is_ok());
        // Switching back to an older epoch is a boot change too.
        assert!(quotas.take_boot(1, 100, t1).is_err());
        // An hour after the first (the second is still within the hour), one more.
        let later = t0 + BOOT_WINDOW;
        assert!(quotas.take_boot(1, 300, later).is_ok());
        assert!(quotas.take_boot(1, 400, later).is_err());
    }

    #[test]
    fn idle_gateways_are_forgotten_after_the_window() {
        let quotas = Quotas::new(10, 1);
        let t0 = Instant::now();
        let held = quotas.take_boot(1, 100, t0).unwrap();
        drop(quotas.take_boot(2, 100, t0).unwrap());
        quotas.forget_idle(t0 + BOOT_WINDOW);
        assert!(quotas.take_boot(2, 200, t0 + BOOT_WINDOW).is_ok(), "forgotten: starts afresh");
        assert!(quotas.take_boot(1, 100, t0 + BOOT_WINDOW).is_ok(), "kept while its link is up");
        assert_eq!(quotas.lock().len(), 2);
        drop(held);
    }
}
