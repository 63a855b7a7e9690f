//! `lab gateway-cost` (scripts/bench/gateway-cost.sh): the host gateway's cost per phone, all in
//! one run on one machine (issue #17, item 2):
//!
//! 1. **memory per idle phone**: one gateway's RSS before, and while it holds `--idle` idle
//!    phones (mobile-sim, nothing sent during the hold);
//! 2. **CPU per idle phone**: the gateway's CPU (utime + stime from /proc/PID/stat) while it
//!    holds no phone, then while it holds the idle phones, medians over `--windows` windows of
//!    `--window-s` and the mean over the whole span; the difference per idle phone and per
//!    100,000 idle phones, with the resolution one clock tick gives;
//! 3. **CPU per phone byte**, against a yardstick measured in the same run: `--busy` phones
//!    spread round-robin over the gateway and a minimal Node.js `ws` server
//!    (scripts/bench/peers/ws-count-server.js, the one `lab compare` runs), each phone sending a
//!    byte every `--interval-ms` on average (uniform in 0.5x to 1.5x). Each server's CPU over
//!    windows aligned to its own once-a-second counter line (`bytes=N`, the CPU read as each
//!    line appears), divided by the bytes it counted in them; the medians and their ratio.
//!
//! The servers are started as `lab compare` starts them ([`compare::serve`]): the gateway's
//! trunks go to an aggregator on SQLite whose cost is not counted, and phones prove their device
//! with a token per phone, as in a real deployment. The machine is shared: CPU time per unit is
//! what is compared, never wall time; the load average is printed at the start and the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use cli_env::Interrupts;

use crate::bench::{files_for, leave, usage, work_dir};
use crate::children::{self, Proc};
use crate::cli::Server;
use crate::compare::{self, median, phones, serve, Served, Setup};
use crate::hold::{binary, load_average};
use crate::procfs;

/// One gateway process holds every idle phone: under the 20,000 open files a process may have,
/// and enough of them that the per-phone figures rise above the noise.
const MIN_IDLE: u64 = 100;
const MAX_IDLE: u64 = 19_500;
/// Phones beyond those asked for in the gateway's `--capacity`.
const CAPACITY_SPARE: u64 = 100;
/// Open files the gateway and the Node.js server need beyond their phones.
const FILES_SPARE: u64 = 500;
/// The servers' counter lines: once a second (the gateway's `--status-interval-s`; the Node.js
/// server's is fixed), and the longest to wait for the next one before the server is deemed
/// stuck.
const STATUS_EVERY_S: u64 = 1;
const COUNTER_WAIT: Duration = Duration::from_secs(5);
const COUNTER_POLL: Duration = Duration::from_millis(10);
/// The counter the CPU per byte is divided by, and the gateway's count of phones it holds.
const BYTES_KEY: &str = "bytes";
const LIVE_KEY: &str = "live";
/// A busy window is `--window-s` less this (reading the next counter line at each end adds up to
/// a second each), and never shorter than [`MIN_BUSY_SLEEP`].
const BUSY_WINDOW_SLACK: Duration = Duration::from_millis(1500);
const MIN_BUSY_SLEEP: Duration = Duration::from_millis(500);
/// Once the gateway's trunks are up, before its memory and idle CPU are read.
const SETTLE_EMPTY: Duration = Duration::from_secs(2);
/// The longest the idle phones may take to be all held, and how often that is asked.
const HELD_WAIT: Duration = Duration::from_secs(60);
const HELD_POLL: Duration = Duration::from_millis(100);
/// Once all are held, before their memory is read (the last handshakes' buffers settle).
const SETTLE_HELD: Duration = Duration::from_secs(5);
/// The idle phones' pause between bytes: longer than they are held (they are stopped once
/// measured), so nothing is sent.
const IDLE_INTERVAL_MS: u64 = 3_600_000;
const IDLE_DURATION_S: u64 = 3_600;
/// After the idle phones stop, before the busy phones start (their connections close).
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// The busy phones: this long to connect and start sending before the first window, and this
/// long after the last; then up to [`DRAIN`] for every byte to be confirmed.
const BUSY_WARMUP: Duration = Duration::from_secs(20);
const BUSY_TAIL: Duration = Duration::from_secs(10);
pub(crate) const DRAIN: Duration = Duration::from_secs(30);
/// The longest a mobile-sim run may outlive its duration and drain (its report, its exit).
pub(crate) const SIM_MARGIN: Duration = Duration::from_secs(120);
/// The smallest and largest window the figures are worth taking over, and most windows.
const MIN_WINDOW_S: u64 = 2;
const MAX_WINDOW_S: u64 = 600;
const MAX_WINDOWS: u32 = 100;
/// The per-idle-phone CPU is also given per this many idle phones.
const PHONES_PER_FIGURE: f64 = 100_000.0;

