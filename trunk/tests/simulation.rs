//! Runs the randomised simulation (see `tests/support/sim.rs`) over many seeds: one gateway
//! with several links and one aggregator, links that drop, race and go away, commits that fail and
//! an aggregator that crashes. Each run ends with committed totals equal to sent totals.

mod support;

use support::sim::{run, Stats};

#[test]
fn committed_totals_equal_sent_totals_through_drops_races_failed_commits_and_crashes() {
    let seeds: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    let mut total = Stats::default();
    for seed in 1..=seeds {
        let s = run(seed, 3_000);
        total += s;
    }
    // The run must actually have exercised the failures it claims to survive.
    assert!(
        total.drops > seeds as u32
            && total.go_aways > seeds as u32 / 2
            && total.crashes > seeds as u32 / 2
            && total.failed_commits > seeds as u32
    );
    eprintln!("{seeds} runs: {total:?}");
}
