//! `lab bench flush-cpu` (scripts/bench/flush-cpu.sh): the aggregator's CPU per phone byte when
//! few sessions change per flush. N direct phones over wss (mobile-sim), each sending a byte
//! every 6-18 s (N / 12 bytes/s in all: 1,500 bytes/s for 18,000 phones), into one aggregator
//! on a fresh PostgreSQL database ([`crate::bench::solo`]). The aggregator's CPU (utime + stime from
//! /proc/PID/stat) is measured over a window of the hold, after the ramp, and divided by the
//! bytes it made durable in that window (`holdfast_flushed_bytes_total`, or the phones' own count
//! for a binary without that metric). Each given aggregator binary in turn, `--runs` times; the
//! median of each and their ratio to the first, so that a before/after comparison shares the
//! machine's load.
//!
//! Each run: a fresh database, [`RAMP`] of ramp and settle, then a [`WINDOW`]. Verified by
//! mobile-sim: every byte sent confirmed and persisted exactly once; up to 1 phone in 1,000 may
//! drop or fail a connection attempt (a CPU benchmark on a loaded machine, not a drill: one run
//! saw 2 of 18,000 phones reset by the local TCP stack). A failed verdict, or a window in which
//! no byte was made durable, prints why and no medians, and the command exits 1.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bench::solo::{self, subjects, FreshStore, Naming, Outcome, Solo, Subject, Turns};
use crate::bench::{files_for, leave, sim_duration, usage, work_dir};
use crate::children::Proc;
use crate::cluster::load::{direct_phones, LoadSpec};
use crate::compare::lower_median;
use crate::hold::load_average;
use crate::metrics::{Scrape, FLUSHED_BYTES, PHONE_BYTES};

/// A phone's pause between bytes, seconds.
const MIN_INTERVAL_S: u64 = 6;
const MAX_INTERVAL_S: u64 = 18;
/// The phones' run: the ramp and settle, the window, and this long after it before they stop.
const RAMP: Duration = Duration::from_secs(40);
const WINDOW: Duration = Duration::from_secs(30);
const TAIL: Duration = Duration::from_secs(10);
/// Phones connected per second, and handshakes in flight at once.
const PHONES_RATE: &str = "2000";
const CONCURRENT: &str = "256";
/// Phones the aggregator admits beyond the load's (`--max-phones`).
const PHONES_SPARE: u64 = 1000;
/// One phone in this many may drop, and one may fail a connection attempt.
const PHONES_PER_DROP: u64 = 1000;
/// Open files a process needs beyond its phones (listeners, logs, the store).
const FILES_SPARE: u64 = 512;
/// The longest mobile-sim may take after the window: the rest of its run, the drain, the
/// verification of every phone.
const SIM_MARGIN: Duration = Duration::from_secs(600);
/// Most runs per binary.
const MAX_RUNS: u32 = 100;
/// The width of a binary's name in the result lines, and the run stores' names.
const NAMING: Naming = Naming { width: NAME_WIDTH, store_prefix: "holdfast_flushcpu" };
const NAME_WIDTH: usize = 60;

#[derive(Debug, clap::Args)]
pub struct FlushCpuArgs {
    /// Direct wss phones (mobile-sim starts worker processes as the open-file limit needs).
    #[arg(long, default_value_t = 18_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub phones: u64,

    /// Runs per binary, the binaries taking turns within each (1 to 100).
    #[arg(long, default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_RUNS as i64))]
    pub runs: u32,

    /// The PostgreSQL server (a role that may CREATE DATABASE): each run gets a fresh database,
    /// dropped after it.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: String,

    /// Where the default aggregator and mobile-sim are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// The aggregators to compare (this checkout's mobile-sim drives each). Default: the
    /// aggregator next to the lab.
    #[arg(value_name = "AGGREGATOR_BIN")]
    pub binaries: Vec<String>,
}

/// One run's window.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    us_per_byte: f64,
    cores: f64,
    bytes_per_s: f64,
}

impl Figures {
    /// From the aggregator's CPU seconds and durable bytes at the window's edges, and its
    /// length; `None` when no byte was made durable in it (nothing to divide by).
    fn of_window(cpu_s: f64, bytes: f64, secs: f64) -> Option<Figures> {
        (bytes > 0.0 && secs > 0.0).then(|| Figures {
            us_per_byte: cpu_s * 1e6 / bytes,
            cores: cpu_s / secs,
            bytes_per_s: bytes / secs,
        })
    }

    fn text(&self) -> String {
        format!("{:.1} us/byte  {:.4} cores  {:.0} bytes/s", self.us_per_byte, self.cores, self.bytes_per_s)
    }
}

/// The median lines: each binary's median µs per byte and cores, and its µs per byte over the
/// first binary's (of the figures as printed, one decimal).
fn median_lines(subjects: &[Subject], results: &[Vec<Figures>]) -> Vec<String> {
    let tenths = |v: f64| (v * 10.0).round() / 10.0;
    let of =
        |runs: &[Figures], f: fn(&Figures) -> f64| lower_median(runs.iter().map(f).collect()).unwrap_or(0.0);
    let base = results.first().map(|runs| tenths(of(runs, |r| r.us_per_byte)));
    subjects
        .iter()
        .zip(results)
        .map(|(s, runs)| {
            let us = tenths(of(runs, |r| r.us_per_byte));
            let ratio = base.filter(|&b| b > 0.0).map_or("-".into(), |b| format!("{:.2}", us / b));
            format!(
                "median  {:<NAME_WIDTH$}  {us:.1} us per byte, {:.4} cores  (ratio to the first: {ratio})",
                s.name,
                of(runs, |r| r.cores)
            )
        })
        .collect()
}

