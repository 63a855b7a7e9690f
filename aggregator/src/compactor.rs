//! The compactor: keeps the sessions table to the live sessions and a recent margin by folding
//! finished sessions into per-device totals (`device_folded`), so that the table does not grow
//! by a row per phone connection for ever.
//!
//! Which sessions may be folded, and why a folded session can never be counted twice, is the
//! store's business (migrations/postgres/0003_fold.sql, [`Store::fold_round`]): in short, a
//! direct phone's session once its close is committed, and every session of a gateway boot that
//! a newer boot of the same gateway superseded, whose late reports are then refused (not written,
//! not acknowledged). This task only runs the rounds: every `--fold-interval-ms`, and at once
//! again while a round's batch came back full. Each aggregator runs one; rounds of two
//! aggregators fold each row once.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::store::{FoldPolicy, Store};

/// Runs folding rounds until `stop` becomes true.
pub async fn run(
    store: Store,
    policy: FoldPolicy,
    interval: Duration,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let more = match store.fold_round(&policy).await {
            Ok(done) => {
                metrics.folded_sessions.inc_by(done.sessions);
                metrics.folded_boots.inc_by(done.boots);
                if done.boots > 0 {
                    info!(
                        boots = done.boots,
                        "superseded gateway boots folded; their late reports are refused"
                    );
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
        };
        if more {
            // A full batch: fold on, but let a stop through between batches.
            if *stop.borrow() {
                return;
            }
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
    }
}
