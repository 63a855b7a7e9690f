//! The gateway's shared state: the trunk state machine and who to wake.
//!
//! Phone tasks and link tasks all run on one executor (embassy's, on a board or on the host), so
//! the state sits in a `RefCell` behind embassy's no-op mutex: a borrow never crosses an `.await`,
//! and every method here is a short critical section.

use core::cell::RefCell;
use core::future::{poll_fn, Future};
use core::task::{Poll, Waker};

use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::waitqueue::WakerRegistration;
use embassy_time::Instant;
use trunk::frame::{CloseReason, NONCE_LEN};
use trunk::gateway::{
    Gateway, GatewayConfig, Identity, LinkError, LinkPhase, OpenError, SessionId, SessionSlot, MAX_LINKS,
};
use trunk::time::{Duration as TrunkDuration, Instant as TrunkInstant, PollAt};

/// Per-session memory the hub keeps besides the [`SessionSlot`]: one waker.
pub type PhoneWaker = Option<Waker>;

/// What [`Hub::durable_above`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durable {
    /// The session's new durable total.
    Total(u64),
    /// The gateway is shutting down.
    Stopping,
}

/// Counters for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Phones whose upgrade was accepted.
    pub phones_accepted: u64,
    /// Requests refused (bad request, full, shutting down).
    pub phones_refused: u64,
    /// Phone connections closed for breaking the protocol.
    pub phones_failed: u64,
    /// Payload bytes received from phones.
    pub bytes: u64,
    /// Times a link came up (the handshake completed).
    pub links_up: u64,
}

struct Inner<'a> {
    gateway: Gateway<&'a mut [SessionSlot]>,
    phones: &'a mut [PhoneWaker],
    links: [WakerRegistration; MAX_LINKS],
    stats: Stats,
    stopping: bool,
    /// The aggregator's time (Unix seconds) when a link last came up, and our time then.
    wall_clock: Option<(u64, Instant)>,
}

/// The trunk state machine and the wakers of the tasks that drive it.
pub struct Hub<'a> {
    inner: Mutex<NoopRawMutex, RefCell<Inner<'a>>>,
}

impl core::fmt::Debug for Hub<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hub").field("stats", &self.stats()).finish_non_exhaustive()
    }
}

/// Why [`Hub::new`] failed.
pub use trunk::gateway::ConfigError;

