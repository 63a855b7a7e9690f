//! The compactor: the store's background work, off the path of every acknowledgement.
//!
//! - **Compaction** (PostgreSQL): a flush appends its reports to the journal and is acknowledged
//!   when that row commits; the compactor merges the journal into `sessions` and the totals,
//!   oldest flights first, every `--compact-interval-ms` and at once again while flights are
//!   left over. The reports stream into the aggregator and are merged per session here, so a
//!   session reported in several flights of one compaction is written once. A compaction takes
//!   what waits, up to `--compact-max-entries` reports and `--compact-max-sessions` sessions
//!   (its memory): the longer the backlog, the more reports per row write
//!   ([`Store::compact`], migrations/postgres/0004_journal.sql, docs/ARCHITECTURE.md).
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
//! one database lock. Acknowledgements come first ([`Flushes`]): no compaction starts while the
//! flushes are behind, and while the flushes have work the compactor works at most
//! `--compact-busy-percent` of the time, resting in proportion **between the statements of a
//! compaction** ([`Pacer`]) as well as after it: however large a compaction is, its work comes
//! in pieces of about a second. On a machine that cannot keep up, the journal grows (and is
//! merged later, with more reports per row, at full pace once the flushes are idle) rather than
//! the acknowledgements slowing down.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::store::{FoldPolicy, GiveWay, Store};

/// When the compactor works.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// How often the journal is compacted.
    pub compact_every: Duration,
    /// Most reports merged by one compaction (one transaction).
    pub compact_max_entries: usize,
    /// Most sessions merged by one compaction (its memory).
    pub compact_max_sessions: usize,
    /// At most this share of the time is spent compacting, 1 to 100 (%): after work that took
    /// `t` (a statement of a compaction, or the compaction's last one), the compactor rests
    /// `t * (100 - busy) / busy` ([`Pacer`]), even with flights left over, so that a backlog
    /// never takes the database from the flushes (which acknowledge) and the trunk handshakes.
    /// No rest while the flushes are idle.
    pub busy_percent: u32,
    /// Longest a compaction waits for the flushes to catch up ([`Flushes::Behind`]).
    pub max_defer: Duration,
    /// Folding's policy and interval; `None`: folding is off.
    pub fold: Option<(FoldPolicy, Duration)>,
}

/// How often a deferred compaction looks again whether the flushes caught up.
const DEFER_POLL: Duration = Duration::from_millis(50);

/// What the flushes are doing, as the compactor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushes {
    /// Nothing waits to be written and nothing was committed for a second
    /// (`state::FLUSHES_IDLE_AFTER`): the database is the compactor's, no rest is needed.
    Idle,
    /// Writing and keeping up: the compactor takes its share (`--compact-busy-percent`).
    Busy,
    /// More than two flushes' worth of sessions wait: no compaction starts (for at most
    /// `--compact-max-defer-ms`), since acknowledgements wait for the flushes and nothing waits
    /// for the journal's merge.
    Behind,
}

/// Runs compactions and folding rounds until `stop` becomes true; `flushes` tells what the
/// flushes are doing (see [`Flushes`]).
pub async fn run(
    store: Store,
    schedule: Schedule,
    metrics: Metrics,
    flushes: impl Fn() -> Flushes + Sync,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_fold = Instant::now();
    loop {
        if !wait_for_flushes(&flushes, schedule.max_defer, &mut stop).await {
            return;
        }
        let mut pacer = Pacer::new(schedule.busy_percent, &flushes, stop.clone());
        let mut more = compact_once(&store, &schedule, &metrics, &mut pacer).await;
        let rest = pacer.owed();
        if let Some((policy, every)) = &schedule.fold {
            if Instant::now() >= next_fold {
                let folded_more = fold_once(&store, policy, &metrics).await;
                next_fold = if folded_more { Instant::now() } else { Instant::now() + *every };
                more |= folded_more;
            }
        }
        // Work left: on after the rest; otherwise at the next interval.
        let pause = if more { rest } else { rest.max(schedule.compact_every) };
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Waits while the flushes are [`Flushes::Behind`], at most `max_defer`; false if `stop` came
/// first.
async fn wait_for_flushes(
    flushes: &impl Fn() -> Flushes,
    max_defer: Duration,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let deferred_since = Instant::now();
    while flushes() == Flushes::Behind && deferred_since.elapsed() < max_defer {
        tokio::select! {
            _ = tokio::time::sleep(DEFER_POLL) => {}
            _ = stop.changed() => return false,
        }
    }
    true
}

/// Keeps a compaction within its share of the time while it runs: between its statements it
/// rests for the work done since the last rest, as [`rest_after`] says for what the flushes are
/// doing at that moment. So a compaction of millions of reports (one that began while the
/// flushes were idle, or that took a long backlog) gives way to the flushes statement by
/// statement, rather than taking the database for its whole length. Once the aggregator stops, no more rests: the
/// compaction finishes at full pace (or is rolled back with its transaction, losing nothing).
struct Pacer<'a, F> {
    busy_percent: u32,
    flushes: &'a F,
    stop: watch::Receiver<bool>,
    /// When the work not yet rested for began.
    since: Instant,
}

impl<'a, F: Fn() -> Flushes> Pacer<'a, F> {
    fn new(busy_percent: u32, flushes: &'a F, stop: watch::Receiver<bool>) -> Self {
        Pacer { busy_percent, flushes, stop, since: Instant::now() }
    }

    /// The rest owed for the work since the last one.
    fn owed(&self) -> Duration {
        rest_after(self.since.elapsed(), self.busy_percent, (self.flushes)())
    }
}

impl<F: Fn() -> Flushes + Sync> GiveWay for Pacer<'_, F> {
    /// Takes the rest owed (none once told to stop).
    async fn give_way(&mut self) {
        let rest = self.owed();
        if !rest.is_zero() && !*self.stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep(rest) => {}
                _ = self.stop.changed() => {}
            }
        }
        self.since = Instant::now();
    }
}

