//! The compactor: the store's background work, off the path of every acknowledgement.
//!
//! - **Compaction** (PostgreSQL): a flush appends its reports to the journal and is acknowledged
//!   when that row commits; the compactor merges the journal into `sessions` and the totals,
//!   oldest flights first, every `--compact-interval-ms` and at once again while flights are
//!   left over. A session reported in many flights meanwhile is written once, so the slower the
//!   database, the more each compaction coalesces: a backlog shrinks the work per byte instead
//!   of delaying acknowledgements ([`Store::compact`], migrations/postgres/0004_journal.sql).
//! - **Folding**: keeps the sessions table to the live sessions and a recent margin by folding
//!   finished sessions into per-device totals (`device_folded`), so that the table does not grow
//!   by a row per phone connection for ever. Which sessions may be folded, and why a folded
//!   session can never be counted twice, is the store's business
//!   (migrations/postgres/0003_fold.sql, [`Store::fold_round`]): in short, a direct phone's
//!   session once its close is committed, and every session of a gateway boot that a newer boot
//!   of the same gateway superseded, whose late reports are then refused (not written, not
//!   acknowledged). Rounds run every `--fold-interval-ms`, and at once again while a round's
//!   batch came back full.
//!
//! Each aggregator runs one compactor; across aggregators compactions and folds take turns under
//! one database lock.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::store::{FoldPolicy, Store};

/// When the compactor works.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// How often the journal is compacted.
    pub compact_every: Duration,
    /// Most reports merged by one compaction (one transaction).
    pub compact_max_entries: usize,
    /// Folding's policy and interval; `None`: folding is off.
    pub fold: Option<(FoldPolicy, Duration)>,
}

/// Runs compactions and folding rounds until `stop` becomes true.
pub async fn run(store: Store, schedule: Schedule, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    let mut next_fold = Instant::now();
    loop {
        let mut more = compact_once(&store, &schedule, &metrics).await;
        if let Some((policy, every)) = &schedule.fold {
            if Instant::now() >= next_fold {
                let folded_more = fold_once(&store, policy, &metrics).await;
                next_fold = if folded_more { Instant::now() } else { Instant::now() + *every };
                more |= folded_more;
            }
        }
        if more {
            // Work left: on at once, but let a stop through between transactions.
            if *stop.borrow() {
                return;
            }
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(schedule.compact_every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One compaction; whether flights are left over.
async fn compact_once(store: &Store, schedule: &Schedule, metrics: &Metrics) -> bool {
    let started = std::time::Instant::now();
    match store.compact(schedule.compact_max_entries).await {
        Ok(done) => {
            if done.flights > 0 {
                metrics.compactions.inc();
                metrics.compacted_entries.inc_by(done.entries);
                metrics.compaction_duration.observe(started.elapsed().as_secs_f64());
                metrics.flushed_bytes.inc_by(done.grew.bytes);
                debug!(
                    flights = done.flights,
                    entries = done.entries,
                    sessions = done.sessions,
                    left = done.left,
                    ms = started.elapsed().as_millis() as u64,
                    "journal compacted"
                );
            }
            if !done.busy {
                metrics.journal_flights.set(i64::try_from(done.left).unwrap_or(i64::MAX));
            }
            done.left > 0
        }
        Err(e) => {
            warn!(error = format!("{e:#}"), "compaction failed; the next one tries again");
            false
        }
    }
}

/// One folding round; whether a batch was full (more to fold).
async fn fold_once(store: &Store, policy: &FoldPolicy, metrics: &Metrics) -> bool {
    match store.fold_round(policy).await {
        Ok(done) => {
            metrics.folded_sessions.inc_by(done.sessions);
            metrics.folded_boots.inc_by(done.boots);
            if done.boots > 0 {
                info!(boots = done.boots, "superseded gateway boots folded; their late reports are refused");
            }
            if done.sessions > 0 {
                debug!(sessions = done.sessions, "finished sessions folded");
            }
            done.more
        }
        Err(e) => {
            warn!(error = format!("{e:#}"), "folding failed; the next round tries again");
            false
        }
    }
}
