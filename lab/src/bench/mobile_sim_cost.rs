//! `lab bench mobile-sim-cost` (scripts/bench/mobile-sim-cost.sh): mobile-sim's own CPU (issue
//! #17, item 3). The load generator must not be what starves the system under test. One
//! aggregator (SQLite), one host gateway (2 TLS trunks) and one mobile-sim process (`-W 1`)
//! holding `--phones` phones on the gateway, in two phases:
//!
//! 1. **idle**: the phones hold their connections and send nothing (`--min-interval 1h`);
//!    mobile-sim's CPU (utime + stime from /proc/PID/stat) over `--windows` windows of
//!    `--window-s`, per held phone;
//! 2. **traffic**: the same number of phones send `--bytes-per-s` bytes a second in all (each
//!    phone a byte every phones / bytes-per-s seconds on average, uniform in 0.5x to 1.5x);
//!    mobile-sim's CPU over the same windows divided by the bytes the gateway counted in them
//!    (the gateway's once-a-second counter line, the CPU read as each line appears:
//!    [`cost::counter_windows`]), and per held phone.
//!
//! After each phase, what mobile-sim's own report says (its `cpu` object, when the build
//! reports one), for comparison with the figures measured from outside. With `--perf`, `perf
//! record -g` of mobile-sim for 15 s after the traffic windows; the report is kept in the run's
//! folder, which is then kept. A phase whose mobile-sim reports a failure prints why and none of
//! its figures, and the run exits 1.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::process::Command;

use crate::bench::cost::{
    self, counter_windows, joined, live, thousands, until_held, until_released, us_per_byte, verdict,
    CounterWindow, DRAIN, FILES_SPARE, IDLE_INTERVAL_MS, MAX_PHONES, SCRIPT_RAMP_RATE, SETTLE_EMPTY,
    SETTLE_HELD, SIM_MARGIN,
};
use crate::bench::files_for;
use crate::children::{self, Proc};
use crate::cli::Server;
use crate::compare::{self, median, serve, Served, Setup};
use crate::procfs;
use crate::report::SimReport;

/// The longest the phones may take to be all held.
const HELD_WAIT: Duration = Duration::from_secs(90);
/// The idle phones' run: this long to connect, then the windows, then this long after them (so
/// that mobile-sim's own window, from all held to its end, covers the measured one).
const IDLE_RAMP: Duration = Duration::from_secs(20);
const IDLE_TAIL: Duration = Duration::from_secs(15);
/// After the idle phones ended, the longest the gateway may take to see them all closed, then a
/// pause before the traffic phase.
const RELEASE_WAIT: Duration = Duration::from_secs(30);
const RELEASE_PAUSE: Duration = Duration::from_secs(3);
/// The traffic phase waits, after all its phones are held, for the ramp to pass and every phone
/// to be past its first pause: this long plus the longest pause.
const TRAFFIC_SETTLE: Duration = Duration::from_secs(15);
/// The traffic phase's run goes on this long after the windows (and the profile).
const TRAFFIC_TAIL: Duration = Duration::from_secs(10);
/// A phone's mean pause between bytes, ms: at least 2 (its shortest is half of it), at most 10
/// minutes (the traffic phase waits for the longest pause before measuring).
const MIN_MEAN_PAUSE_MS: u64 = 2;
const MAX_MEAN_PAUSE_MS: u64 = 600_000;
/// The profile: how long, at what frequency, and how many lines of perf's report are kept; the
/// traffic phase's run is longer by the profile plus a spare.
const PERF_SECONDS: u64 = 15;
const PERF_HZ: u32 = 999;
const PERF_SPARE: Duration = Duration::from_secs(5);
const PERF_REPORT_LINES: usize = 150;
/// perf's report lists the functions with at least this share of the samples, per cent.
const PERF_PERCENT_LIMIT: &str = "1";

#[derive(Debug, clap::Args)]
pub struct MobileSimCostArgs {
    /// Phones the one mobile-sim process holds on the one gateway, 100 to 19,500 (each process
    /// under 20,000 open files).
    #[arg(long, default_value_t = 18_000, value_name = "N")]
    pub phones: u64,

