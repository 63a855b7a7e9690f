//! `lab bench gateway` (scripts/bench/gateway.sh): the host gateway (the firmware's core on the
//! kernel's TCP), measured with mobile-sim in one run:
//!
//! 1. **memory per idle phone session**: the gateway's RSS before, and while it holds `--idle`
//!    idle phones (nothing sent during the hold; held = the gateway's own `live=N` status count);
//! 2. **phone bytes per second through one gateway** into the aggregator (SQLite, its default
//!    store): `--busy` phones each send a byte every 1-10 ms for `--seconds`, then mobile-sim
//!    verifies every device against the database (0 lost, 0 double-counted, every byte
//!    confirmed). A run that fails the verification prints why, no figure, and exits 1.
//!
//! The gateway and its aggregator are started as `lab compare` and `lab gateway-cost` start them
//! ([`serve`]): its trunks (TLS 1.3, 2 links) to an aggregator on SQLite, phones proving their
//! device with a token each (one Ed25519 check per connect at the gateway), as in a real
//! deployment. The idle phones are [`crate::gateway_cost`]'s. The phones ramp up at `lab
//! compare`'s rate (5,000 per second; the script's was 2,000): what is measured is the hold, not
//! the ramp.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use cli_env::Interrupts;

use super::cost::{idle_phones, live, stop_idle, thousands, until_held, DRAIN, SIM_MARGIN};
use super::{files_for, kib, leave, per_phone, problems, usage, work_dir, FILES_SPARE};
use crate::children::Proc;
use crate::cli::Server;
use crate::compare::{self, phones, serve, Served, Setup};
use crate::report::SimReport;

/// The gateway's `--capacity` (phones it may hold at once), fixed as in the script so that its
/// memory before the phones (its session slots are allocated for the capacity at start) reads
/// the same whatever the run's size; and so the most phones either part may ask for.
const CAPACITY: u64 = 19_000;
/// The gateway's seconds between status lines (`live=N`: the phones it holds).
const STATUS_EVERY_S: u64 = 1;
/// The longest the idle phones may take to be all held (as gateway.sh waited).
const HELD_WAIT: Duration = Duration::from_secs(60);
/// Once the trunks are up, before the gateway's memory is read with no phone.
const SETTLE_EMPTY: Duration = Duration::from_secs(1);
/// Once all idle phones are held, before their memory is read (the last handshakes settle).
const SETTLE_HELD: Duration = Duration::from_secs(3);
/// After the idle phones stop, before the busy phones start (their connections close).
const CLOSE_WAIT: Duration = Duration::from_secs(3);
/// A busy phone's pause between bytes, ms (uniform in between).
const BUSY_MIN_MS: u64 = 1;
const BUSY_MAX_MS: u64 = 10;
/// The longest busy run the bench takes, seconds.
const MAX_SECONDS: u64 = 24 * 3600;

#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Idle phones the gateway holds (memory per idle phone session), at most 19,000 (its
    /// capacity).
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=CAPACITY))]
    pub idle: u64,

    /// Busy phones (bytes per second), each sending a byte every 1-10 ms; at most 19,000.
    #[arg(long, default_value_t = 2_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=CAPACITY))]
    pub busy: u64,

    /// How long the busy phones send, seconds (the bytes per second are over this).
    #[arg(long, default_value_t = 30, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub seconds: u64,

    /// Where the aggregator, gateway and mobile-sim binaries are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// Runs `lab bench gateway`: Ok(true) when both parts measured and the busy phones verified,
/// Ok(false) when the verification failed (it printed why), an error when it could not measure.
pub async fn run(args: GatewayArgs) -> anyhow::Result<bool> {
    // The gateway holds one file per phone (mobile-sim as many, in one process).
    files_for(
        args.idle.max(args.busy) + FILES_SPARE,
        &format!("{} phones in one process", args.idle.max(args.busy)),
    )?;
    let bin = crate::cluster::run::bin_dir(args.bin_dir.clone())?;
    // The binaries are looked for before the run's folder is made (none is left for a wrong one).
    let setup = Setup::new(PathBuf::new(), &bin)?;
    let work = work_dir("gateway")?;
    let cx = Setup { out: work.clone(), gateway_status_s: Some(STATUS_EVERY_S), ..setup };
    let mut signals = Interrupts::catch()?;
    let result = tokio::select! {
        r = measure(&args, &cx) => r,
        signal = signals.recv() => Err(anyhow!("{signal}: the bench was stopped")),
    };
    leave(&work, &result);
    result
}

/// Starts the gateway, measures, and stops what it started whether or not that went well.
async fn measure(args: &GatewayArgs, cx: &Setup) -> anyhow::Result<bool> {
    let mut gateway = serve(Server::Gateway, cx, &cx.out, CAPACITY).await?;
    let result = measure_with(args, cx, &mut gateway).await;
    gateway.stop().await;
    result
}