/// How long to rest after working `worked`, to stay within `busy_percent` of the time while
/// the flushes have work (none while they are idle: after the load, the journal is merged at
/// the database's pace).
fn rest_after(worked: Duration, busy_percent: u32, flushes: Flushes) -> Duration {
    if flushes == Flushes::Idle {
        return Duration::ZERO;
    }
    let busy = busy_percent.clamp(1, 100);
    worked * (100 - busy) / busy
}

/// One compaction; whether flights are left over.
async fn compact_once(
    store: &Store,
    schedule: &Schedule,
    metrics: &Metrics,
    pace: &mut impl GiveWay,
) -> bool {
    let started = std::time::Instant::now();
    match store.compact(schedule.compact_max_entries, schedule.compact_max_sessions, pace).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rests_in_proportion_to_the_work() {
        let second = Duration::from_secs(1);
        let busy = Flushes::Busy;
        assert_eq!(rest_after(second, 50, busy), second);
        assert_eq!(rest_after(second, 25, busy), 3 * second);
        assert_eq!(rest_after(second, 100, busy), Duration::ZERO);
        assert_eq!(rest_after(second, 0, busy), 99 * second, "at least 1 %");
        assert_eq!(rest_after(second, 400, busy), Duration::ZERO, "at most 100 %");
        assert_eq!(rest_after(second, 10, Flushes::Behind), 9 * second);
        assert_eq!(rest_after(second, 10, Flushes::Idle), Duration::ZERO, "nothing to give way to");
    }

    /// Between a compaction's statements the pacer rests for the work since its last rest, as
    /// the flushes are doing at that moment; not at all while they are idle or once stopping.
    #[tokio::test(start_paused = true)]
    async fn a_compaction_gives_way_statement_by_statement_when_a_load_starts() {
        let (stop_tx, stop) = watch::channel(false);
        let loaded_from = Instant::now() + Duration::from_secs(2);
        let flushes = || if Instant::now() < loaded_from { Flushes::Idle } else { Flushes::Busy };
        let mut pacer = Pacer::new(10, &flushes, stop);
        let statement = Duration::from_secs(1);
        let mut rests = Vec::new();
        for _ in 0..4 {
            tokio::time::sleep(statement).await;
            let before = Instant::now();
            pacer.give_way().await;
            rests.push(before.elapsed().as_secs());
        }
        assert_eq!(rests, [0, 9, 9, 9], "idle at first: no rest; then 10 % of the time");
        stop_tx.send(true).unwrap();
        tokio::time::sleep(statement).await;
        let before = Instant::now();
        pacer.give_way().await;
        assert_eq!(before.elapsed(), Duration::ZERO, "stopping: the compaction finishes at once");
        tokio::time::sleep(statement).await;
        assert_eq!(pacer.owed(), Duration::from_secs(9), "what the compactor rests after it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_compaction_waits_for_the_flushes_to_catch_up_but_not_for_ever() {
        let (_stop_tx, mut stop) = watch::channel(false);
        let max = Duration::from_secs(30);
        let begun = Instant::now();
        assert!(wait_for_flushes(&|| Flushes::Busy, max, &mut stop).await);
        assert_eq!(begun.elapsed(), Duration::ZERO, "no backlog: at once");

        // Behind until 2 s from now.
        let caught_up = begun + Duration::from_secs(2);
        let flushes = || if Instant::now() < caught_up { Flushes::Behind } else { Flushes::Busy };
        assert!(wait_for_flushes(&flushes, max, &mut stop).await);
        assert!(begun.elapsed() >= Duration::from_secs(2), "waited for the backlog");
        assert!(begun.elapsed() < Duration::from_secs(2) + 2 * DEFER_POLL, "and no longer");

        // Never catching up: the journal is merged anyway, after `max`.
        let begun = Instant::now();
        assert!(wait_for_flushes(&|| Flushes::Behind, max, &mut stop).await);
        assert!(begun.elapsed() >= max && begun.elapsed() < max + 2 * DEFER_POLL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_compaction_stops_with_the_aggregator() {
        let (stop_tx, mut stop) = watch::channel(false);
        let waiting = tokio::spawn(async move {
            wait_for_flushes(&|| Flushes::Behind, Duration::from_secs(30), &mut stop).await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_tx.send(true).unwrap();
        assert!(!waiting.await.unwrap(), "told to stop, not to compact");
    }
}