/// Runs `lab bench flush-cpu`: Ok(true) when every run verified, Ok(false) when one did not (it
/// printed why), an error when it could not run.
pub async fn run(args: FlushCpuArgs) -> anyhow::Result<bool> {
    files_for(args.phones + FILES_SPARE, &format!("{} phones", args.phones))?;
    let bin = crate::cluster::run::bin_dir(args.bin_dir.clone())?;
    let subjects = subjects(&args.binaries, &bin.join("aggregator"), &bin.join("mobile-sim"));
    solo::present(&subjects)?;
    let work = work_dir("flush-cpu")?;
    println!(
        "flush-cpu: {} direct wss phones, one byte each every {MIN_INTERVAL_S}-{MAX_INTERVAL_S} s; {} runs per binary, \
         alternating; load {}",
        args.phones,
        args.runs,
        load_average()
    );
    let turns = Turns::new(NAMING, args.runs, &subjects, &args.database_url, &work);
    let one = async |tag: &str, s: &Subject, store: &FreshStore| measure(&args, s, tag, &work, store).await;
    let result = turns.compare(Figures::text, one, |results| median_lines(&subjects, results)).await;
    leave(&work, &result);
    result
}

/// The aggregator's CPU seconds and durable bytes now, and when.
async fn sample(agg: &Solo) -> anyhow::Result<(Instant, f64, f64)> {
    let cpu = usage("the aggregator", agg.pid()?)?.cpu_seconds;
    let page = Scrape::parse(&agg.metrics_page().await?);
    let bytes = page.value(FLUSHED_BYTES).or_else(|| page.value(PHONE_BYTES)).with_context(|| {
        format!("the aggregator's metrics have neither {FLUSHED_BYTES} nor {PHONE_BYTES}")
    })?;
    Ok((Instant::now(), cpu, bytes))
}

async fn measure(
    args: &FlushCpuArgs,
    s: &Subject,
    tag: &str,
    work: &Path,
    store: &FreshStore,
) -> anyhow::Result<Outcome<Figures>> {
    let bounds = ["--max-phones".to_owned(), (args.phones + PHONES_SPARE).to_string()];
    let data = work.join(format!("aggregator-{tag}"));
    let agg = Solo::start(&s.aggregator, &data, &store.url, &bounds, work, &format!("agg-{tag}")).await?;
    let allowed = (args.phones / PHONES_PER_DROP).to_string();
    let mut spec = LoadSpec::new(&sim_duration(RAMP + WINDOW + TAIL), &format!("cpu{tag}-"));
    spec.extra = vec!["--max-dropped".into(), allowed.clone(), "--max-failed".into(), allowed];
    let mut c =
        direct_phones(&s.sim, &agg.phone_target(), &agg.ca(), &agg.device_key(), args.phones, PHONES_RATE);
    let (min, max) = (format!("{MIN_INTERVAL_S}s"), format!("{MAX_INTERVAL_S}s"));
    c.args(["-C", CONCURRENT]).args(spec.args_for(&min, &max, &store.url, &spec.prefix));
    let report = work.join(format!("sim-{tag}.json"));
    let mut sim = Proc::spawn(&format!("sim-{tag}"), c, 0, work, Some(&report))?;

    tokio::time::sleep(RAMP).await;
    let (t0, cpu0, bytes0) = sample(&agg).await?;
    tokio::time::sleep(WINDOW).await;
    let (t1, cpu1, bytes1) = sample(&agg).await?;
    if let Err(why) = solo::verdict(&mut sim, SIM_MARGIN, &report).await? {
        return Ok(Outcome::Failed(format!(
            "mobile-sim's verdict failed (run {tag}, {}): {why}",
            s.aggregator.display()
        )));
    }
    agg.stop().await;
    let secs = t1.duration_since(t0).as_secs_f64();
    Ok(match Figures::of_window(cpu1 - cpu0, bytes1 - bytes0, secs) {
        Some(f) => Outcome::Measured(f),
        None => Outcome::Failed(format!("run {tag}, {}: no bytes in the window", s.aggregator.display())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window() {
        let f = Figures::of_window(1.5, 45_000.0, 30.0).unwrap();
        assert_eq!(f.text(), "33.3 us/byte  0.0500 cores  1500 bytes/s");
        assert_eq!(Figures::of_window(1.5, 0.0, 30.0), None);
        assert_eq!(Figures::of_window(1.5, 10.0, 0.0), None);
    }

    #[test]
    fn medians_and_the_ratio_to_the_first() {
        let subjects = subjects(&["old".into(), "new".into()], Path::new("a"), Path::new("s"));
        let f = |us: f64, cores: f64| Figures { us_per_byte: us, cores, bytes_per_s: 1500.0 };
        let results = vec![
            vec![f(105.7, 0.158), f(95.0, 0.142), f(98.2, 0.147)],
            vec![f(46.4, 0.070), f(44.3, 0.066), f(44.2, 0.067)],
        ];
        let lines = median_lines(&subjects, &results);
        assert_eq!(
            lines[0],
            format!("median  {:<60}  98.2 us per byte, 0.1470 cores  (ratio to the first: 1.00)", "old")
        );
        assert_eq!(
            lines[1],
            format!("median  {:<60}  44.3 us per byte, 0.0670 cores  (ratio to the first: 0.45)", "new")
        );
    }
}
