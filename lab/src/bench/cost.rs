//! What the cost benches share (`lab gateway-cost`, `lab bench mobile-sim-cost`, `lab bench
//! gateway-tls-cost`): a run's frame (its binaries, its folder, the load average at both ends,
//! Ctrl-C), a host gateway holding phones as its status line tells, and CPU windows aligned to
//! a server's once-a-second counter line.
//!
//! The servers are started as `lab compare` starts them ([`compare::serve`]). The machine is
//! shared: CPU time per unit is what the benches compare, never wall time.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use cli_env::Interrupts;
use tokio::process::Command;

use crate::bench::{leave, usage, work_dir};
use crate::children::{self, Proc};
use crate::compare::{self, Served, Setup};
use crate::hold::{binary, load_average};
use crate::report::SimReport;
use crate::wait::{self, Want, Watch};

/// One gateway process holds every phone of a run, and one mobile-sim process plays them: under
/// the 20,000 open files a process may have, and enough of them that the per-phone figures rise
/// above the noise.
pub(crate) const MIN_PHONES: u64 = 100;
pub(crate) const MAX_PHONES: u64 = 19_500;
/// Open files a process needs beyond its phones (listeners, logs, the trunks, Node.js itself).
pub(crate) const FILES_SPARE: u64 = 500;
/// The smallest and largest CPU window the figures are worth taking over, and most windows.
const MIN_WINDOW_S: u64 = 2;
const MAX_WINDOW_S: u64 = 600;
const MAX_WINDOWS: u32 = 100;

/// The gateway's status line (`live=N ... bytes=N`): once a second (its `--status-interval-s`),
/// and the longest to wait for the next one before the server is deemed stuck.
const STATUS_EVERY_S: u64 = 1;
const COUNTER_WAIT: Duration = Duration::from_secs(5);
const COUNTER_POLL: Duration = Duration::from_millis(10);
/// The counter CPU per byte is divided by, and the gateway's count of the phones it holds.
const BYTES_KEY: &str = "bytes";
const LIVE_KEY: &str = "live";
/// A window sleeps its length less this (reading the next counter line at each end adds up to a
/// second each), and never less than [`MIN_WINDOW_SLEEP`].
const WINDOW_SLACK: Duration = Duration::from_millis(1500);
const MIN_WINDOW_SLEEP: Duration = Duration::from_millis(500);
/// How often the gateway's count of held phones is read while they connect or close.
const HELD_POLL: Duration = Duration::from_millis(100);
/// Once the gateway's trunks are up, before its memory and CPU are read with no phone (or the
/// first phones connect).
pub(crate) const SETTLE_EMPTY: Duration = Duration::from_secs(2);
/// Once all phones are held, before their memory or the first window is read: the last
/// handshakes' passing allocations returned.
pub(crate) const SETTLE_HELD: Duration = Duration::from_secs(5);
/// After a run of sending phones, how long mobile-sim waits for every byte to be confirmed (its
/// `--drain-timeout`), and the longest it may outlive its duration and drain (its report, its
/// exit).
pub(crate) const DRAIN: Duration = Duration::from_secs(30);
pub(crate) const SIM_MARGIN: Duration = Duration::from_secs(120);

/// Idle phones pause longer between bytes than they are held (they are stopped, or end, once
/// measured), so nothing is sent.
pub(crate) const IDLE_INTERVAL_MS: u64 = 3_600_000;
const IDLE_DURATION_S: u64 = 3_600;

/// Phones connected per second by the benches ported from scripts that asked mobile-sim for
/// this rate (their documented figures were taken with it).
pub(crate) const SCRIPT_RAMP_RATE: u32 = 2_000;

/// `--phones` (or `--idle`) within [`MIN_PHONES`]..=[`MAX_PHONES`], and the window flags within
/// their bounds.
pub(crate) fn check_sizes(flag: &str, phones: u64, window_s: u64, windows: u32) -> anyhow::Result<()> {
    if !(MIN_PHONES..=MAX_PHONES).contains(&phones) {
        bail!("{flag} must be {MIN_PHONES}..{MAX_PHONES}, got {phones}");
    }
    if !(MIN_WINDOW_S..=MAX_WINDOW_S).contains(&window_s) {
        bail!("--window-s must be {MIN_WINDOW_S}..{MAX_WINDOW_S}, got {window_s}");
    }
    if !(1..=MAX_WINDOWS).contains(&windows) {
        bail!("--windows must be 1..{MAX_WINDOWS}, got {windows}");
    }
    Ok(())
}

