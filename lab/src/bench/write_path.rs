//! `lab bench write-path` (scripts/bench/write-path.sh): the write path side by side. The same
//! trunk load into each given aggregator binary in turn (alternating, `--runs` times), each run
//! on a fresh PostgreSQL database (or SQLite file) and a fresh data folder ([`crate::bench::solo`]):
//! mobile-sim virtual gateways, G gateways x P sessions on 2 TLS trunks each, all opened at once,
//! every session sending a byte every MIN to MAX, for DURATION.
//!
//! Per run: phone bytes per second made durable, rows per second, flush lag p50 and p99 over the
//! whole run (bucket bounds; per flush: the age of its oldest report at commit,
//! `holdfast_flush_lag_seconds`; per row: what each session's oldest report waited,
//! `holdfast_flush_row_lag_seconds`, "-" where the binary lacks it), the links mobile-sim saw
//! dropped, and the aggregator's CPU over its life (utime + stime; and per phone byte sent).
//! Then the median of each figure per binary (the lower middle of an even count, as the script's).
//!
//! mobile-sim's verdict on every session decides each run (its exit status: an older mobile-sim
//! writes no verdict in its report); a failed verdict prints why and no medians, and the command
//! exits 1. Trunk links may drop or fail, up to one per link, and are counted: an aggregator that
//! drops busy trunks as idle still has its throughput measured, and its drops shown. An older
//! aggregator speaks only with the mobile-sim of its commit: a binary may name its own
//! (`AGGREGATOR:MOBILE_SIM`, what scripts/bench/old-vs-new.sh passes); a mobile-sim without
//! `--max-dropped` is given no allowance (it fails on any drop).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::bench::solo::{self, subjects, FreshStore, Naming, Outcome, Solo, Subject, Turns};
use crate::bench::{files_for, leave, sim_duration, usage, work_dir};
use crate::children::{self, Proc};
use crate::cluster::load::{virtual_gateways, LoadSpec};
use crate::compare::lower_median;
use crate::hold::load_average;
use crate::metrics::{Scrape, Window, FLUSH_LAG, FLUSH_ROWS, FLUSH_ROW_LAG};
use crate::report::SimReport;

/// Trunk links per virtual gateway: mobile-sim's default, not passed (as the script did not:
/// an older mobile-sim may not take `--links`).
const LINKS: u64 = 2;
/// Trunks the aggregator admits beyond the load's (`--max-trunks`).
const TRUNKS_SPARE: u64 = 100;
/// Open files a process needs beyond its trunks (listeners, logs, the store).
const FILES_SPARE: u64 = 512;
/// Most runs per binary.
const MAX_RUNS: u32 = 100;
/// After the run phase, how long mobile-sim waits for every byte to be confirmed durable.
const DRAIN_TIMEOUT: &str = "120s";
/// The longest mobile-sim may outlive its duration: the drain, the closes, and verifying up to
/// a million sessions against the store.
const SIM_MARGIN: Duration = Duration::from_secs(1800);
/// `--merged`: the longest the compactor may take to merge the journal after the verdict.
const MERGE_LIMIT: Duration = Duration::from_secs(1800);
/// The gateways' names: this and a number of four digits or more.
const GATEWAY_PREFIX: &str = "wp-gw-";
/// The width of a binary's name in the result lines, and the run stores' names.
const NAMING: Naming = Naming { width: NAME_WIDTH, store_prefix: "holdfast_writepath" };
const NAME_WIDTH: usize = 50;

#[derive(Debug, clap::Args)]
pub struct WritePathArgs {
    /// Virtual gateways, all in one mobile-sim process, each on 2 TLS trunks (the load:
    /// 1000).
    #[arg(long, value_name = "G", value_parser = clap::value_parser!(u32).range(1..))]
    pub gateways: u32,

    /// Phone sessions per gateway (the load: 1000).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u32).range(1..))]
    pub sessions: u32,

    /// A session's shortest pause between bytes, as mobile-sim takes it (2s, 500ms).
    #[arg(long, value_name = "MIN", value_parser = sim_interval)]
    pub min_interval: String,

    /// A session's longest pause between bytes.
    #[arg(long, value_name = "MAX", value_parser = sim_interval)]
    pub max_interval: String,

    /// How long the sessions send, the opening included (10s, 2m; 2 s to 24 h).
    #[arg(long, value_parser = crate::bench::parse_duration)]
    pub duration: Duration,

    /// Runs per binary, the binaries taking turns within each (1 to 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_RUNS as i64))]
    pub runs: u32,

    /// The PostgreSQL server (a role that may CREATE DATABASE): each run gets a fresh database,
    /// dropped after it. `sqlite:` for the embedded store: a fresh file per run.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: String,