    /// Bytes a second all the phones send together in the traffic phase (each phone a byte every
    /// phones / this seconds on average, uniform in 0.5x to 1.5x).
    #[arg(long, default_value_t = 1_500, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub bytes_per_s: u64,

    /// Seconds per CPU window.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub window_s: u64,

    /// CPU windows per phase (medians are printed).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub windows: u32,

    /// The mobile-sim binary to measure (another build, to measure before and after with the
    /// same aggregator and gateway). Default: the one next to the lab.
    #[arg(long, value_name = "PATH")]
    pub msim_bin: Option<PathBuf>,

    /// After the traffic windows, `perf record -g` mobile-sim for 15 s; perf's report (perf.txt)
    /// is kept in the run's folder, which is then kept.
    #[arg(long)]
    pub perf: bool,

    /// Keep the run's folder (logs, mobile-sim's reports) even when the run went well.
    #[arg(long)]
    pub keep: bool,

    /// The folder of the aggregator, gateway and mobile-sim binaries. Default: the lab's own.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Extra mobile-sim flags, after `--` (e.g. `-- --threads 2`).
    #[arg(last = true, value_name = "MOBILE_SIM_FLAGS")]
    pub msim_args: Vec<String>,
}

impl MobileSimCostArgs {
    /// The traffic phase's mean pause between a phone's bytes, ms.
    fn mean_pause_ms(&self) -> u64 {
        self.phones * 1000 / self.bytes_per_s.max(1)
    }

    /// The traffic phase's pauses between a phone's bytes, ms: shortest, longest.
    fn pauses_ms(&self) -> (u64, u64) {
        let mean = self.mean_pause_ms();
        (mean / 2, mean * 3 / 2)
    }
}

/// Runs `lab bench mobile-sim-cost`: Ok(true) when both phases went well, Ok(false) when
/// mobile-sim reported a failure (it printed why), an error when it could not measure.
pub async fn run(args: MobileSimCostArgs) -> anyhow::Result<bool> {
    cost::check_sizes("--phones", args.phones, args.window_s, args.windows)?;
    let mean_ms = args.mean_pause_ms();
    if !(MIN_MEAN_PAUSE_MS..=MAX_MEAN_PAUSE_MS).contains(&mean_ms) {
        bail!(
            "--phones {} at --bytes-per-s {} is a byte every {mean_ms} ms per phone: it must be \
             {MIN_MEAN_PAUSE_MS}..{MAX_MEAN_PAUSE_MS}",
            args.phones,
            args.bytes_per_s
        );
    }
    files_for(args.phones + FILES_SPARE, &format!("{} phones in one process", args.phones))?;
    if args.perf {
        children::output(perf(&["--version"])).await.context("--perf needs perf (linux-perf)")?;
    }
    let cx = cost::setup(
        "mobile-sim-cost",
        args.bin_dir.clone(),
        None,
        args.msim_bin.as_deref(),
        SCRIPT_RAMP_RATE,
    )?;
    let about = format!("mobile-sim: {} {}", cx.sim_bin.display(), args.msim_args.join(" "));
    cost::framed(&cx.out, args.keep || args.perf, about.trim_end(), measure(&args, &cx)).await
}

/// Starts the aggregator and the gateway, runs both phases, and stops them whether or not that
/// went well.
async fn measure(args: &MobileSimCostArgs, cx: &Setup) -> anyhow::Result<bool> {
    let mut gateway = serve(Server::Gateway, cx, &cx.out, MAX_PHONES).await?;
    let result = phases(args, cx, &mut gateway).await;
    gateway.stop().await;
    result
}

