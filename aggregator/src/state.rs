//! What every connection task of one aggregator process shares: the ledger, the routes that
//! acknowledgements travel back on, admission limits, the store and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify, Semaphore};
use trunk::ledger::{Ledger, LedgerSlot, SessionKey, Update};

use crate::batch::Batcher;
use crate::config::Settings;
use crate::dashboard::{Dashboard, LastFlush};
use crate::gateways::Gateways;
use crate::metrics::Metrics;
use crate::routes::Routes;
use crate::store::{BootState, GatewayRecord, Store};

/// The ledger (each report in it stamped with [`Shared::now_ms`], so that a flight knows how long
/// its oldest report waited).
pub struct Books {
    pub ledger: Ledger<Vec<LedgerSlot>>,
}

pub struct Shared {
    pub settings: Settings,
    /// The database for trunk handshakes, the dashboard and the API (--db-connections).
    pub store: Store,
    /// The same database for the write path, on connections of its own (PostgreSQL: one per
    /// flush in flight and one for the compactor), so that a busy write path never keeps a
    /// trunk handshake waiting for a connection. For SQLite, the same pool as `store`.
    pub writer: Store,
    pub metrics: Metrics,
    pub registry: prometheus_client::registry::Registry,
    /// This process's boot epoch: the `boot_epoch` of its direct phones' session keys.
    pub epoch: u64,
    pub started: Instant,
    books: Mutex<Books>,
    /// Where acknowledgements travel back to.
    pub routes: Arc<Routes>,
    /// The next direct phone's session id (in this process's boot epoch). Its own counter, not
    /// the route number: 64 bits never wrap, so a session key is never given out twice.
    next_direct_session: AtomicU64,
    /// Signalled after every commit: room in the ledger may have been freed.
    pub room: Notify,
    pub phones: Arc<Semaphore>,
    pub trunks: Arc<Semaphore>,
    /// Trunk handshakes in progress (see `--max-pending-trunks`).
    pub pending_trunks: Arc<Semaphore>,
    /// The gateways with links here: their quotas, and what the dashboard shows of them
    /// (gateways.rs).
    pub gateways: Arc<Gateways>,
    /// Trunk handshakes' gateway lookups, in batches (batch.rs): one query at a time however
    /// many Hellos arrive, each carrying up to `--max-pending-trunks` names. (The write path has
    /// connections of its own: a flood of Hellos never delays a flush.)
    pub gateway_lookups: Batcher<String, Option<GatewayRecord>>,
    /// Authenticated trunks' boots, recorded in batches the same way (one commit each).
    pub boot_records: Batcher<(u32, u64), BootState>,
    /// The latest flush, for the dashboard and the compactor.
    pub last_flush: Arc<LastFlush>,
    /// The dashboard's latest snapshot, its history and its stream permits.
    pub dashboard: Arc<Dashboard>,
    /// Who may read the dashboard's data and `/api/devices`.
    pub access: crate::web::Access,
    /// Checks direct phones' device tokens; `None` with `--phone-auth off`.
    pub phone_key: Option<device_token::PublicKey>,
    /// `--enrolment-code`: phone pages may get devices of their own (`/api/enrol`).
    pub enrolment: Option<crate::devices::Enrolment>,
    /// Becomes true when the process begins to shut down.
    pub shutdown: watch::Receiver<bool>,
    /// What shutdown waits for: every phone session and authenticated trunk link holds a guard.
    pub drain: crate::shutdown::Drain,
    /// The CA certificate (PEM) offered to phones at `/ca.crt`, if any (see `--ca-cert`).
    pub ca_pem: Option<hyper::body::Bytes>,
}

/// The flushes count as idle for the compactor (it then merges without resting) once the
/// ledger is empty and no flush has committed rows for this long.
pub const FLUSHES_IDLE_AFTER: Duration = Duration::from_secs(1);

impl Shared {
    pub fn new(settings: Settings, store: Store, writer: Store, shutdown: watch::Receiver<bool>) -> Self {
        let (metrics, registry) = Metrics::new();
        let slots = ledger_table(settings.ledger_slots());
        let epoch = rand::random::<u64>();
        Shared {
            books: Mutex::new(Books { ledger: Ledger::new(slots, rand::random()) }),
            routes: Arc::default(),
            next_direct_session: AtomicU64::new(1),
            room: Notify::new(),
            phones: Arc::new(Semaphore::new(settings.max_phones)),
            trunks: Arc::new(Semaphore::new(settings.max_trunks)),
            pending_trunks: Arc::new(Semaphore::new(settings.max_pending_trunks)),
            gateways: Arc::new(Gateways::new(
                settings.max_sessions_per_gateway,
                settings.max_gateway_boots_per_hour,
                settings.dashboard_sessions_per_gateway,
                metrics.gateways.clone(),
            )),
            gateway_lookups: {
                let store = store.clone();
                Batcher::spawn("gateway lookups", settings.max_pending_trunks, move |names: Vec<String>| {
                    let store = store.clone();
                    async move {
                        let names: Vec<&str> = names.iter().map(String::as_str).collect();
                        store.gateways_get(&names).await
                    }
                })
            },
            boot_records: {
                let store = store.clone();
                Batcher::spawn("boot records", settings.max_pending_trunks, move |boots: Vec<(u32, u64)>| {
                    let store = store.clone();
                    async move { store.boots_seen(&boots).await }
                })
            },
            last_flush: Arc::default(),
            dashboard: Arc::new(Dashboard::new(&settings)),
            access: crate::web::Access::of(&settings),
            phone_key: None,
            enrolment: None,
            settings,
            store,
            writer,
            metrics,
            registry,
            epoch,
            started: Instant::now(),
            shutdown,
            drain: crate::shutdown::Drain::default(),
            ca_pem: None,
        }
    }