    /// Failed connection attempts allowed per run. Default: one per link (the embedded SQLite
    /// store answers thousands of the opening's upgrades with HTTP 503).
    #[arg(long, value_name = "N")]
    pub max_failed: Option<u64>,

    /// Keep every run's logs, metrics and mobile-sim report in DIR. Default: in a folder of the
    /// bench's own, removed when every run went well and kept (its path printed) when not.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,

    /// After mobile-sim's verdict, keep the aggregator running until its compactor has merged
    /// the whole journal into the sessions table, print how long that took (stderr), and fail
    /// unless the table then holds exactly the bytes sent (PostgreSQL; binaries without a
    /// journal are not waited for).
    #[arg(long)]
    pub merged: bool,

    /// Where the default aggregator and mobile-sim are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// The aggregators to compare, each driven by the mobile-sim after its colon, or by the
    /// default one. Default: the aggregator next to the lab.
    #[arg(value_name = "AGGREGATOR_BIN[:MOBILE_SIM_BIN]")]
    pub binaries: Vec<String>,
}

/// A pause as mobile-sim takes it, passed on as written.
fn sim_interval(s: &str) -> Result<String, String> {
    cli_env::parse_duration(s)?;
    Ok(s.to_owned())
}

/// One run's figures.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    durable_per_s: f64,
    /// `None` where the binary has no rows counter.
    rows_per_s: Option<f64>,
    /// Flush lag p50 and p99 per flush, then per row: bucket bounds (`None`: not observed, or
    /// no such histogram).
    lag: [Option<f64>; 4],
    dropped: u64,
    cpu_s: f64,
    us_per_byte_sent: f64,
}

impl Figures {
    /// From mobile-sim's report, the aggregator's last metrics page and its CPU over its life.
    fn new(report: &SimReport, page: &Scrape, cpu_s: f64) -> Figures {
        let secs = report.run_seconds;
        let per_s = |amount: f64| if secs > 0.0 { amount / secs } else { 0.0 };
        // The whole run: the histograms from zero.
        let nothing = Scrape::default();
        let flight = Window::between(&nothing, page, FLUSH_LAG);
        let row = Window::between(&nothing, page, FLUSH_ROW_LAG);
        Figures {
            durable_per_s: per_s(report.bytes.durable as f64),
            rows_per_s: page.value(FLUSH_ROWS).map(per_s),
            lag: [
                flight.quantile_at_most(0.5),
                flight.quantile_at_most(0.99),
                row.quantile_at_most(0.5),
                row.quantile_at_most(0.99),
            ],
            dropped: report.connections.dropped,
            cpu_s,
            us_per_byte_sent: cpu_s * 1e6 / report.bytes.sent.max(1) as f64,
        }
    }

    /// The figures of a run line (the median line has the same but the drops).
    fn text(&self, dropped: Option<u64>) -> String {
        let drops = dropped.map_or(String::new(), |d| format!("  links dropped {d}"));
        format!(
            "durable {:.0} bytes/s  rows {}/s  flush lag p50 <= {} s  p99 <= {} s  per row p50 <= {} s  p99 <= {} s{drops}  \
             aggregator CPU {:.1} s ({:.1} us per byte sent)",
            self.durable_per_s,
            self.rows_per_s.map_or("-".into(), |r| format!("{r:.0}")),
            le(self.lag[0]),
            le(self.lag[1]),
            le(self.lag[2]),
            le(self.lag[3]),
            self.cpu_s,
            self.us_per_byte_sent
        )
    }

    /// Each figure's median over `runs` (those a run lacks left out).
    fn medians(runs: &[Figures]) -> Figures {
        let of = |f: fn(&Figures) -> Option<f64>| lower_median(runs.iter().filter_map(f).collect());
        Figures {
            durable_per_s: of(|r| Some(r.durable_per_s)).unwrap_or(0.0),
            rows_per_s: of(|r| r.rows_per_s),
            lag: [of(|r| r.lag[0]), of(|r| r.lag[1]), of(|r| r.lag[2]), of(|r| r.lag[3])],
            dropped: 0,
            cpu_s: of(|r| Some(r.cpu_s)).unwrap_or(0.0),
            us_per_byte_sent: of(|r| Some(r.us_per_byte_sent)).unwrap_or(0.0),
        }
    }
}

/// A bucket bound as the aggregator's page spells it (a whole number with ".0", "+Inf"), "-"
/// when there is none.
fn le(bound: Option<f64>) -> String {
    match bound {
        None => "-".into(),
        Some(v) if v.is_infinite() => "+Inf".into(),
        Some(v) if v.fract() == 0.0 => format!("{v:.1}"),
        Some(v) => format!("{v}"),
    }
}