impl<'a> Hub<'a> {
    /// A hub over caller-provided storage: `slots` and `wakers` must have the same length, the
    /// session capacity. Their memory is the whole per-phone cost of the trunk side:
    /// `size_of::<SessionSlot>() + size_of::<PhoneWaker>()` bytes per session.
    pub fn new(
        config: GatewayConfig,
        identity: Identity<'_>,
        links: usize,
        slots: &'a mut [SessionSlot],
        wakers: &'a mut [PhoneWaker],
    ) -> Result<Self, ConfigError> {
        if wakers.len() != slots.len() {
            return Err(ConfigError::NoSessions);
        }
        let gateway = Gateway::new(config, identity, links, slots)?;
        Ok(Self {
            inner: Mutex::new(RefCell::new(Inner {
                gateway,
                phones: wakers,
                links: core::array::from_fn(|_| WakerRegistration::new()),
                stats: Stats::default(),
                stopping: false,
                wall_clock: None,
            })),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner<'a>) -> R) -> R {
        self.inner.lock(|cell| f(&mut cell.borrow_mut()))
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.with(|i| i.stats)
    }

    /// Session capacity, sessions live, and the phase of each link.
    pub fn status(&self) -> (usize, usize, [LinkPhase; MAX_LINKS]) {
        self.with(|i| {
            let g = &i.gateway;
            (g.capacity(), g.live_sessions(), core::array::from_fn(|l| g.link_phase(l)))
        })
    }

    /// The number of trunk links.
    pub fn link_count(&self) -> usize {
        self.with(|i| i.gateway.link_count())
    }

    /// The aggregator's time (Unix seconds, from its authenticated upgrade answer): a board
    /// without a clock keeps time from it (see [`Hub::unix_now`]).
    pub fn set_wall_clock(&self, unix_secs: u64) {
        self.with(|i| i.wall_clock = Some((unix_secs, Instant::now())));
    }

    /// Now in Unix seconds, as learnt from the aggregator (to the second, drifting with the
    /// board's clock until a link comes up again); `None` before any link has come up.
    pub fn unix_now(&self) -> Option<u64> {
        let (unix, at) = self.with(|i| i.wall_clock)?;
        Some(unix + Instant::now().saturating_duration_since(at).as_secs())
    }

    // ----- phones -----

    /// A phone asks for a session.
    pub fn open(&self, device: Option<&[u8]>) -> Result<SessionId, OpenError> {
        self.with(|i| {
            if i.stopping {
                return Err(OpenError::Full);
            }
            let id = i.gateway.open(device)?;
            i.stats.phones_accepted += 1;
            Ok(id)
        })
    }

    /// A request was refused before it had a session.
    pub fn refused(&self) {
        self.with(|i| i.stats.phones_refused += 1);
    }

    /// A phone sent `bytes` payload bytes.
    pub fn record(&self, id: SessionId, bytes: u64) {
        if bytes > 0 {
            self.with(|i| {
                i.stats.bytes += bytes;
                let _ = i.gateway.record(id, bytes);
            });
        }
    }

    /// A phone is gone; its count stays until the aggregator acknowledges the close.
    pub fn close(&self, id: SessionId, reason: CloseReason, failed: bool) {
        self.with(|i| {
            if failed {
                i.stats.phones_failed += 1;
            }
            let _ = i.gateway.close(id, reason);
            if let Some(w) = i.phones.get_mut(waker_index(id, i.gateway.capacity())) {
                *w = None;
            }
        });
    }

    /// Waits until the session's durable total is above `told` (and returns it), or the gateway
    /// begins to shut down.
    ///
    /// A plain future (not an `async fn`, which would keep its arguments twice): it is part of
    /// every idle phone's state.
    pub fn durable_above(
        &self,
        id: SessionId,
        told: u64,
    ) -> impl Future<Output = Durable> + Unpin + use<'_, 'a> {
        poll_fn(move |cx| {
            self.with(|i| {
                if i.stopping && told != u64::MAX {
                    return Poll::Ready(Durable::Stopping);
                }
                match i.gateway.durable(id) {
                    Some(d) if d > told && told != u64::MAX => Poll::Ready(Durable::Total(d)),
                    _ => {
                        let n = i.gateway.capacity();
                        if let Some(w) = i.phones.get_mut(waker_index(id, n)) {
                            match w {
                                Some(old) if old.will_wake(cx.waker()) => {}
                                _ => *w = Some(cx.waker().clone()),
                            }
                        }
                        Poll::Pending
                    }
                }
            })
        })
    }

    /// Refuse new phones from now on and ask every phone task to close (shutdown).
    pub fn stop(&self) {
        self.with(|i| {
            i.stopping = true;
            for w in i.phones.iter_mut() {
                if let Some(w) = w.take() {
                    w.wake();
                }
            }
        });
    }

    /// Whether [`Hub::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.with(|i| i.stopping)
    }

    // ----- links -----

    /// Link `link`'s transport is up.
    pub fn connected(&self, link: usize, now: TrunkInstant, nonce: [u8; NONCE_LEN]) {
        self.with(|i| i.gateway.connected(link, now, nonce));
    }

    /// Link `link`'s transport is gone; its sessions will be replayed.
    pub fn disconnected(&self, link: usize, now: TrunkInstant) {
        self.with(|i| i.gateway.disconnected(link, now));
    }

    /// How long link `link` waits before reconnecting.
    pub fn reconnect_delay(&self, link: usize, now: TrunkInstant, random: u32) -> TrunkDuration {
        self.with(|i| i.gateway.reconnect_delay(link, now, random))
    }

    /// One trunk frame (or message) from the aggregator; wakes phones whose durable total grew and
    /// the link's sender (there may be a pong or a Hello to send).
    pub fn handle_message(&self, link: usize, message: &[u8], now: TrunkInstant) -> Result<(), LinkError> {
        self.with(|i| {
            let was_up = i.gateway.link_phase(link) == LinkPhase::Up;
            let result = i.gateway.handle_message(link, message, now);
            if !was_up && i.gateway.link_phase(link) == LinkPhase::Up {
                i.stats.links_up += 1;
            }
            let n = i.gateway.capacity();
            while let Some((id, _)) = i.gateway.poll_durable() {
                if let Some(w) = i.phones.get_mut(waker_index(id, n)).and_then(Option::take) {
                    w.wake();
                }
            }
            if let Some(w) = i.links.get_mut(link) {
                w.wake();
            }
            result
        })
    }

    /// Wakes link `link`'s sender (it has something of its own to send, such as a pong).
    pub fn wake_link(&self, link: usize) {
        self.with(|i| {
            if let Some(w) = i.links.get_mut(link) {
                w.wake();
            }
        });
    }

    /// The next message to send on `link`, if any (see [`Gateway::poll_transmit`]).
    pub fn poll_transmit(
        &self,
        link: usize,
        now: TrunkInstant,
        out: &mut [u8],
    ) -> Result<Option<usize>, LinkError> {
        self.with(|i| i.gateway.poll_transmit(link, now, out))
    }

    /// Waits until something for `link` happened or the gateway's next deadline passed.
    pub async fn link_event(&self, link: usize) {
        let mut first = true;
        poll_fn(|cx| {
            if !first {
                return Poll::Ready(());
            }
            first = false;
            self.with(|i| {
                if let Some(w) = i.links.get_mut(link) {
                    w.register(cx.waker());
                }
            });
            Poll::Pending
        })
        .await
    }

    /// The earliest time at which a link may have something to send.
    pub fn poll_timeout(&self) -> PollAt {
        self.with(|i| i.gateway.poll_timeout())
    }
}

fn waker_index(id: SessionId, capacity: usize) -> usize {
    (id.0 % capacity.max(1) as u64) as usize
}