#[derive(Debug, clap::Args)]
pub struct GatewayCostArgs {
    /// Idle phones the gateway holds (memory and CPU per idle phone), 100 to 19,500: one
    /// gateway process holds them all.
    #[arg(long, default_value_t = 19_000, value_name = "N")]
    pub idle: u64,

    /// Busy phones, spread round-robin over the gateway and the Node.js `ws` server.
    #[arg(long, default_value_t = 3_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub busy: u64,

    /// Each busy phone's mean pause between bytes, ms (uniform in 0.5x to 1.5x).
    #[arg(long, default_value_t = 200, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(2..))]
    pub interval_ms: u64,

    /// Seconds per CPU window.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub window_s: u64,

    /// CPU windows per figure (medians are printed).
    #[arg(long, default_value_t = 6, value_name = "N")]
    pub windows: u32,

    /// The gateway binary to measure (another build, to measure before and after). Default:
    /// the one next to the lab.
    #[arg(long, value_name = "PATH")]
    pub gateway_bin: Option<PathBuf>,

    /// Keep the run's folder (logs, mobile-sim's reports) even when the run went well.
    #[arg(long)]
    pub keep: bool,

    /// Where npm installs ws (once).
    #[arg(long, default_value_os_t = crate::cli::default_node_dir(), value_name = "DIR")]
    pub node_dir: PathBuf,