async fn phases(args: &MobileSimCostArgs, cx: &Setup, gateway: &mut Served) -> anyhow::Result<bool> {
    let log = gateway.log().context("the gateway's log")?.to_owned();
    tokio::time::sleep(SETTLE_EMPTY).await;
    let window = Duration::from_secs(args.window_s);
    let span = window * args.windows;

    // --- 1: idle ---------------------------------------------------------------------------------
    let hold = IDLE_RAMP + span + IDLE_TAIL;
    let idle = sim_command(args, cx, gateway, "idle", (IDLE_INTERVAL_MS, IDLE_INTERVAL_MS), hold);
    let idle_json = cx.out.join("idle.json");
    let mut sim = Proc::spawn("mobile-sim-idle", idle, 0, &cx.out, Some(&idle_json))?;
    until_held(gateway, &log, &mut sim, args.phones, HELD_WAIT, "idle phones").await?;
    tokio::time::sleep(SETTLE_HELD).await;
    println!("idle: {} phones held, nothing sent", args.phones);
    let measured = measure_sim(args, &sim, gateway, &log).await?;
    let Some(report) = verdict(&mut sim, &idle_json, hold + SIM_MARGIN, "mobile-sim (idle)").await? else {
        return Ok(false);
    };
    print!("{}{}", measured.text(), self_report(&report));
    until_released(gateway, &log, RELEASE_WAIT).await?;
    tokio::time::sleep(RELEASE_PAUSE).await;

    // --- 2: traffic ------------------------------------------------------------------------------
    let (min_ms, max_ms) = args.pauses_ms();
    let settle = TRAFFIC_SETTLE + Duration::from_secs(max_ms / 1000);
    let profile = if args.perf { Duration::from_secs(PERF_SECONDS) + PERF_SPARE } else { Duration::ZERO };
    let run = settle + span + TRAFFIC_TAIL + profile;
    let mut busy = sim_command(args, cx, gateway, "busy", (min_ms, max_ms), run);
    busy.arg("--drain-timeout").arg(format!("{}s", DRAIN.as_secs()));
    let busy_json = cx.out.join("busy.json");
    let mut sim = Proc::spawn("mobile-sim-busy", busy, 0, &cx.out, Some(&busy_json))?;
    until_held(gateway, &log, &mut sim, args.phones, HELD_WAIT, "phones").await?;
    tokio::time::sleep(settle).await;
    println!(
        "traffic: {} phones, one byte each every {min_ms}..{max_ms} ms ({} bytes/s in all)",
        args.phones, args.bytes_per_s
    );
    let measured = measure_sim(args, &sim, gateway, &log).await?;
    let perf_report = if args.perf {
        Some(profile_sim(sim.pid().context("mobile-sim's pid")?, &cx.out).await?)
    } else {
        None
    };
    let limit = run + DRAIN + SIM_MARGIN;
    let what = "mobile-sim (traffic)";
    let Some(report) = verdict(&mut sim, &busy_json, limit, what).await? else { return Ok(false) };
    print!("{}", measured.text());
    if let Some(path) = perf_report {
        println!("  perf: {}", path.display());
    }
    print!("{}", self_report(&report));
    Ok(true)
}

/// mobile-sim's phones on the gateway as the script ran them: one process (`-W 1`), pausing
/// `pauses_ms` between bytes for `run`, with the caller's extra flags last.
fn sim_command(
    args: &MobileSimCostArgs,
    cx: &Setup,
    gateway: &Served,
    name: &str,
    (min_ms, max_ms): (u64, u64),
    run: Duration,
) -> Command {
    let mut c = compare::phones(cx, &[gateway], name, args.phones, min_ms, max_ms, run.as_secs());
    c.args(["-W", "1"]).args(&args.msim_args);
    c
}

/// mobile-sim's CPU over the windows; an error when phones left the gateway meanwhile.
async fn measure_sim(
    args: &MobileSimCostArgs,
    sim: &Proc,
    gateway: &mut Served,
    log: &Path,
) -> anyhow::Result<SimWindows> {
    let pid = sim.pid().context("mobile-sim's pid")?;
    let windows = counter_windows(pid, log, Duration::from_secs(args.window_s), args.windows).await?;
    gateway.check_alive()?;
    let held = live(log)?;
    if held < args.phones {
        bail!("phones left during the measurement: the gateway holds {held} of {}", args.phones);
    }
    Ok(SimWindows { phones: args.phones, windows, ticks_per_second: procfs::ticks_per_second() })
}

