//! What every connection task of one aggregator process shares: the ledger, the routes that
//! acknowledgements travel back on, admission limits, the store and the metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{mpsc, watch, Notify, Semaphore};
use trunk::frame::AckEntry;
use trunk::ledger::{Ledger, LedgerSlot, SessionKey, Update};

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::store::Store;

/// The ledger and the age of its oldest report that is not yet in a flush.
pub struct Books {
    pub ledger: Ledger<Vec<LedgerSlot>>,
    pub dirty_since: Option<Instant>,
}

/// Where a phone task learns its durable total: the latest value and a wake-up. A few dozen bytes
/// per phone, and no queue that could grow.
#[derive(Default)]
pub struct PhoneMailbox {
    pub durable: AtomicU64,
    pub notify: Notify,
}

/// Where the acknowledgements of one route go.
pub enum Route {
    Phone(Arc<PhoneMailbox>),
    Trunk(mpsc::UnboundedSender<Vec<AckEntry>>),
}

pub struct Shared {
    pub settings: Settings,
    pub store: Store,
    pub metrics: Metrics,
    pub registry: prometheus_client::registry::Registry,
    /// This process's boot epoch: the `boot_epoch` of its direct phones' session keys.
    pub epoch: u64,
    pub started: Instant,
    books: Mutex<Books>,
    routes: Mutex<HashMap<u32, Route>>,
    next_route: AtomicU32,
    /// Signalled after every commit: room in the ledger may have been freed.
    pub room: Notify,
    pub phones: Arc<Semaphore>,
    pub trunks: Arc<Semaphore>,
    gateways: Mutex<HashMap<u32, usize>>,
    /// Becomes true when the process begins to shut down.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn new(settings: Settings, store: Store, shutdown: watch::Receiver<bool>) -> Self {
        let (metrics, registry) = Metrics::new();
        let slots = vec![LedgerSlot::EMPTY; settings.ledger_capacity.max(1024)];
        let epoch = rand::random::<u64>();
        Shared {
            books: Mutex::new(Books { ledger: Ledger::new(slots, rand::random()), dirty_since: None }),
            routes: Mutex::new(HashMap::new()),
            next_route: AtomicU32::new(1),
            room: Notify::new(),
            phones: Arc::new(Semaphore::new(settings.max_phones)),
            trunks: Arc::new(Semaphore::new(settings.max_trunks)),
            gateways: Mutex::new(HashMap::new()),
            settings,
            store,
            metrics,
            registry,
            epoch,
            started: Instant::now(),
            shutdown,
        }
    }

    /// Milliseconds since the process started: the clock of the trunk state machines.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn books(&self) -> MutexGuard<'_, Books> {
        // A panic while holding the lock would be a bug; the ledger itself stays consistent.
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one report, waiting (without holding the lock) while the ledger is full.
    pub async fn record(&self, key: SessionKey, route: u32, update: Update<'_>) {
        loop {
            let room = self.room.notified();
            {
                let mut books = self.books();
                // Full: wait below for a commit to free room.
                if let Ok(()) = books.ledger.record(key, route, update) {
                    books.dirty_since.get_or_insert_with(Instant::now);
                    return;
                }
            }
            room.await;
        }
    }

    /// Waits until `ready` says the ledger has room.
    pub async fn wait_for_room(&self, ready: impl Fn(&Ledger<Vec<LedgerSlot>>) -> bool) {
        loop {
            let room = self.room.notified();
            if ready(&self.books().ledger) {
                return;
            }
            room.await;
        }
    }

    pub fn next_route(&self) -> u32 {
        self.next_route.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register(&self, route: u32, target: Route) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).insert(route, target);
    }

    pub fn unregister(&self, route: u32) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&route);
    }

    /// Hands a commit's acknowledgements to the tasks of their routes; routes that are gone
    /// (a closed phone, a lost link) are skipped: the gateway replays on another link.
    pub fn deliver(&self, acks: HashMap<u32, Vec<AckEntry>>) {
        let routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for (route, entries) in acks {
            match routes.get(&route) {
                Some(Route::Phone(mailbox)) => {
                    if let Some(total) = entries.iter().map(|e| e.total).max() {
                        mailbox.durable.fetch_max(total, Ordering::Relaxed);
                        mailbox.notify.notify_one();
                    }
                }
                Some(Route::Trunk(tx)) => {
                    let _ = tx.send(entries);
                }
                None => {}
            }
        }
    }

    /// A trunk link of gateway `number` came up (`+1`) or went down (`-1`).
    pub fn gateway_link(&self, number: u32, delta: isize) {
        let mut gateways = self.gateways.lock().unwrap_or_else(|e| e.into_inner());
        let links = gateways.entry(number).or_insert(0);
        *links = links.saturating_add_signed(delta);
        if *links == 0 {
            gateways.remove(&number);
        }
        self.metrics.gateways.set(gateways.len() as i64);
    }
}