/// The binaries (those in `bin_dir`, default the lab's own folder, or `gateway_bin` and
/// `sim_bin`: another build, to measure before and after), the gateway logging its status line
/// every second, phones connecting at `ramp_rate`; then the run's folder, `holdfast-bench-NAME.*`.
/// No Node.js server: a caller that starts one sets `node_modules`.
pub(crate) fn setup(
    name: &str,
    bin_dir: Option<PathBuf>,
    gateway_bin: Option<&Path>,
    sim_bin: Option<&Path>,
    ramp_rate: u32,
) -> anyhow::Result<Setup> {
    let bin_dir = crate::cluster::run::bin_dir(bin_dir)?;
    let given_or = |given: Option<&Path>, flag: &str, default: &str| match given {
        Some(path) if path.is_file() => Ok(path.to_owned()),
        Some(path) => bail!("{flag} {} is not a file", path.display()),
        None => binary(&bin_dir, default),
    };
    let aggregator_bin = binary(&bin_dir, "aggregator")?;
    let gateway_bin = given_or(gateway_bin, "--gateway-bin", "gateway")?;
    let sim_bin = given_or(sim_bin, "--msim-bin", "mobile-sim")?;
    Ok(Setup {
        aggregator_bin,
        gateway_bin,
        sim_bin,
        node_modules: PathBuf::new(),
        phone_engine: compare::DEFAULT_ENGINE.to_owned(),
        gateway_status_s: Some(STATUS_EVERY_S),
        ramp_rate,
        phone_tls: false,
        aggregator_tls: false,
        out: work_dir(name)?,
    })
}

/// Runs a bench's `measure` with its files in `work`: the load average at the start (with the
/// cores) and at the end around it, `about` (when not empty) after the first; Ctrl-C stops it.
/// The folder is kept when `keep` or when the run did not go well, removed otherwise. Ok(true)
/// when it measured a run that went well, Ok(false) when a check failed (it printed why).
pub(crate) async fn framed(
    work: &Path,
    keep: bool,
    about: &str,
    measure: impl Future<Output = anyhow::Result<bool>>,
) -> anyhow::Result<bool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("load average at start: {}  ({cores} cores; {})", load_average(), crate::procfs::machine());
    if !about.is_empty() {
        println!("{about}");
    }
    let mut signals = Interrupts::catch()?;
    let result = tokio::select! {
        r = measure => r,
        signal = signals.recv() => Err(anyhow!("{signal}: the measurement was stopped")),
    };
    println!("load average at end: {}", load_average());
    if keep {
        eprintln!("kept {}", work.display());
    } else {
        leave(work, &result);
    }
    result
}

/// mobile-sim with `phones` idle phones on `served`, named NAME-i, until stopped.
pub(crate) fn idle_phones(cx: &Setup, served: &Served, name: &str, phones: u64) -> Command {
    compare::phones(cx, &[served], name, phones, IDLE_INTERVAL_MS, IDLE_INTERVAL_MS, IDLE_DURATION_S)
}

/// Stops idle phones (SIGINT: mobile-sim closes them and writes its report) within `limit`, and
/// checks from the report that all `want` connected and none dropped.
pub(crate) async fn stop_idle(
    sim: &mut Proc,
    report: &Path,
    want: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    sim.signal(libc::SIGINT);
    if sim.wait(limit).await.is_none() {
        bail!("the idle phones did not end within {limit:?}");
    }
    let r = compare::sim_report(report)?;
    if r.connections.established < want || r.connections.dropped > 0 {
        bail!("idle phones: {:?}", r.connections);
    }
    Ok(())
}

