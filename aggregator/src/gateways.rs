//! The gateways with links to this process, in one structure for both of its readers: the
//! per-gateway quotas, and the dashboard (a gateway's name, links and open sessions). Each
//! report's session is looked up once, in one set per gateway boot, for both (issue #13; the
//! dashboard kept a set of its own before).
//!
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
//!
//! What the dashboard shows of a gateway's boot comes from the same set: the sessions that
//! reported (an open or a count) and have not closed, as seen here (replays after a lost link
//! change nothing; sessions that opened before this process started appear at their next count),
//! at most `--dashboard-sessions-per-gateway` of them (beyond, a session is counted as
//! untracked, and the count of open sessions is a lower bound). A gateway is kept after its last
//! link went down (it is usually reconnecting) until [`FORGET_GATEWAY_AFTER`].

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use trunk::frame::{AckEntry, Frame};

/// The window of `--max-gateway-boots-per-hour`.
pub const BOOT_WINDOW: Duration = Duration::from_secs(3600);

/// What a gateway over its session quota is told to wait before reconnecting (in a GoAway sent
/// with the refusal): it replays everything when it comes back, so not at once.
pub const QUOTA_RETRY_MS: u64 = 30_000;

/// A gateway whose links are all down is forgotten by the dashboard after this long.
pub const FORGET_GATEWAY_AFTER: Duration = Duration::from_secs(600);

/// Session ids a gateway's message was refused for.
pub type SessionSet = HashSet<u64, foldhash::fast::RandomState>;

/// Every gateway with links to this process (or a boot taken within the last hour, or still on
/// the dashboard).
pub struct Gateways {
    max_sessions: usize,
    max_boots: usize,
    /// `--dashboard-sessions-per-gateway`.
    max_shown: usize,
    /// The gateways with at least one link here (a metric).
    up: Gauge,
    gateways: Mutex<BTreeMap<u32, Gateway>>,
}

struct Gateway {
    boot: Arc<BootSessions>,
    /// When this process took each of the gateway's boots within the last [`BOOT_WINDOW`],
    /// oldest first (at most the boot limit).
    boots: VecDeque<Instant>,
    /// Its name, from its first link up on (a boot is taken before, at the handshake).
    name: String,
    /// Shown on the dashboard: from its first link up until [`FORGET_GATEWAY_AFTER`] after its
    /// last went down.
    listed: bool,
    links: Vec<LinkLive>,
    /// When its last link went down; `None` while it has one.
    down_since: Option<Instant>,
}

impl Gateway {
    fn listed(&self, now: Instant) -> bool {
        self.listed && self.down_since.is_none_or(|t| now.saturating_duration_since(t) < FORGET_GATEWAY_AFTER)
    }
}

/// One authenticated trunk link.
#[derive(Debug, Clone)]
pub struct LinkLive {
    pub route: u32,
    /// The gateway's index for this link.
    pub index: u8,
    pub peer: String,
    pub since: Instant,
}

/// What the dashboard shows of a gateway.
#[derive(Debug, Clone)]
pub struct GatewayView {
    pub number: u32,
    pub name: String,
    pub links: Vec<LinkLive>,
    /// Open sessions (a lower bound when some could not be tracked).
    pub sessions: u64,
    pub untracked: u64,
    pub opened: u64,
    pub closed: u64,
    pub count_reports: u64,
    pub down_since: Option<Instant>,
}

/// The sessions of one gateway boot that count against its quota, and what the dashboard counts
/// of them; every link of the boot holds it.
pub struct BootSessions {
    epoch: u64,
    max: usize,
    max_shown: usize,
    /// A newer boot of the gateway was taken: links of this one must close.
    superseded: AtomicBool,
    sessions: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    /// The sessions that reported here and whose close this process has not yet acknowledged (a
    /// fast hash with a random seed: SipHash cost 6 % of the aggregator's CPU at 244,000
    /// reports/s; ids come from authenticated gateways).
    unfinished: HashMap<u64, Session, foldhash::fast::RandomState>,
    /// Sessions in `unfinished` that are [`Session::Open`].
    open: u64,
    /// Distinct sessions seen opening (tracked), and closing, in this boot.
    opened: u64,
    closed: u64,
    /// Sessions not tracked by the dashboard: `--dashboard-sessions-per-gateway` were open.
    untracked: u64,
    /// Count entries received (replays included).
    count_reports: u64,
}

/// A session of [`Sessions::unfinished`], as the dashboard sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    /// Open, and counted among the gateway's open sessions.
    Open,
    /// Open, beyond what the dashboard tracks.
    Untracked,
    /// Closed; counts against the quota until its close is acknowledged.
    Closed,
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