async fn measure_with(args: &GatewayArgs, cx: &Setup, gateway: &mut Served) -> anyhow::Result<bool> {
    // --- 1: idle phones -------------------------------------------------------------------------
    tokio::time::sleep(SETTLE_EMPTY).await;
    let before = usage("the gateway", gateway.pid)?.rss_bytes;
    let log = gateway.log().context("the gateway's log")?.to_owned();
    let idle_json = cx.out.join("idle.json");
    let idle = idle_phones(cx, gateway, "idle", args.idle);
    let mut sim = Proc::spawn("mobile-sim-idle", idle, 0, &cx.out, Some(&idle_json))?;
    until_held(gateway, &log, &mut sim, args.idle, HELD_WAIT, "idle phones").await?;
    let held = live(&log)?;
    tokio::time::sleep(SETTLE_HELD).await;
    let during = usage("the gateway", gateway.pid)?.rss_bytes;
    stop_idle(&mut sim, &idle_json, args.idle, DRAIN + SIM_MARGIN).await?;
    println!("{}", idle_line(held, before, during, args.idle));
    tokio::time::sleep(CLOSE_WAIT).await;

    // --- 2: busy phones, then every device verified ----------------------------------------------
    let database = cx.out.join("aggregator/holdfast.db");
    let mut busy = phones(cx, &[&*gateway], "busy", args.busy, BUSY_MIN_MS, BUSY_MAX_MS, args.seconds);
    busy.arg("--drain-timeout")
        .arg(format!("{}s", DRAIN.as_secs()))
        .arg("--verify")
        .arg("--database-url")
        .arg(format!("sqlite://{}", database.display()));
    let report_file = cx.out.join("busy.json");
    let mut sim = Proc::spawn("mobile-sim-busy", busy, 0, &cx.out, Some(&report_file))?;
    let limit = Duration::from_secs(args.seconds) + DRAIN + SIM_MARGIN;
    let Some(status) = sim.wait(limit).await else { bail!("the busy phones did not end within {limit:?}") };
    let report = match compare::sim_report(&report_file) {
        Ok(r) => r,
        Err(e) => {
            println!("busy: FAILED: mobile-sim ({status}): {e:#}\n{}", sim.log_tail(20));
            return Ok(false);
        }
    };
    let bad = problems(status.success(), &report, args.busy);
    if !bad.is_empty() {
        for b in &bad {
            println!("busy: FAILED: {b}");
        }
        println!("{}", sim.log_tail(20));
        return Ok(false);
    }
    println!("{}", busy_line(&report, args.seconds)?);
    Ok(true)
}

/// The idle part's line, as the script printed it: the gateway's RSS (bytes) before and while it
/// held `held` of the `phones` idle phones, and the difference per phone asked for.
fn idle_line(held: u64, before: u64, during: u64, phones: u64) -> String {
    format!(
        "idle: phones held {held:>6}  gateway RSS {:>7} KiB -> {:>7} KiB  per idle phone session {:>5} bytes",
        kib(before),
        kib(during),
        per_phone(before, during, phones).unwrap_or_default()
    )
}

/// The busy part's line, as the script printed it: bytes sent over `seconds`, durable, and
/// mobile-sim's verification of every device.
fn busy_line(report: &SimReport, seconds: u64) -> anyhow::Result<String> {
    let verification = report.verification.as_ref().context("no verification in the report")?;
    Ok(format!(
        "busy: {} bytes sent in {seconds} s = {} phone bytes/s through one gateway; durable {}; verify {}",
        report.bytes.sent,
        thousands(report.bytes.sent as f64 / seconds as f64),
        report.bytes.durable,
        serde_json::to_string(verification)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{SimBytes, SimVerification};

    #[test]
    fn the_lines_read_as_the_script_printed_them() {
        // printf 'idle: phones held %6s  gateway RSS %7d KiB -> %7d KiB  per idle phone session %5d bytes'
        assert_eq!(
            idle_line(10_000, 30_000 << 10, 39_360 << 10, 10_000),
            "idle: phones held  10000  gateway RSS   30000 KiB ->   39360 KiB  per idle phone session   958 bytes"
        );
        let report = SimReport {
            bytes: SimBytes { sent: 883_902, durable: 883_902, unconfirmed: 0 },
            verification: Some(SimVerification { devices_checked: 2_000, ..SimVerification::default() }),
            ..SimReport::default()
        };
        let line = busy_line(&report, 30).unwrap();
        assert!(
            line.starts_with(
                "busy: 883902 bytes sent in 30 s = 29,463 phone bytes/s through one gateway; durable 883902; \
                 verify {\"devices_expected\":0,\"devices_checked\":2000,"
            ),
            "{line}"
        );
        let unverified = SimReport { verification: None, ..report };
        assert!(busy_line(&unverified, 30).is_err());
    }
}