/// `perf record -g` of process `pid` for [`PERF_SECONDS`], and perf's report of it, its empty
/// lines dropped, the first [`PERF_REPORT_LINES`] kept in `dir`/perf.txt (perf.data beside it).
async fn profile_sim(pid: u32, dir: &Path) -> anyhow::Result<PathBuf> {
    let data = dir.join("perf.data");
    let data_arg = data.to_string_lossy();
    let (hz, pid, seconds) = (PERF_HZ.to_string(), pid.to_string(), PERF_SECONDS.to_string());
    let record: &[&str] = &["record", "-F", &hz, "-g", "-p", &pid, "-o", &data_arg, "--", "sleep", &seconds];
    children::output(perf(record)).await.context("perf record of mobile-sim")?;
    let report: &[&str] =
        &["report", "-i", &data_arg, "--no-children", "--stdio", "--percent-limit", PERF_PERCENT_LIMIT];
    // The profile is in perf.data either way: a report that fails says so in perf.txt.
    let text = children::output(perf(report)).await.unwrap_or_else(|e| format!("perf report failed: {e:#}"));
    let kept: Vec<&str> = text.lines().filter(|l| !l.is_empty()).take(PERF_REPORT_LINES).collect();
    let path = dir.join("perf.txt");
    std::fs::write(&path, kept.join("\n") + "\n").with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// perf with `args`, killed if the lab stops first.
fn perf(args: &[&str]) -> Command {
    let mut c = Command::new("perf");
    c.args(args).kill_on_drop(true);
    c
}

/// mobile-sim's CPU over a phase's windows.
#[derive(Debug, Clone)]
struct SimWindows {
    phones: u64,
    windows: Vec<CounterWindow>,
    ticks_per_second: f64,
}

impl SimWindows {
    fn text(&self) -> String {
        use std::fmt::Write as _;
        let n = self.phones as f64;
        let w = &self.windows;
        let cores: Vec<f64> = w.iter().map(|w| w.cpu_seconds / w.wall_seconds).collect();
        let us_phone: Vec<f64> = cores.iter().map(|c| c * 1e6 / n).collect();
        let rates: Vec<f64> = w.iter().map(|w| w.bytes as f64 / w.wall_seconds).collect();
        let us_byte: Vec<f64> = w.iter().filter_map(|w| us_per_byte(w.cpu_seconds, w.bytes)).collect();
        let cpu: f64 = w.iter().map(|w| w.cpu_seconds).sum();
        let wall: f64 = w.iter().map(|w| w.wall_seconds).sum();
        let bytes: u64 = w.iter().map(|w| w.bytes).sum();
        let med = |v: &[f64]| median(v.to_vec()).unwrap_or(0.0);
        let mut s = String::new();
        let _ = writeln!(s, "  bytes/s at the gateway: median {}", thousands(med(&rates)));
        let _ = writeln!(
            s,
            "  mobile-sim cores: median {:.4}, {:.4} over {wall:.0} s (windows: {})",
            med(&cores),
            cpu / wall,
            joined(&cores, 4)
        );
        let _ = writeln!(
            s,
            "  per held phone: median {:.3} us of CPU per second, {:.3} over all",
            med(&us_phone),
            cpu * 1e6 / wall / n
        );
        // Some window counted bytes exactly when all of them together did.
        if let Some(all) = us_per_byte(cpu, bytes) {
            let _ = writeln!(
                s,
                "  per byte sent: median {:.2} us, {all:.2} over all (windows: {})",
                med(&us_byte),
                joined(&us_byte, 2)
            );
        }
        let _ = writeln!(
            s,
            "  (resolution: one clock tick in {wall:.0} s = {:.4} us per held phone per second)",
            1e6 / self.ticks_per_second / wall / n
        );
        s
    }
}

/// What mobile-sim's own report says: its phones and bytes, and its own CPU when it measured it.
fn self_report(r: &SimReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "  mobile-sim's report: {} phones, sent {}, unconfirmed {}, ok={}",
        r.devices,
        cli_env::group(r.bytes.sent),
        r.bytes.unconfirmed,
        r.ok
    );
    if let Some(c) = &r.cpu {
        let or_dash =
            |v: Option<f64>, decimals: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"));
        let _ = writeln!(
            s,
            "  its own CPU (report): {:.4} cores over {:.1} s, {} us per byte ({} bytes), {} us per held \
             phone per second; {:.2} s of CPU connecting",
            c.cores,
            c.window_seconds,
            or_dash(c.us_per_byte_sent, 2),
            cli_env::group(c.bytes_sent),
            or_dash(c.us_per_held_per_s, 3),
            c.connect_cpu_seconds
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{SimBytes, SimCpu};

    fn window(cpu_seconds: f64, bytes: u64) -> CounterWindow {
        CounterWindow { cpu_seconds, wall_seconds: 10.0, bytes }
    }

    #[test]
    fn the_traffic_figures() {
        let w = SimWindows {
            phones: 1_000,
            windows: vec![window(0.5, 15_000), window(0.7, 15_000), window(0.6, 15_000)],
            ticks_per_second: 100.0,
        };
        let t = w.text();
        assert!(t.contains("  bytes/s at the gateway: median 1,500\n"), "{t}");
        assert!(
            t.contains(
                "  mobile-sim cores: median 0.0600, 0.0600 over 30 s (windows: 0.0500, 0.0700, 0.0600)\n"
            ),
            "{t}"
        );
        assert!(t.contains("  per held phone: median 60.000 us of CPU per second, 60.000 over all\n"), "{t}");
        assert!(
            t.contains("  per byte sent: median 40.00 us, 40.00 over all (windows: 33.33, 46.67, 40.00)\n"),
            "{t}"
        );
        // One tick (10 ms) in 30 s over 1,000 phones: 1e4 us / 30 / 1,000.
        assert!(
            t.contains("(resolution: one clock tick in 30 s = 0.3333 us per held phone per second)"),
            "{t}"
        );
    }

    #[test]
    fn idle_figures_have_no_per_byte_line() {
        let w = SimWindows {
            phones: 100,
            windows: vec![window(0.01, 0), window(0.0, 0)],
            ticks_per_second: 100.0,
        };
        let t = w.text();
        assert!(!t.contains("per byte sent"), "{t}");
        assert!(t.contains("bytes/s at the gateway: median 0\n"), "{t}");
        assert!(t.contains("mobile-sim cores: median 0.0005, 0.0005 over 20 s"), "{t}");
    }

    #[test]
    fn pauses_from_phones_and_rate() {
        let mut a = MobileSimCostArgs {
            phones: 18_000,
            bytes_per_s: 1_500,
            window_s: 10,
            windows: 5,
            msim_bin: None,
            perf: false,
            keep: false,
            bin_dir: None,
            msim_args: Vec::new(),
        };
        assert_eq!(a.pauses_ms(), (6_000, 18_000));
        a.bytes_per_s = 7;
        assert_eq!(a.pauses_ms(), (1_285_714, 3_857_142));
    }

    #[test]
    fn mobile_sims_own_figures() {
        let mut r = SimReport {
            ok: true,
            devices: 18_000,
            bytes: SimBytes { sent: 123_456, durable: 123_456, unconfirmed: 0 },
            ..SimReport::default()
        };
        assert_eq!(
            self_report(&r),
            "  mobile-sim's report: 18000 phones, sent 123,456, unconfirmed 0, ok=true\n"
        );
        r.cpu = Some(SimCpu {
            window_seconds: 84.04,
            cpu_seconds: 4.4,
            cores: 0.05236,
            bytes_sent: 103_000,
            us_per_byte_sent: Some(42.514),
            us_per_held_per_s: None,
            connect_cpu_seconds: 1.5,
        });
        let t = self_report(&r);
        assert!(
            t.ends_with(
                "  its own CPU (report): 0.0524 cores over 84.0 s, 42.51 us per byte (103,000 bytes), - us per held \
                 phone per second; 1.50 s of CPU connecting\n"
            ),
            "{t}"
        );
    }
}
