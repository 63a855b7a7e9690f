//! The flush loop: the ledger's changed sessions are written in transactions, and only after a
//! transaction commits are its acknowledgements handed to their trunks and phones. A failed
//! transaction puts its sessions back, first in line; they are retried, with backoff, while
//! reports keep coalescing in the ledger (bounded: see `--ledger-capacity`).
//!
//! Up to `--flushes-in-flight` transactions run at once, each over sessions no other one holds
//! (the ledger hands out disjoint flights), so the rate is not bounded by one commit's latency:
//! while one transaction waits for its fsync, the next is already writing. A flush starts every
//! `--flush-interval-ms`, and at once whenever a transaction lands while more than
//! `--max-flush-rows` sessions wait. The work of a flush follows the sessions it writes, never
//! the ledger's size.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};
use trunk::backoff::Backoff;
use trunk::frame::AckEntry;
use trunk::ledger::SessionKey;
use trunk::time::Instant as TrunkInstant;

use crate::state::Shared;
use crate::store::FlushRow;

/// How often the persisted totals shown in metrics and the dashboard are read (16 rows of the
/// `totals` table, which the flushes keep up to date: no scan of the sessions).
const SUMMARY_INTERVAL: Duration = Duration::from_secs(2);

/// Outcome of one flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    Nothing,
    Committed(usize),
    Failed,
}