impl Gateways {
    /// `up`: the gauge of gateways with links here, kept current.
    pub fn new(max_sessions: usize, max_boots: usize, max_shown: usize, up: Gauge) -> Self {
        Gateways {
            max_sessions: max_sessions.max(1),
            max_boots: max_boots.max(1),
            max_shown,
            up,
            gateways: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Gateway>> {
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
    /// superseded, and the dashboard counts the new boot's sessions from zero).
    pub fn take_boot(
        &self,
        gateway: u32,
        epoch: u64,
        now: Instant,
    ) -> Result<Arc<BootSessions>, TooManyBoots> {
        let mut gateways = self.lock();
        let fresh = || Arc::new(BootSessions::new(epoch, self.max_sessions, self.max_shown));
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
                gateways.insert(
                    gateway,
                    Gateway {
                        boot: boot.clone(),
                        boots: VecDeque::from([now]),
                        name: String::new(),
                        listed: false,
                        links: Vec::new(),
                        down_since: None,
                    },
                );
                Ok(boot)
            }
        }
    }

    /// Forgets the gateways without links here whose boots are all older than the window and
    /// that the dashboard no longer shows (the next link of such a gateway starts afresh, its
    /// boot counted again).
    pub fn forget_idle(&self, now: Instant) {
        self.lock().retain(|_, g| {
            prune(&mut g.boots, now);
            Arc::strong_count(&g.boot) > 1 || !g.boots.is_empty() || g.listed(now)
        });
    }

    fn count_up(&self, gateways: &BTreeMap<u32, Gateway>) {
        let up = gateways.values().filter(|g| !g.links.is_empty()).count();
        self.up.set(up as i64);
    }

    /// Link `link` of gateway `number`, named `name`, came up in boot `boot` (taken by
    /// [`Gateways::take_boot`]).
    pub fn link_up(&self, number: u32, name: &str, boot: &Arc<BootSessions>, link: LinkLive) {
        let mut gateways = self.lock();
        // (Always there: a link holding its boot keeps the gateway from being forgotten.)
        let g = gateways.entry(number).or_insert_with(|| Gateway {
            boot: boot.clone(),
            boots: VecDeque::new(),
            name: String::new(),
            listed: false,
            links: Vec::new(),
            down_since: None,
        });
        g.name = name.to_owned();
        g.listed = true;
        g.links.push(link);
        g.down_since = None;
        self.count_up(&gateways);
    }

    /// The link on `route` of gateway `number` went down.
    pub fn link_down(&self, number: u32, route: u32) {
        let mut gateways = self.lock();
        if let Some(g) = gateways.get_mut(&number) {
            g.links.retain(|l| l.route != route);
            if g.links.is_empty() {
                g.down_since = Some(Instant::now());
            }
        }
        self.count_up(&gateways);
    }

    /// Every gateway with links here, and the routes of its links.
    pub fn live_links(&self) -> Vec<(u32, Vec<u32>)> {
        let gateways = self.lock();
        gateways
            .iter()
            .filter(|(_, g)| !g.links.is_empty())
            .map(|(number, g)| (*number, g.links.iter().map(|l| l.route).collect()))
            .collect()
    }

    /// The gateways the dashboard shows, forgetting those down for too long.
    pub fn views(&self) -> Vec<GatewayView> {
        let now = Instant::now();
        let mut gateways = self.lock();
        let mut views = Vec::new();
        for (&number, g) in gateways.iter_mut() {
            if !g.listed(now) {
                g.listed = false;
                continue;
            }
            let s = g.boot.lock();
            views.push(GatewayView {
                number,
                name: g.name.clone(),
                links: g.links.clone(),
                sessions: s.open,
                untracked: s.untracked,
                opened: s.opened,
                closed: s.closed,
                count_reports: s.count_reports,
                down_since: g.down_since,
            });
        }
        views
    }
}

/// Drops the boots taken more than [`BOOT_WINDOW`] before `now`.
fn prune(boots: &mut VecDeque<Instant>, now: Instant) {
    while boots.front().is_some_and(|t| now.saturating_duration_since(*t) >= BOOT_WINDOW) {
        boots.pop_front();
    }
}

impl Sessions {
    /// One report about `session` (`close`: its Close), in one lookup: a session already
    /// counted is admitted, a new one while the quota (`max`) has room; otherwise it goes into
    /// `refused`.
    fn report(
        &mut self,
        session: u64,
        close: bool,
        max: usize,
        max_shown: usize,
        refused: &mut Option<SessionSet>,
    ) {
        let len = self.unfinished.len();
        match self.unfinished.entry(session) {
            Entry::Occupied(mut e) => {
                if close && e.insert(Session::Closed) == Session::Open {
                    self.open -= 1;
                    self.closed += 1;
                }
            }
            Entry::Vacant(e) if len < max => {
                let state = if close {
                    // Closed before it was seen open: never counted open, nor closed.
                    Session::Closed
                } else if self.open < max_shown as u64 {
                    self.open += 1;
                    self.opened += 1;
                    Session::Open
                } else {
                    self.untracked += 1;
                    Session::Untracked
                };
                e.insert(state);
            }
            Entry::Vacant(_) => {
                refused.get_or_insert_with(SessionSet::default).insert(session);
            }
        }
    }
}

impl BootSessions {
    fn new(epoch: u64, max: usize, max_shown: usize) -> Self {
        BootSessions { epoch, max, max_shown, superseded: AtomicBool::new(false), sessions: Mutex::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions counted against the quota now.
    pub fn counted(&self) -> usize {
        self.lock().unfinished.len()
    }

    /// Counts the sessions `message` (from a link of this boot) reports about: those already
    /// counted, and new ones while the quota has room, are admitted (and counted for the
    /// dashboard). Frames that do not decode are left to the trunk protocol, which refuses them.
    pub fn admit(&self, message: &[u8], max_payload_len: usize) -> Admission {
        if self.superseded.load(Ordering::Relaxed) {
            return Admission::Superseded;
        }
        let mut sessions = self.lock();
        let s = &mut *sessions;
        let mut refused: Option<SessionSet> = None;
        for frame in trunk::frame::frames(message, max_payload_len).flatten() {
            match frame {
                Frame::Open(o) => s.report(o.session, false, self.max, self.max_shown, &mut refused),
                Frame::Counts(c) => {
                    for e in c.iter() {
                        s.count_reports += 1;
                        s.report(e.session, false, self.max, self.max_shown, &mut refused);
                    }
                }
                Frame::Close(c) => s.report(c.session, true, self.max, self.max_shown, &mut refused),
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
        let mut sessions = self.lock();
        for e in entries.iter().filter(|e| e.closed) {
            if sessions.unfinished.remove(&e.session) == Some(Session::Open) {
                sessions.open -= 1;
                sessions.closed += 1;
            }
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
        let quotas = Gateways::new(3, 4, 100, Gauge::default());
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
        let quotas = Gateways::new(10, 2, 100, Gauge::default());
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
        let quotas = Gateways::new(10, 1, 100, Gauge::default());
        let t0 = Instant::now();
        let held = quotas.take_boot(1, 100, t0).unwrap();
        drop(quotas.take_boot(2, 100, t0).unwrap());
        quotas.forget_idle(t0 + BOOT_WINDOW);
        assert!(quotas.take_boot(2, 200, t0 + BOOT_WINDOW).is_ok(), "forgotten: starts afresh");
        assert!(quotas.take_boot(1, 100, t0 + BOOT_WINDOW).is_ok(), "kept while its link is up");
        assert_eq!(quotas.lock().len(), 2);
        drop(held);
    }

    #[test]
    fn the_dashboard_counts_open_sessions_from_the_quotas_set() {
        let up = Gauge::default();
        let gateways = Gateways::new(10, 4, 2, up.clone());
        let boot = gateways.take_boot(1, 7, Instant::now()).unwrap();
        assert!(gateways.views().is_empty(), "listed from its first link up on");
        let link = |route| LinkLive { route, index: 0, peer: "p".into(), since: Instant::now() };
        gateways.link_up(1, "gw", &boot, link(5));
        assert_eq!(up.get(), 1);
        let close = |session| Frame::Close(Close { session, total: 9, reason: CloseReason::NORMAL });
        // Replays change nothing; the third open session is beyond what the dashboard tracks.
        assert!(matches!(boot.admit(&message(&[open(1), open(2), open(1)]), MAX), Admission::All));
        assert!(matches!(boot.admit(&message(&[open(2), open(3), close(4)]), MAX), Admission::All));
        let v = &gateways.views()[0];
        assert_eq!((v.name.as_str(), v.sessions, v.opened, v.untracked, v.closed), ("gw", 2, 2, 1, 0));
        // Closed when the close is reported, still counted by the quota until acknowledged.
        assert!(matches!(boot.admit(&message(&[close(1), close(1)]), MAX), Admission::All));
        let v = &gateways.views()[0];
        assert_eq!((v.sessions, v.closed), (1, 1));
        assert_eq!(boot.counted(), 4);
        boot.acknowledged(&[AckEntry { session: 1, total: 9, closed: true }]);
        assert_eq!((boot.counted(), gateways.views()[0].closed), (3, 1));
        gateways.link_down(1, 5);
        assert_eq!(up.get(), 0);
        assert_eq!(gateways.live_links(), []);
        assert!(gateways.views()[0].down_since.is_some(), "shown while it is reconnecting");
    }
}
