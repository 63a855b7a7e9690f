//! Routes: where the acknowledgements of a commit travel back to. Every phone task and every
//! trunk link task holds one route (a `u32` the ledger stores with each session's latest report,
//! 4 bytes per ledger slot); after a commit the flusher hands each route its acknowledgements.
//!
//! Route numbers are reused after 2^32 connections in one process, so handing one out skips the
//! numbers still in use (a live route is never overwritten), and a phone's mailbox takes only the
//! acknowledgements of its own session (a late acknowledgement for an earlier holder of the
//! number is dropped). Session keys do not come from here: see `Shared::new_direct_session`
//! (state.rs), above this module.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, Notify};
use trunk::frame::AckEntry;

/// Where a phone task learns its durable total: the latest value and a wake-up. A few dozen bytes
/// per phone, and no queue that could grow.
pub struct PhoneMailbox {
    /// The session this phone's acknowledgements are about.
    session: u64,
    pub durable: AtomicU64,
    pub notify: Notify,
}

impl PhoneMailbox {
    pub fn new(session: u64) -> Self {
        Self { session, durable: AtomicU64::new(0), notify: Notify::new() }
    }
}

/// What a trunk link's task is handed.
#[derive(Debug)]
pub enum ToLink {
    /// A commit's acknowledgements for sessions this link brought.
    Acks(Vec<AckEntry>),
    /// The gateway is no longer provisioned: refuse and close the link.
    Revoke,
}

/// Where the acknowledgements of one route go.
pub enum Route {
    Phone(Arc<PhoneMailbox>),
    Trunk(mpsc::UnboundedSender<ToLink>),
}

/// The live routes of one process.
pub struct Routes {
    inner: Mutex<Inner>,
}

struct Inner {
    live: HashMap<u32, Route>,
    next: u32,
}

impl Default for Routes {
    fn default() -> Self {
        Self::starting_at(1)
    }
}

impl Routes {
    /// Routes handed out from `first` on (tests start near the end of the range).
    pub fn starting_at(first: u32) -> Self {
        Self { inner: Mutex::new(Inner { live: HashMap::new(), next: first }) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new route for `target`: the next number that is neither 0 nor in use.
    pub fn add(&self, target: Route) -> u32 {
        let mut inner = self.lock();
        // At most as many tries as routes are live (bounded by the admission limits).
        loop {
            let route = inner.next;
            inner.next = inner.next.wrapping_add(1);
            if route != 0 && !inner.live.contains_key(&route) {
                inner.live.insert(route, target);
                return route;
            }
        }
    }

    pub fn remove(&self, route: u32) {
        self.lock().live.remove(&route);
    }

    /// Tells the trunk link on `route` to close (its gateway was removed); whether there was one.
    pub fn revoke(&self, route: u32) -> bool {
        match self.lock().live.get(&route) {
            Some(Route::Trunk(tx)) => tx.send(ToLink::Revoke).is_ok(),
            _ => false,
        }
    }

    /// Hands a commit's acknowledgements to the tasks of their routes; routes that are gone
    /// (a closed phone, a lost link) are skipped: the gateway replays on another link.
    pub fn deliver(&self, acks: HashMap<u32, Vec<AckEntry>>) {
        let inner = self.lock();
        for (route, entries) in acks {
            match inner.live.get(&route) {
                Some(Route::Phone(mailbox)) => {
                    let own = entries.iter().filter(|e| e.session == mailbox.session).map(|e| e.total).max();
                    if let Some(total) = own {
                        mailbox.durable.fetch_max(total, Ordering::Relaxed);
                        mailbox.notify.notify_one();
                    }
                }
                Some(Route::Trunk(tx)) => {
                    let _ = tx.send(ToLink::Acks(entries));
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phone(session: u64) -> (Arc<PhoneMailbox>, Route) {
        let mailbox = Arc::new(PhoneMailbox::new(session));
        (mailbox.clone(), Route::Phone(mailbox))
    }

    #[test]
    fn numbers_wrap_past_zero_and_skip_live_routes() {
        let routes = Routes::starting_at(u32::MAX - 1);
        let (_, a) = phone(1);
        let (_, b) = phone(2);
        assert_eq!(routes.add(a), u32::MAX - 1);
        assert_eq!(routes.add(b), u32::MAX);
        // Past the end: 0 is never a route, and 1 is next.
        let (_, c) = phone(3);
        assert_eq!(routes.add(c), 1);
        // Around again (4 billion connections later, compressed): u32::MAX is still live, so
        // the next holder of the number cannot overwrite it.
        routes.lock().next = u32::MAX - 1;
        routes.remove(u32::MAX - 1);
        let (_, d) = phone(4);
        assert_eq!(routes.add(d), u32::MAX - 1, "a freed number is reused");
        let (_, e) = phone(5);
        assert_eq!(routes.add(e), 2, "u32::MAX, 0 and 1 skipped: live, never, live");
    }

    #[test]
    fn a_phone_takes_only_its_own_sessions_acknowledgements() {
        let routes = Routes::default();
        let (mailbox, target) = phone(7);
        let route = routes.add(target);
        let ack = |session, total| AckEntry { session, total, closed: false };
        // A late acknowledgement for an earlier holder of the route number, then its own.
        routes.deliver(HashMap::from([(route, vec![ack(3, 500)])]));
        assert_eq!(mailbox.durable.load(Ordering::Relaxed), 0);
        routes.deliver(HashMap::from([(route, vec![ack(3, 900), ack(7, 12)])]));
        assert_eq!(mailbox.durable.load(Ordering::Relaxed), 12);
    }
}