/// Waits up to `limit` for mobile-sim's end; its report when it exited 0 with a report that says
/// ok. When not, prints `FAILED: WHAT reported a failure ...`, its failed rules and its log's
/// tail, and gives `None`: the caller prints no figures and the run exits 1.
pub(crate) async fn verdict(
    sim: &mut Proc,
    report: &Path,
    limit: Duration,
    what: &str,
) -> anyhow::Result<Option<SimReport>> {
    let Some(status) = sim.wait(limit).await else { bail!("{what} did not end within {limit:?}") };
    let report = compare::sim_report(report);
    if status.success() && report.as_ref().is_ok_and(|r| r.ok) {
        return report.map(Some);
    }
    println!("FAILED: {what} reported a failure (a phone lost, or bytes never confirmed) ({status})");
    match &report {
        Ok(r) => r.failure_lines().iter().for_each(|l| println!("  {l}")),
        Err(e) => println!("  {e:#}"),
    }
    println!("{}", sim.log_tail(20));
    Ok(None)
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

/// The phones the gateway holds by its last status line (0 before the first).
pub(crate) fn live(log: &Path) -> anyhow::Result<u64> {
    Ok(last_counter(&read_log(log)?, LIVE_KEY).1.unwrap_or(0))
}

/// Waits until the gateway (its log `log`) says it holds at least `want` phones, up to `limit`;
/// an error when the gateway or the phones' mobile-sim `sim` ends first, or time runs out.
/// `what`: the phones, in the errors.
pub(crate) async fn until_held(
    gateway: &mut Served,
    log: &Path,
    sim: &mut Proc,
    want: u64,
    limit: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let watch = Watch::default().phones(sim).server(gateway);
    let counted = format!("{what} held by the gateway");
    wait::until(&counted, Want::AtLeast(want), HELD_POLL, limit, watch, || std::future::ready(live(log)))
        .await
        .into_result()?;
    Ok(())
}

/// Waits until the gateway says it holds no phone, up to `limit`; an error when it still holds
/// some then (the next phones' count would start from them).
pub(crate) async fn until_released(gateway: &mut Served, log: &Path, limit: Duration) -> anyhow::Result<()> {
    let watch = Watch::default().server(gateway);
    wait::until("phones held by the gateway", Want::AtMost(0), HELD_POLL, limit, watch, || {
        std::future::ready(live(log))
    })
    .await
    .into_result()
    .context("after the phones ended")?;
    Ok(())
}

/// Process `pid`'s CPU seconds as the next `bytes=` line appears in `log`, when, and that line's
/// count.
async fn aligned(pid: u32, log: &Path) -> anyhow::Result<(f64, Instant, u64)> {
    let before = last_counter(&read_log(log)?, BYTES_KEY).0;
    let deadline = Instant::now() + COUNTER_WAIT;
    loop {
        let (count, last) = last_counter(&read_log(log)?, BYTES_KEY);
        if let (true, Some(bytes)) = (count > before, last) {
            return Ok((usage("the measured process", pid)?.cpu_seconds, Instant::now(), bytes));
        }
        if Instant::now() >= deadline {
            bail!("no new counter line in {} for {COUNTER_WAIT:?}", log.display());
        }
        tokio::time::sleep(COUNTER_POLL).await;
    }
}

/// One window between two counter lines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CounterWindow {
    /// The measured process's CPU (utime + stime) in it.
    pub(crate) cpu_seconds: f64,
    pub(crate) wall_seconds: f64,
    /// How much the counter grew.
    pub(crate) bytes: u64,
}

/// `windows` windows of about `window`, each from one `bytes=` line of `log` to a later one: the
/// CPU of process `pid` (the server that writes the log, or the phones' mobile-sim) read as each
/// line appears, and the bytes the server counted between them.
pub(crate) async fn counter_windows(
    pid: u32,
    log: &Path,
    window: Duration,
    windows: u32,
) -> anyhow::Result<Vec<CounterWindow>> {
    let sleep = window.saturating_sub(WINDOW_SLACK).max(MIN_WINDOW_SLEEP);
    let mut out = Vec::new();
    for _ in 0..windows {
        let (cpu0, at0, bytes0) = aligned(pid, log).await?;
        tokio::time::sleep(sleep).await;
        let (cpu1, at1, bytes1) = aligned(pid, log).await?;
        out.push(CounterWindow {
            cpu_seconds: cpu1 - cpu0,
            wall_seconds: at1.duration_since(at0).as_secs_f64(),
            bytes: bytes1.saturating_sub(bytes0),
        });
    }
    Ok(out)
}

/// µs of CPU per byte; `None` when no byte was counted (never a zero figure).
pub(crate) fn us_per_byte(cpu_seconds: f64, bytes: u64) -> Option<f64> {
    (bytes > 0).then(|| cpu_seconds * 1e6 / bytes as f64)
}

/// `values` with `decimals` each, comma-separated.
pub(crate) fn joined(values: &[f64], decimals: usize) -> String {
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

    #[test]
    fn numbers_with_thousands() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-1_500.0), "-1,500");
        assert_eq!(joined(&[1.0, 2.3456], 2), "1.00, 2.35");
    }

    #[test]
    fn sizes_within_bounds() {
        assert!(check_sizes("--phones", 18_000, 10, 5).is_ok());
        assert!(check_sizes("--phones", 99, 10, 5).is_err());
        assert!(check_sizes("--phones", 19_501, 10, 5).is_err());
        assert!(check_sizes("--phones", 1_000, 1, 5).is_err());
        assert!(check_sizes("--phones", 1_000, 10, 0).is_err());
        let e = check_sizes("--idle", 50, 10, 5).unwrap_err().to_string();
        assert!(e.starts_with("--idle must be 100..19500"), "{e}");
    }
}
