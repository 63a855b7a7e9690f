//! `lab bench trunk-throughput` (scripts/bench/trunk-throughput.sh): phone bytes per second
//! sustained through gateway trunks into PostgreSQL, with the aggregator's flush lag and the rows
//! it wrote per second.
//!
//! One aggregator serving TLS itself (no nginx in front) on PostgreSQL, and G virtual gateways
//! (one mobile-sim process: the trunk crate's real gateway state machine) of P sessions on 2 TLS
//! trunks each, straight to it, every session sending a byte every 1-5 s for D; verified per
//! session against the database. At the defaults (100 gateways x 1,000 sessions for 60 s) that
//! is about 33,000 bytes/s for 100,000 sessions: the production rate of 1,000,000 phones at one
//! tenth of the sessions. Prints mobile-sim's verdict with the bytes per second, then the
//! aggregator's flushes and rows written over the run (rows per second over D) and its flush lag
//! p50/p99 (the upper bounds of `holdfast_flush_lag_seconds`'s buckets, the flushes of the run
//! alone). A run whose verification fails prints why and no figures, and exits 1.
//!
//! The database: a fresh one on the server `--database-url` (or `DATABASE_URL`) names, dropped
//! at the end, as the script did; without either, the cluster's private PostgreSQL (`lab bench
//! trunks`'s). The parts are started by [`crate::cluster`], as `lab bench trunks` starts them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use super::{
    bound, files_for, grew, leave, on_cluster, parse_duration, per_second, sim_duration, trunk_settings,
    trunk_verdict, work_dir, FILES_SPARE, LINKS, LOAD_MARGIN, MAX_INTERVAL, MIN_INTERVAL,
};
use crate::cluster::load::LoadSpec;
use crate::cluster::{Cluster, TlsMode};
use crate::metrics::{Window, FLUSHES, FLUSH_LAG, FLUSH_ROWS};

/// The aggregator the gateways' trunks go to (the cluster's first and only one).
const AGGREGATOR: u32 = 1;
/// Most virtual gateways: 2 trunks each, within the aggregator's default `--max-trunks` (2,000).
const MAX_GATEWAYS: u32 = 1_000;

#[derive(Debug, clap::Args)]
pub struct TrunkThroughputArgs {
    /// Virtual gateways (all in one mobile-sim process), each on 2 trunk links; at most 1,000
    /// (the aggregator holds 2,000 trunks).
    #[arg(long, default_value_t = 100, value_name = "G",
          value_parser = clap::value_parser!(u32).range(1..=MAX_GATEWAYS as i64))]
    pub gateways: u32,

    /// Phone sessions per gateway.
    #[arg(long, default_value_t = 1_000, value_name = "P",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub sessions: u32,

    /// How long the sessions send, ramp included (10s, 500ms, 5m, 1h; a bare number is
    /// seconds); the rows per second are over it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// A PostgreSQL server (a role that may CREATE DATABASE): the run makes a fresh database on
    /// it and drops it at the end. Default: a private PostgreSQL in the run's folder.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,

    /// Where the aggregator and mobile-sim binaries are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// Runs `lab bench trunk-throughput`.
pub async fn run(args: TrunkThroughputArgs) -> anyhow::Result<bool> {
    let trunks = u64::from(args.gateways) * u64::from(LINKS);
    // The aggregator holds a file per trunk, and so does mobile-sim.
    files_for(trunks + FILES_SPARE, &format!("{trunks} trunks"))?;
    let mut s = trunk_settings(args.bin_dir.clone(), args.gateways, args.sessions, 1, TlsMode::Passthrough)?;
    let database = match &args.database_url {
        Some(url) => Some(
            testkit::db::PgDatabase::try_create(url, "holdfast_bench")
                .await
                .map_err(anyhow::Error::msg)
                .context("a fresh database for the bench")?,
        ),
        None => None,
    };
    s.database_url = database.as_ref().map(|d| d.url.clone());
    let work = work_dir("trunk-throughput")?;
    let result = on_cluster(&work, s, &args, |cluster, args| Box::pin(measure(cluster, args))).await;
    if let Some(database) = database {
        if let Err(e) = database.drop_now().await {
            eprintln!("lab bench trunk-throughput: {e}");
        }
    }
    leave(&work, &result);
    result
}

async fn measure(cluster: &mut Cluster, args: &TrunkThroughputArgs) -> anyhow::Result<bool> {
    cluster.start_aggregators().await?;
    let trunks = u64::from(args.gateways) * u64::from(LINKS);
    let at = cluster.aggregator_addr(AGGREGATOR);
    println!(
        "1 aggregator on {at} (TLS), {}; {} gateways x {} sessions on {LINKS} trunks each ({trunks} trunks), \
         a byte every {MIN_INTERVAL}-{MAX_INTERVAL} per session for {:?}",
        if cluster.postgres.is_some() { "a private PostgreSQL" } else { "a fresh database on the given PostgreSQL" },
        args.gateways,
        args.sessions,
        args.duration
    );
    // The flushes of the run alone: the counters and the histogram are read before and after.
    let before = cluster.scrape(AGGREGATOR).await?;
    let spec = LoadSpec {
        trunk_target: Some(format!("wss://{at}/trunk")),
        ..LoadSpec::new(&sim_duration(args.duration), "bench-")
    };
    let load = cluster.start_virtual_gateways(&spec)?;
    let status = cluster.wait(&load.name, Some(args.duration + LOAD_MARGIN)).await;
    if trunk_verdict(cluster, &load, status, trunks).is_none() {
        return Ok(false);
    }
    let after = cluster.scrape(AGGREGATOR).await?;
    let flushes = grew(&before, &after, AGGREGATOR, FLUSHES)?;
    let rows = grew(&before, &after, AGGREGATOR, FLUSH_ROWS)?;
    let lag = Window::between(&before, &after, FLUSH_LAG);
    print!("{}", flush_lines(flushes, rows, args.duration, &lag));
    Ok(true)
}

/// The aggregator's figures, as the script printed them: flushes and rows written (rows per
/// second over the load's `duration`), and the flush lag's p50 and p99 bucket bounds.
fn flush_lines(flushes: f64, rows: f64, duration: Duration, lag: &Window) -> String {
    let seconds = duration.as_secs_f64();
    format!(
        "flushes {flushes}, rows written {rows} ({:.0} rows/s over {seconds}s)\n\
         flush lag (age of the oldest report at commit): p50 <= {}, p99 <= {} (histogram bucket bounds)\n",
        per_second(rows, seconds),
        bound(lag.quantile_at_most(0.5)),
        bound(lag.quantile_at_most(0.99))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tests::lag_window;

    #[test]
    fn the_lines_read_as_the_script_printed_them() {
        let lag = lag_window(&[("0.32", 200), ("5.12", 269), ("+Inf", 269)]);
        assert_eq!(
            flush_lines(269.0, 2_144_507.0, Duration::from_secs(60), &lag),
            "flushes 269, rows written 2144507 (35742 rows/s over 60s)\n\
             flush lag (age of the oldest report at commit): p50 <= 0.32s, p99 <= 5.12s (histogram bucket bounds)\n"
        );
    }
}