/// Runs `lab bench write-path`: Ok(true) when every run verified, Ok(false) when one did not
/// (it printed why), an error when it could not run.
pub async fn run(args: WritePathArgs) -> anyhow::Result<bool> {
    let links = u64::from(args.gateways) * LINKS;
    // mobile-sim holds a file per link, and so does the aggregator.
    files_for(links + FILES_SPARE, &format!("{links} trunk links"))?;
    let bin = crate::cluster::run::bin_dir(args.bin_dir.clone())?;
    let subjects = subjects(&args.binaries, &bin.join("aggregator"), &bin.join("mobile-sim"));
    solo::present(&subjects)?;
    let work = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.canonicalize()?
        }
        None => work_dir("write-path")?,
    };
    println!(
        "write-path: {} gateways x {} sessions, a byte every {}-{}, {:?}, {} runs per binary; load {}",
        args.gateways,
        args.sessions,
        args.min_interval,
        args.max_interval,
        args.duration,
        args.runs,
        load_average()
    );
    let turns = Turns::new(NAMING, args.runs, &subjects, &args.database_url, &work);
    let line = |f: &Figures| f.text(Some(f.dropped));
    let one = async |tag: &str, s: &Subject, store: &FreshStore| measure(&args, s, tag, &work, store).await;
    let medians = |results: &[Vec<Figures>]| -> Vec<String> {
        let lines = subjects.iter().zip(results);
        lines
            .map(|(s, runs)| {
                format!("median  {:<NAME_WIDTH$}  {}  (verified)", s.name, Figures::medians(runs).text(None))
            })
            .collect()
    };
    let result = turns.compare(line, one, medians).await;
    match &args.keep {
        Some(dir) => eprintln!("logs kept in {}", dir.display()),
        None => leave(&work, &result),
    }
    result
}

/// Links that may drop or fail, up to one per link, for a mobile-sim that takes such bounds (one
/// of an older commit fails on none).
async fn allowance(sim: &Path, links: u64, max_failed: Option<u64>) -> anyhow::Result<Vec<String>> {
    let mut help = children::clean_command(sim);
    help.args(["gateways", "--help"]);
    let help = children::output(help).await.with_context(|| format!("{} gateways --help", sim.display()))?;
    if !help.contains("--max-dropped") {
        return Ok(Vec::new());
    }
    let failed = max_failed.unwrap_or(links);
    Ok(vec!["--max-dropped".into(), links.to_string(), "--max-failed".into(), failed.to_string()])
}

async fn measure(
    args: &WritePathArgs,
    s: &Subject,
    tag: &str,
    work: &Path,
    store: &FreshStore,
) -> anyhow::Result<Outcome<Figures>> {
    let links = u64::from(args.gateways) * LINKS;
    let allowed = allowance(&s.sim, links, args.max_failed).await?;
    let bounds = ["--max-trunks".to_owned(), (links + TRUNKS_SPARE).to_string()];
    let data = work.join(format!("aggregator-{tag}"));
    let agg = Solo::start(&s.aggregator, &data, &store.url, &bounds, work, &format!("agg-{tag}")).await?;
    let names: Vec<String> = (0..args.gateways).map(|g| format!("{GATEWAY_PREFIX}{g:04}")).collect();
    let gateways = agg.provision(&names).await?;

    let mut spec = LoadSpec::new(&sim_duration(args.duration), &format!("wp{tag}-"));
    spec.extra =
        ["--drain-timeout".to_owned(), DRAIN_TIMEOUT.to_owned()].into_iter().chain(allowed).collect();
    let mut c = virtual_gateways(&s.sim, &agg.trunk_target(), &agg.ca(), &gateways, args.sessions);
    c.args(spec.args_for(&args.min_interval, &args.max_interval, &store.url, &spec.prefix));
    let report_path = work.join(format!("sim-{tag}.json"));
    let mut sim = Proc::spawn(&format!("sim-{tag}"), c, 0, work, Some(&report_path))?;
    let report = match solo::verdict(&mut sim, args.duration + SIM_MARGIN, &report_path).await? {
        Ok(r) => r,
        Err(why) => {
            let bin = s.aggregator.display();
            return Ok(Outcome::Failed(format!("mobile-sim's verdict failed (run {tag}, {bin}): {why}")));
        }
    };
    let page = agg.metrics_page().await?;
    std::fs::write(work.join(format!("metrics-{tag}.txt")), &page)?;
    if args.merged && store.is_postgres() {
        if let Some(failed) = check_merge(store, tag, report.bytes.sent).await? {
            return Ok(Outcome::Failed(failed));
        }
    }
    // The aggregator's CPU over its whole life (opening, the run, the drain, the verification's
    // reads, the merge).
    let cpu_s = usage("the aggregator", agg.pid()?)?.cpu_seconds;
    agg.stop().await;
    Ok(Outcome::Measured(Figures::new(&report, &Scrape::parse(&page), cpu_s)))
}