    /// Flush transactions that may run at once: `--flushes-in-flight`, at least 1, leaving one
    /// database connection for handshakes; 1 on SQLite (one writer at a time).
    pub fn flushes_in_flight(&self) -> usize {
        match self.store {
            crate::store::Store::Sqlite(_) => 1,
            crate::store::Store::Postgres(_) => {
                // The writer's pool has a connection for each (see lib.rs, open_writer).
                self.settings.flushes_in_flight.max(1)
            }
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
                if let Ok(()) =
                    books.ledger.record(key, route, update, trunk::time::Instant::from_millis(self.now_ms()))
                {
                    // Kept current here, not only at commits: a stalled database is when the
                    // gauge matters, and then nothing commits.
                    self.metrics.ledger_entries.set(books.ledger.len() as i64);
                    return;
                }
            }
            room.await;
        }
    }

    /// What the flushes are doing, for the compactor: behind while more than two flushes'
    /// worth of sessions wait, idle while the ledger is empty and nothing was committed for
    /// [`FLUSHES_IDLE_AFTER`] (an empty ledger alone happens between the flushes of a light
    /// load, every 200 ms).
    pub fn flushes(&self) -> crate::compactor::Flushes {
        use crate::compactor::Flushes;
        let quiet_ms = self.now_ms().saturating_sub(self.last_flush.at_ms.load(Ordering::Relaxed));
        let books = self.books();
        if books.ledger.ready() > 2 * self.settings.max_flush_rows {
            Flushes::Behind
        } else if books.ledger.is_empty() && quiet_ms >= FLUSHES_IDLE_AFTER.as_millis() as u64 {
            Flushes::Idle
        } else {
            Flushes::Busy
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

    /// A new direct phone's session id, never given out before by this process.
    pub fn new_direct_session(&self) -> u64 {
        self.next_direct_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// The ledger's table (`--ledger-capacity` slots, 120 MiB by default), asked of the kernel on
/// 2 MiB pages where it offers them (transparent huge pages in `madvise` mode, Debian's default).
/// Every report is a lookup at a random place in the table: on 4 KiB pages nearly each one also
/// missed the TLB, and `Ledger::find` took a third of the aggregator's CPU at 244,000 reports/s
/// (perf, docs/benchmarks.md).
fn ledger_table(len: usize) -> Vec<LedgerSlot> {
    let mut slots: Vec<LedgerSlot> = Vec::with_capacity(len);
    // Advised before the slots are written: the pages fault in huge from the start.
    advise_huge_pages(slots.as_mut_ptr().cast(), len * std::mem::size_of::<LedgerSlot>());
    slots.resize(len, LedgerSlot::EMPTY);
    slots
}

#[cfg(target_os = "linux")]
fn advise_huge_pages(start: *mut u8, len: usize) {
    const HUGE_PAGE: usize = 2 << 20;
    let begin = (start as usize).next_multiple_of(HUGE_PAGE);
    let end = (start as usize).saturating_add(len) / HUGE_PAGE * HUGE_PAGE;
    if end <= begin {
        return;
    }
    // SAFETY: [begin, end) lies inside the allocation of `len` bytes at `start` that the caller
    // just made and owns; MADV_HUGEPAGE only changes how the kernel backs those pages, never
    // their contents or whether they may be accessed.
    let rc = unsafe { libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "huge pages for the ledger not granted");
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_start: *mut u8, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compactor::Flushes;
    use clap::Parser as _;

    async fn started(max_flush_rows: usize) -> (Shared, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let rows = max_flush_rows.to_string();
        let settings = crate::config::Cli::parse_from(["aggregator", "--max-flush-rows", &rows]).serve;
        let store = Store::open(None, dir.path(), 1).await.unwrap();
        let (_tx, shutdown) = watch::channel(false);
        (Shared::new(settings, store.clone(), store, shutdown), dir)
    }

    async fn report(shared: &Shared, session: u64) {
        let key = SessionKey { gateway: 1, boot_epoch: 1, session };
        shared.record(key, 0, Update { total: Some(1), ..Update::default() }).await;
    }

    /// What the compactor is told: behind past two flushes' worth of waiting sessions, busy while
    /// anything waits or a commit was recent, idle only after a quiet second with nothing waiting.
    #[tokio::test]
    async fn flushes_are_behind_busy_or_idle_as_the_ledger_and_the_last_commit_say() {
        let (shared, _dir) = started(2).await;
        assert_eq!(shared.flushes(), Flushes::Busy, "just started: not yet quiet for a second");
        for session in 1..=4 {
            report(&shared, session).await;
        }
        assert_eq!(shared.flushes(), Flushes::Busy, "two flushes' worth waiting is not behind");
        report(&shared, 5).await;
        assert_eq!(shared.flushes(), Flushes::Behind, "more than two flushes' worth waiting");

        let (shared, _dir) = started(2).await;
        tokio::time::sleep(FLUSHES_IDLE_AFTER).await;
        assert_eq!(shared.flushes(), Flushes::Idle, "nothing waiting, nothing committed for a second");
        report(&shared, 1).await;
        assert_eq!(shared.flushes(), Flushes::Busy, "a report waits");
        let (shared, _dir) = started(2).await;
        tokio::time::sleep(FLUSHES_IDLE_AFTER).await;
        shared.last_flush.record(shared.now_ms(), 1, None, Duration::ZERO);
        assert_eq!(shared.flushes(), Flushes::Busy, "a commit just now: the next flush may follow");
    }
}