/// Runs until `stop` becomes true, waits for the transactions in flight, then flushes what is
/// left (a few attempts) and returns.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.settings.flush_interval());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let max_in_flight = shared.flushes_in_flight();
    let mut flights: JoinSet<Flushed> = JoinSet::new();
    let mut failures = 0u32;
    let mut paused_until: Option<tokio::time::Instant> = None;
    let summary = tokio::spawn(summary_loop(shared.clone(), stop.clone()));
    loop {
        let paused = paused_until.is_some_and(|t| tokio::time::Instant::now() < t);
        tokio::select! {
            _ = tick.tick() => {
                if !paused {
                    // One flush per tick, more only while a backlog waits (below).
                    start_flush(&shared, &mut flights, max_in_flight);
                }
            }
            Some(done) = flights.join_next() => {
                match done.unwrap_or(Flushed::Failed) {
                    Flushed::Failed => {
                        failures += 1;
                        // Back off before writing again: the database is failing.
                        let pause = Backoff::STORE.delay(failures, rand::random());
                        paused_until = Some(tokio::time::Instant::now() + Duration::from(pause));
                    }
                    Flushed::Committed(_) | Flushed::Nothing => failures = 0,
                }
            }
            _ = stop.changed() => break,
        }
        // A backlog larger than one flush: use every transaction slot now, not at the next tick.
        if paused_until.is_none_or(|t| tokio::time::Instant::now() >= t) {
            while flights.len() < max_in_flight
                && shared.books().ledger.ready() >= shared.settings.max_flush_rows
            {
                if !start_flush(&shared, &mut flights, max_in_flight) {
                    break;
                }
            }
        }
    }
    // The transactions in flight land (their acknowledgements go out), then the final flushes:
    // whatever phones and trunks reported before they closed.
    while flights.join_next().await.is_some() {}
    for _ in 0..5 {
        match flush_once(&shared).await {
            Flushed::Nothing => break,
            Flushed::Committed(n) => info!(rows = n, "final flush committed"),
            Flushed::Failed => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    summary.abort();
    let left = shared.books().ledger.len();
    if left > 0 {
        warn!(sessions = left, "shutting down with uncommitted reports; they were not acknowledged");
    }
}

/// Starts a flush in `flights` if a slot is free and something waits; whether it did.
fn start_flush(shared: &Arc<Shared>, flights: &mut JoinSet<Flushed>, max_in_flight: usize) -> bool {
    if flights.len() >= max_in_flight || shared.books().ledger.ready() == 0 {
        return false;
    }
    let shared = shared.clone();
    flights.spawn(async move { flush_once(&shared).await });
    true
}

/// Writes one flush of up to `--max-flush-rows` sessions, the ones that changed longest ago;
/// see the module documentation.
pub async fn flush_once(shared: &Shared) -> Flushed {
    // Sized to what waits now (another flush may take some meanwhile: begin_flush takes what is
    // there, up to this many).
    let take = shared.books().ledger.ready().min(shared.settings.max_flush_rows.max(1));
    let mut keys = vec![SessionKey { gateway: 0, boot_epoch: 0, session: 0 }; take];
    let began_ms = shared.now_ms();
    // How long each row's oldest report had waited when the flight began.
    let mut waited_ms: Vec<u64> = Vec::with_capacity(take);
    let (flight, rows) = {
        let mut books = shared.books();
        let flight = books.ledger.begin_flush(&mut keys, TrunkInstant::from_millis(began_ms));
        if flight.is_empty() {
            books.ledger.commit_succeeded(flight, |_, _, _| {});
            return Flushed::Nothing;
        }
        let rows: Vec<FlushRow> = books
            .ledger
            .rows(&flight)
            .map(|r| {
                waited_ms.push(r.waited(TrunkInstant::from_millis(began_ms)).as_millis());
                FlushRow {
                    key: r.key,
                    total: r.total,
                    device: r.device.map(|d| String::from_utf8_lossy(d).into_owned()),
                    closed: r.closed.map(|c| c.0),
                }
            })
            .collect();
        (flight, rows)
    };
    let started = Instant::now();
    let result = shared.writer.write_flush(&rows).await;
    let m = &shared.metrics;
    m.flush_duration.observe(started.elapsed().as_secs_f64());
    let mut books = shared.books();
    match result {
        Ok(written) => {
            // From the arrival of the flight's oldest report to now, when it is durable.
            let now_ms = shared.now_ms();
            let lag = Duration::from(flight.waited(TrunkInstant::from_millis(now_ms)));
            let mut acks: HashMap<u32, Vec<AckEntry>> = HashMap::new();
            // Sessions of a folded gateway boot were not written: no acknowledgement for them
            // (their gateway, if it still runs, is refused; see compactor.rs).
            let refused: HashSet<SessionKey> = written.refused.iter().copied().collect();
            books.ledger.commit_succeeded(flight, |route, key, entry| {
                if !refused.contains(&key) {
                    acks.entry(route).or_default().push(entry);
                }
            });
            m.ledger_entries.set(books.ledger.len() as i64);
            drop(books);
            shared.routes.deliver(acks);
            shared.room.notify_waiters();
            m.flushes.inc();
            m.flush_rows.inc_by(rows.len() as u64);
            m.flushed_bytes.inc_by(written.bytes);
            if !refused.is_empty() {
                m.refused_rows.inc_by(refused.len() as u64);
                warn!(rows = refused.len(), "reports of folded gateway boots were refused, not acknowledged");
            }
            m.flush_lag.observe(lag.as_secs_f64());
            let flew_ms = now_ms.saturating_sub(began_ms);
            for waited in waited_ms {
                m.row_lag.observe((waited + flew_ms) as f64 / 1000.0);
            }
            shared.last_flush.record(shared.now_ms(), rows.len(), Some(lag), started.elapsed());
            debug!(rows = rows.len(), ms = started.elapsed().as_millis() as u64, "flush committed");
            Flushed::Committed(rows.len())
        }
        Err(e) => {
            books.ledger.commit_failed(flight);
            drop(books);
            m.db_errors.inc();
            warn!(rows = rows.len(), error = %e, "flush failed; its rows wait for the next one");
            Flushed::Failed
        }
    }
}

/// Reads the persisted totals every [`SUMMARY_INTERVAL`] for the metrics and the dashboard, in
/// a task of its own: no flush ever waits for it.
async fn summary_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SUMMARY_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match shared.store.summary().await {
            Ok((sessions, bytes)) => {
                shared.metrics.persisted_sessions.set(i64::try_from(sessions).unwrap_or(i64::MAX));
                shared.metrics.persisted_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
                shared.dashboard.persisted(bytes);
            }
            Err(e) => debug!(error = %e, "reading the persisted totals failed"),
        }
    }
}