/// `--merged`: once the journal is empty, the sessions table (and the folded totals) must hold
/// exactly the bytes mobile-sim sent. `Some(why)` when not; a binary without a journal passes.
async fn check_merge(store: &FreshStore, tag: &str, sent: u64) -> anyhow::Result<Option<String>> {
    let mut db = store.connect().await?;
    if !solo::has_journal(&mut db).await? {
        return Ok(None);
    }
    let Some(took) = solo::wait_journal_merged(&mut db, MERGE_LIMIT).await? else {
        return Ok(Some(format!(
            "run {tag}: the journal is still not merged {MERGE_LIMIT:?} after the verdict"
        )));
    };
    let persisted = solo::scalar(
        &mut db,
        "SELECT ((SELECT coalesce(sum(bytes), 0) FROM sessions) + (SELECT coalesce(sum(bytes), 0) FROM device_folded))::bigint",
    )
    .await?;
    if sent == 0 {
        return Ok(Some(format!("run {tag}: mobile-sim sent nothing: nothing to check the merge against")));
    }
    if u64::try_from(persisted).ok() != Some(sent) {
        return Ok(Some(format!(
            "run {tag}: after the merge the sessions table holds {persisted} bytes; mobile-sim sent {sent}"
        )));
    }
    eprintln!(
        "  run {tag}: journal merged {} s after mobile-sim's verdict; the sessions table holds exactly the {sent} bytes sent",
        took.as_secs()
    );
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_spelled_as_the_page() {
        assert_eq!(le(None), "-");
        assert_eq!(le(Some(f64::INFINITY)), "+Inf");
        assert_eq!(le(Some(1.0)), "1.0");
        assert_eq!(le(Some(0.32)), "0.32");
        assert_eq!(le(Some(20.48)), "20.48");
    }

    fn report(durable: u64, sent: u64, run_seconds: f64, dropped: u64) -> SimReport {
        let mut r = SimReport { run_seconds, ..SimReport::default() };
        r.bytes.durable = durable;
        r.bytes.sent = sent;
        r.connections.dropped = dropped;
        r
    }

    const PAGE: &str = "holdfast_flush_lag_seconds_bucket{le=\"0.5\"} 60\n\
        holdfast_flush_lag_seconds_bucket{le=\"1.0\"} 99\n\
        holdfast_flush_lag_seconds_bucket{le=\"2.0\"} 100\n\
        holdfast_flush_lag_seconds_bucket{le=\"+Inf\"} 100\n\
        holdfast_flush_lag_seconds_count 100\n\
        holdfast_flush_rows_total 12000\n";

    #[test]
    fn a_run_line() {
        let f = Figures::new(&report(24_000, 25_000, 100.0, 3), &Scrape::parse(PAGE), 12.34);
        assert_eq!(f.lag, [Some(0.5), Some(1.0), None, None]);
        assert_eq!(
            f.text(Some(f.dropped)),
            "durable 240 bytes/s  rows 120/s  flush lag p50 <= 0.5 s  p99 <= 1.0 s  per row p50 <= - s  p99 <= - s  \
             links dropped 3  aggregator CPU 12.3 s (493.6 us per byte sent)"
        );
        // A binary with no rows counter, a run that sent nothing.
        let bare = Figures::new(&report(0, 0, 0.0, 0), &Scrape::default(), 1.0);
        assert_eq!(bare.rows_per_s, None);
        assert_eq!((bare.durable_per_s, bare.us_per_byte_sent), (0.0, 1e6));
    }

    #[test]
    fn medians_are_figures_of_runs() {
        let page = Scrape::parse(PAGE);
        let slow = Scrape::parse(&PAGE.replace("le=\"0.5\"} 60", "le=\"0.5\"} 10"));
        let runs = [
            Figures::new(&report(300, 300, 1.0, 0), &page, 3.0),
            Figures::new(&report(100, 100, 1.0, 0), &slow, 1.0),
        ];
        let m = Figures::medians(&runs);
        // The lower of two: a bucket bound, never the mean of two.
        assert_eq!((m.durable_per_s, m.cpu_s, m.lag[0]), (100.0, 1.0, Some(0.5)));
        assert!(
            m.text(None).ends_with("aggregator CPU 1.0 s (10000.0 us per byte sent)"),
            "{}",
            m.text(None)
        );
        assert!(!m.text(None).contains("links dropped"));
    }
}