    /// The folder of the aggregator, gateway and mobile-sim binaries. Default: the lab's own.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// Runs `lab gateway-cost`: Ok(true) when it measured a run that went well, Ok(false) when
/// mobile-sim failed (it printed why), an error when it could not measure.
pub async fn run(args: GatewayCostArgs) -> anyhow::Result<bool> {
    if !(MIN_IDLE..=MAX_IDLE).contains(&args.idle) {
        bail!("--idle must be {MIN_IDLE}..{MAX_IDLE}, got {}", args.idle);
    }
    if !(MIN_WINDOW_S..=MAX_WINDOW_S).contains(&args.window_s) {
        bail!("--window-s must be {MIN_WINDOW_S}..{MAX_WINDOW_S}, got {}", args.window_s);
    }
    if !(1..=MAX_WINDOWS).contains(&args.windows) {
        bail!("--windows must be 1..{MAX_WINDOWS}, got {}", args.windows);
    }
    files_for(
        args.idle.max(args.busy) + FILES_SPARE,
        &format!("{} phones in one process", args.idle.max(args.busy)),
    )?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("the lab's folder")?.to_owned(),
    };
    let gateway_bin = match &args.gateway_bin {
        Some(path) if path.is_file() => path.clone(),
        Some(path) => bail!("--gateway-bin {} is not a file", path.display()),
        None => binary(&bin_dir, "gateway")?,
    };
    let node_modules = compare::node_packages(&args.node_dir, &[Server::NodeWs]).await?;
    let work = work_dir("gateway-cost")?;
    let cx = Setup {
        out: work.clone(),
        aggregator_bin: binary(&bin_dir, "aggregator")?,
        gateway_bin,
        sim_bin: binary(&bin_dir, "mobile-sim")?,
        node_modules,
        phone_engine: "auto".to_owned(),
        gateway_status_s: Some(STATUS_EVERY_S),
        aggregator_tls: false,
    };
    println!("load average at start: {}  ({} cores)", load_average(), cores());
    println!("gateway: {}", cx.gateway_bin.display());
    let mut signals = Interrupts::catch()?;
    let result = tokio::select! {
        r = measure(&args, &cx) => r,
        signal = signals.recv() => Err(anyhow!("{signal}: the measurement was stopped")),
    };
    println!("load average at end: {}", load_average());
    if args.keep {
        eprintln!("kept {}", work.display());
    } else {
        leave(&work, &result);
    }
    result
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts the gateway, measures, and stops whatever it started whether or not that went well.
async fn measure(args: &GatewayCostArgs, cx: &Setup) -> anyhow::Result<bool> {
    let mut gateway = serve(Server::Gateway, cx, &cx.out, capacity_of(args)).await?;
    let mut node = None;
    let result = measure_with(args, cx, &mut gateway, &mut node).await;
    if let Some(node) = node {
        node.stop().await;
    }
    gateway.stop().await;
    result
}

async fn measure_with(
    args: &GatewayCostArgs,
    cx: &Setup,
    gateway: &mut Served,
    node: &mut Option<Served>,
) -> anyhow::Result<bool> {
    let gw_log = gateway.log().context("the gateway's log")?.to_owned();
    tokio::time::sleep(SETTLE_EMPTY).await;
    let window = Duration::from_secs(args.window_s);

    // --- 1 and 2: idle phones ---------------------------------------------------------------------
    let rss_before = usage("the gateway", gateway.pid)?.rss_bytes;
    let empty = idle_cores(gateway.pid, window, args.windows).await?;
    let (sim, _) = hold_idle(cx, gateway, args.idle).await?;
    tokio::time::sleep(SETTLE_HELD).await;
    let rss_held = usage("the gateway", gateway.pid)?.rss_bytes;
    let full = idle_cores(gateway.pid, window, args.windows).await?;
    let still = last_counter(&read_log(&gw_log)?, LIVE_KEY).1.unwrap_or(0);
    if still < args.idle {
        bail!("idle phones left during the measurement ({still} of {})", args.idle);
    }
    release_idle(cx, sim, args.idle).await?;
    let span_s = args.window_s * u64::from(args.windows);
    let figures = IdleFigures {
        phones: args.idle,
        rss_before_bytes: rss_before,
        rss_held_bytes: rss_held,
        empty,
        full,
        span_s,
        ticks_per_second: procfs::ticks_per_second(),
    };
    print!("{}", figures.text());
    tokio::time::sleep(CLOSE_WAIT).await;

    // --- 3: CPU per phone byte, the gateway and the Node.js ws server side by side ---------------
    let node = node.insert(serve(Server::NodeWs, cx, &cx.out, capacity_of(args)).await?);
    let node_log = node.log().context("the Node.js server's log")?.to_owned();
    println!("yardstick: node {}, ws {}", node_version().await?, ws_version(&cx.node_modules)?);
    let run_s = (BUSY_WARMUP + BUSY_TAIL).as_secs() + span_s;
    let (min_ms, max_ms) = (args.interval_ms / 2, args.interval_ms * 3 / 2);
    let mut busy = phones(cx, &[&*gateway, &*node], "busy", args.busy, min_ms, max_ms, run_s);
    busy.arg("--drain-timeout").arg(format!("{}s", DRAIN.as_secs()));
    let mut sim = Proc::spawn("mobile-sim-busy", busy, 0, &cx.out, Some(&cx.out.join("busy.json")))?;
    tokio::time::sleep(BUSY_WARMUP).await;
    let (gw_windows, node_windows) = tokio::join!(
        per_byte(gateway.pid, &gw_log, window, args.windows),
        per_byte(node.pid, &node_log, window, args.windows)
    );
    let mut medians = Vec::new();
    for (name, windows) in [("gateway", gw_windows?), ("node", node_windows?)] {
        let us = median(windows.us.clone()).with_context(|| format!("{name}: no bytes counted"))?;
        let rate = median(windows.rates.clone()).unwrap_or(0.0);
        println!(
            "{name:<8} CPU per phone byte: median {us:7.2} us  (windows: {}; {} bytes/s)",
            joined(&windows.us, 2),
            thousands(rate)
        );
        medians.push(us);
    }
    println!("ratio gateway / node: {:.3}", medians[0] / medians[1]);
    let limit = Duration::from_secs(run_s).saturating_sub(BUSY_WARMUP) + DRAIN + SIM_MARGIN;
    let Some(status) = sim.wait(limit).await else { bail!("the busy phones did not end within {limit:?}") };
    let report = compare::sim_report(&cx.out.join("busy.json"));
    let ok = status.success() && report.as_ref().is_ok_and(|r| r.ok);
    if !ok {
        println!("FAILED: mobile-sim reported a failure (a phone lost, or bytes never confirmed) ({status})");
        println!("{}", sim.log_tail(20));
        return Ok(false);
    }
    let report = report?;
    println!(
        "mobile-sim: {} phones, bytes {}, ok={}",
        report.devices,
        serde_json::to_string(&report.bytes)?,
        report.ok
    );
    Ok(true)
}

/// Starts `n` idle phones (nothing sent while they are held) against the gateway, and waits
/// until its status lines (`live=N`, the gateway started with [`Setup::gateway_status_s`]) say
/// it holds them all: their mobile-sim, running, and the count the gateway last gave. An error
/// when the gateway or the phones end first, or not all are held within [`HELD_WAIT`].
pub(crate) async fn hold_idle(cx: &Setup, gateway: &mut Served, n: u64) -> anyhow::Result<(Proc, u64)> {
    let log = gateway.log().context("the gateway's log")?.to_owned();
    let mut sim = idle_phones(cx, gateway, n)?;
    let deadline = Instant::now() + HELD_WAIT;
    loop {
        gateway.check_alive()?;
        let held = last_counter(&read_log(&log)?, LIVE_KEY).1.unwrap_or(0);
        if held >= n {
            return Ok((sim, held));
        }
        if let Some(status) = sim.exited() {
            bail!(
                "the idle phones' mobile-sim ended ({status}) with {held} of {n} held: {}",
                sim.log_tail(10)
            );
        }
        if Instant::now() >= deadline {
            bail!("the gateway held only {held} of {n} idle phones after {HELD_WAIT:?}");
        }
        tokio::time::sleep(HELD_POLL).await;
    }
}

/// Starts `n` phones against `served` that send nothing while they are held (their report in
/// `idle.json` of the run's folder).
pub(crate) fn idle_phones(cx: &Setup, served: &Served, n: u64) -> anyhow::Result<Proc> {
    let idle = phones(cx, &[served], "idle", n, IDLE_INTERVAL_MS, IDLE_INTERVAL_MS, IDLE_DURATION_S);
    Proc::spawn("mobile-sim-idle", idle, 0, &cx.out, Some(&cx.out.join("idle.json")))
}

/// Stops the idle phones of [`idle_phones`]; an error unless all `n` had connected and none
/// dropped.
pub(crate) async fn release_idle(cx: &Setup, mut sim: Proc, n: u64) -> anyhow::Result<()> {
    sim.signal(libc::SIGINT);
    let limit = DRAIN + SIM_MARGIN;
    if sim.wait(limit).await.is_none() {
        bail!("the idle phones did not end within {limit:?}");
    }
    let report = compare::sim_report(&cx.out.join("idle.json"))?;
    if report.connections.established < n || report.connections.dropped > 0 {
        bail!("idle phones: {:?}", report.connections);
    }
    Ok(())
}

/// The phones the gateway and the Node.js server may hold at once.
fn capacity_of(args: &GatewayCostArgs) -> u64 {
    args.idle.max(args.busy) + CAPACITY_SPARE
}

async fn node_version() -> anyhow::Result<String> {
    let mut c = tokio::process::Command::new("node");
    c.arg("--version");
    Ok(children::output(c).await.context("node --version")?.trim().to_owned())
}

/// The installed `ws` package's version, from its package.json.
fn ws_version(node_modules: &Path) -> anyhow::Result<String> {
    let path = node_modules.join("ws/package.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    json.get("version")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .context("ws's package.json has no version")
}

fn read_log(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// How many `KEY=N` fields `text` holds, and the last one's N ([`children::log_counters`]).
fn last_counter(text: &str, key: &str) -> (usize, Option<u64>) {
    let all = children::log_counters(text, key);
    (all.len(), all.last().copied())
}

/// One process's CPU seconds as the next `bytes=` line appears in its log, and that line's count.
async fn aligned(pid: u32, log: &Path) -> anyhow::Result<(f64, u64)> {
    let before = last_counter(&read_log(log)?, BYTES_KEY).0;
    let deadline = Instant::now() + COUNTER_WAIT;
    loop {
        let (count, last) = last_counter(&read_log(log)?, BYTES_KEY);
        if let (true, Some(bytes)) = (count > before, last) {
            return Ok((usage("the server", pid)?.cpu_seconds, bytes));
        }
        if Instant::now() >= deadline {
            bail!("no new counter line in {} for {COUNTER_WAIT:?}", log.display());
        }
        tokio::time::sleep(COUNTER_POLL).await;
    }
}

/// A server's µs of CPU per byte and bytes per second, one of each per window that counted bytes.
#[derive(Debug, Default)]
struct ByteWindows {
    us: Vec<f64>,
    rates: Vec<f64>,
}

async fn per_byte(pid: u32, log: &Path, window: Duration, windows: u32) -> anyhow::Result<ByteWindows> {
    let mut out = ByteWindows::default();
    let sleep = window.saturating_sub(BUSY_WINDOW_SLACK).max(MIN_BUSY_SLEEP);
    for _ in 0..windows {
        let (cpu0, bytes0) = aligned(pid, log).await?;
        let started = Instant::now();
        tokio::time::sleep(sleep).await;
        let (cpu1, bytes1) = aligned(pid, log).await?;
        if let Some(us) = us_per_byte(cpu1 - cpu0, bytes1.saturating_sub(bytes0)) {
            out.us.push(us);
            out.rates.push(bytes1.saturating_sub(bytes0) as f64 / started.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}

/// µs of CPU per byte; `None` when no byte was counted (never a zero figure).
fn us_per_byte(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_seconds * 1e6 / bytes as f64)
}

/// A process's cores in each window, and over all of them (finer: a window sees whole clock
/// ticks).
#[derive(Debug, Clone, PartialEq)]
struct IdleCores {
    windows: Vec<f64>,
    whole: f64,
}

impl IdleCores {
    fn median(&self) -> f64 {
        median(self.windows.clone()).unwrap_or(0.0)
    }
}

async fn idle_cores(pid: u32, window: Duration, windows: u32) -> anyhow::Result<IdleCores> {
    let cpu = || usage("the gateway", pid).map(|u| u.cpu_seconds);
    let (first_cpu, first) = (cpu()?, Instant::now());
    let mut out = Vec::new();
    for _ in 0..windows {
        let (c0, t0) = (cpu()?, Instant::now());
        tokio::time::sleep(window).await;
        out.push((cpu()? - c0) / t0.elapsed().as_secs_f64());
    }
    Ok(IdleCores { windows: out, whole: (cpu()? - first_cpu) / first.elapsed().as_secs_f64() })
}

/// What the idle phones cost the gateway.
#[derive(Debug, Clone)]
struct IdleFigures {
    phones: u64,
    rss_before_bytes: u64,
    rss_held_bytes: u64,
    /// Holding none, and holding the phones.
    empty: IdleCores,
    full: IdleCores,
    /// Seconds of all windows together.
    span_s: u64,
    ticks_per_second: f64,
}

impl IdleFigures {
    /// Resident bytes per idle phone (negative when the gateway shrank).
    fn rss_per_phone(&self) -> f64 {
        (self.rss_held_bytes as f64 - self.rss_before_bytes as f64) / self.phones as f64
    }

    /// µs of CPU per second per idle phone, and cores per [`PHONES_PER_FIGURE`] idle phones,
    /// from a difference of cores.
    fn per_phone(&self, cores: f64) -> (f64, f64) {
        let per = cores / self.phones as f64;
        (per * 1e6, per * PHONES_PER_FIGURE)
    }

    /// One clock tick over the whole span, in cores per [`PHONES_PER_FIGURE`] idle phones: the
    /// finest difference the mean can see.
    fn resolution(&self) -> f64 {
        1.0 / self.ticks_per_second / self.span_s as f64 / self.phones as f64 * PHONES_PER_FIGURE
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let (n, span) = (self.phones, self.span_s);
        let mut s = String::new();
        let _ = writeln!(s, "idle phones held: {n}");
        let _ = writeln!(
            s,
            "  RSS {} KiB -> {} KiB: {} B per idle phone",
            thousands((self.rss_before_bytes / 1024) as f64),
            thousands((self.rss_held_bytes / 1024) as f64),
            thousands(self.rss_per_phone())
        );
        for (what, c) in [("none".to_owned(), &self.empty), (n.to_string(), &self.full)] {
            let _ = writeln!(
                s,
                "  CPU holding {what}: median {:.5} cores, {:.5} over {span} s (windows: {})",
                c.median(),
                c.whole,
                joined(&c.windows, 4)
            );
        }
        for (what, d) in [
            ("medians".to_owned(), self.full.median() - self.empty.median()),
            (format!("all {span} s"), self.full.whole - self.empty.whole),
        ] {
            let (us, per) = self.per_phone(d);
            let _ = writeln!(
                s,
                "  per idle phone ({what}): {us:.4} us of CPU per second; per 100,000 idle phones: {per:.5} cores"
            );
        }
        let _ = writeln!(
            s,
            "  (resolution: one clock tick in {span} s = {:.5} cores per 100,000 idle phones)",
            self.resolution()
        );
        s
    }
}

/// `values` with `decimals` each, comma-separated.
fn joined(values: &[f64], decimals: usize) -> String {
    values.iter().map(|v| format!("{v:.decimals$}")).collect::<Vec<_>>().join(", ")
}

/// `value` rounded to a whole number, with commas between thousands (12,345; -1,500).
pub(crate) fn thousands(value: f64) -> String {
    let rounded = value.round();
    let sign = if rounded < 0.0 { "-" } else { "" };
    // `as` saturates: a figure beyond u64 (none is) prints as u64::MAX instead of panicking.
    format!("{sign}{}", cli_env::group(rounded.abs() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_counter_of_a_log() {
        let log = "listening 4000\n\
                   2026 INFO status live=0 capacity=19600 bytes=0 links_up=2\n\
                   bytes=17 live=3\n\
                   2026 INFO status live=3 trunk_bytes=999 bytes=42 links=[Up, Up]\n\
                   a half-written line bytes=";
        assert_eq!(last_counter(log, "bytes"), (3, Some(42)));
        assert_eq!(last_counter(log, "live"), (3, Some(3)));
        assert_eq!(last_counter("", "bytes"), (0, None));
        assert_eq!(last_counter("bytes=12, live=1", "bytes"), (1, Some(12)));
    }

    #[test]
    fn per_byte_is_never_zero_for_no_bytes() {
        assert_eq!(us_per_byte(0.5, 0), None);
        assert_eq!(us_per_byte(0.02, 1_000), Some(20.0));
    }

    fn figures() -> IdleFigures {
        IdleFigures {
            phones: 1_000,
            rss_before_bytes: 10 << 20,
            rss_held_bytes: (10 << 20) + 1_000 * 3_000,
            empty: IdleCores { windows: vec![0.0, 0.002, 0.001], whole: 0.001 },
            full: IdleCores { windows: vec![0.011, 0.002, 0.021], whole: 0.012 },
            span_s: 30,
            ticks_per_second: 100.0,
        }
    }

    #[test]
    fn per_idle_phone_arithmetic() {
        let f = figures();
        assert_eq!(f.rss_per_phone(), 3_000.0);
        let (us, per) = f.per_phone(f.full.median() - f.empty.median());
        assert!((us - 10.0).abs() < 1e-9, "{us}");
        assert!((per - 1.0).abs() < 1e-12, "{per}");
        // One tick (10 ms) in 30 s over 1,000 phones, per 100,000.
        assert!((f.resolution() - 0.01 / 30.0 * 100.0).abs() < 1e-12);
        let shrank = IdleFigures { rss_held_bytes: (10 << 20) - 2_000, ..f };
        assert_eq!(shrank.rss_per_phone(), -2.0);
    }

    #[test]
    fn the_idle_text() {
        let t = figures().text();
        assert!(t.contains("RSS 10,240 KiB -> 13,169 KiB: 3,000 B per idle phone"), "{t}");
        assert!(t.contains("CPU holding none: median 0.00100 cores, 0.00100 over 30 s"), "{t}");
        assert!(t.contains("per idle phone (medians): 10.0000 us of CPU per second"), "{t}");
        assert!(t.contains("per idle phone (all 30 s): 11.0000 us"), "{t}");
    }

    #[test]
    fn numbers_with_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-1_500.0), "-1,500");
        assert_eq!(joined(&[1.0, 2.3456], 2), "1.00, 2.35");
    }
}
