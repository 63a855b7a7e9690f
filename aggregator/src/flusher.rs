//! The flush loop: every `--flush-interval-ms`, the ledger's changed sessions are written in one
//! transaction, and only after it commits are the acknowledgements handed to their trunks and
//! phones. A failed transaction puts the rows back; they are retried, with backoff, while reports
//! keep coalescing in the ledger (bounded: see `--ledger-capacity`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};
use trunk::frame::AckEntry;

use crate::state::Shared;
use crate::store::FlushRow;

/// How often the persisted totals shown in metrics are refreshed (a scan of the sessions table).
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Outcome of one flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    Nothing,
    Committed(usize),
    Failed,
}

/// Runs until `stop` becomes true, then flushes what is left (a few attempts) and returns.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.settings.flush_interval());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failures = 0u32;
    // The first summary right away, so the dashboard's persisted totals are there from the start.
    let mut summary_at: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        match flush_once(&shared).await {
            Flushed::Failed => {
                failures += 1;
                let pause = Duration::from_millis(100 << failures.min(6));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => break,
                }
            }
            Flushed::Committed(_) | Flushed::Nothing => failures = 0,
        }
        if summary_at.is_none_or(|t| t.elapsed() >= SUMMARY_INTERVAL) {
            summary_at = Some(Instant::now());
            refresh_summary(&shared).await;
        }
    }
    // Final flushes: whatever phones and trunks reported before they closed.
    for _ in 0..5 {
        match flush_once(&shared).await {
            Flushed::Nothing => break,
            Flushed::Committed(n) => info!(rows = n, "final flush committed"),
            Flushed::Failed => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let left = shared.books().ledger.len();
    if left > 0 {
        warn!(sessions = left, "shutting down with uncommitted reports; they were not acknowledged");
    }
}

/// Writes one flush; see the module documentation.
pub async fn flush_once(shared: &Shared) -> Flushed {
    let (rows, oldest) = {
        let mut books = shared.books();
        let n = books.ledger.begin_flush(shared.settings.max_flush_rows);
        if n == 0 {
            return Flushed::Nothing;
        }
        let rows: Vec<FlushRow> = books
            .ledger
            .rows()
            .map(|r| FlushRow {
                key: r.key,
                total: r.total,
                device: r.device.map(|d| String::from_utf8_lossy(d).into_owned()),
                closed: r.closed.map(|c| c.0),
            })
            .collect();
        let oldest = books.dirty_since.take();
        if books.ledger.dirty() > 0 {
            // Reports beyond --max-flush-rows keep waiting; their age is at most this old.
            books.dirty_since = oldest;
        }
        (rows, oldest)
    };
    let started = Instant::now();
    let result = shared.store.write_flush(&rows).await;
    let m = &shared.metrics;
    m.flush_duration.observe(started.elapsed().as_secs_f64());
    let mut books = shared.books();
    match result {
        Ok(()) => {
            let mut acks: HashMap<u32, Vec<AckEntry>> = HashMap::new();
            books.ledger.commit_succeeded(|route, _key, entry| acks.entry(route).or_default().push(entry));
            m.ledger_entries.set(books.ledger.len() as i64);
            drop(books);
            shared.deliver(acks);
            shared.room.notify_waiters();
            m.flushes.inc();
            m.flush_rows.inc_by(rows.len() as u64);
            let lag = oldest.map(|t| t.elapsed());
            if let Some(lag) = lag {
                m.flush_lag.observe(lag.as_secs_f64());
            }
            shared.last_flush.record(shared.now_ms(), rows.len(), lag, started.elapsed());
            debug!(rows = rows.len(), ms = started.elapsed().as_millis() as u64, "flush committed");
            Flushed::Committed(rows.len())
        }
        Err(e) => {
            books.ledger.commit_failed();
            books.dirty_since = match (oldest, books.dirty_since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            drop(books);
            m.db_errors.inc();
            warn!(rows = rows.len(), error = %e, "flush failed; its rows wait for the next one");
            Flushed::Failed
        }
    }
}

async fn refresh_summary(shared: &Shared) {
    if let Ok((sessions, bytes)) = shared.store.summary().await {
        shared.metrics.persisted_sessions.set(sessions as i64);
        shared.metrics.persisted_bytes.set(bytes as i64);
        shared.dashboard.persisted(bytes);
    }
}
