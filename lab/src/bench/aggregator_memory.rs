//! `lab bench aggregator-memory` (scripts/bench/aggregator-memory.sh): memory per idle direct
//! phone in the aggregator. Per mode, one aggregator process on its embedded store (SQLite)
//! holding N idle phones (mobile-sim, nothing sent during the hold): its RSS before and while it
//! holds them (held = its `holdfast_direct_sessions` metric), over TLS (wss://, its own
//! certificate) and plain (`--plain`, as behind a TLS-terminating proxy). One line per mode; a
//! mode whose phones are not all held prints why and no figure, and the command exits 1.
//!
//! The aggregator and the phones are started as `lab compare` starts them ([`serve`], with a
//! device token per phone); the idle phones are `lab gateway-cost`'s. They ramp up at `lab
//! compare`'s rate (5,000 per second; the script's was 2,000): what is measured is the hold.

use std::path::PathBuf;

use anyhow::{anyhow, Context as _};
use cli_env::Interrupts;

use super::cost::{idle_phones, stop_idle, DRAIN, SIM_MARGIN};
use super::{
    files_for, kib, leave, per_phone, tally, usage, wait_held, work_dir, FILES_SPARE, IDLE_SETTLE_EMPTY,
    IDLE_SETTLE_HELD,
};
use crate::children::Proc;
use crate::cli::Server;
use crate::cluster::spelled;
use crate::compare::{serve, Served, Setup};
use crate::metrics::DIRECT_SESSIONS;

/// Phones the aggregator is given room for (`--max-phones`) beyond those asked for.
const MAX_PHONES_SPARE: u64 = 100;

/// How the aggregator serves its phones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TLS 1.3 on its own listener (wss://).
    Tls,
    /// Plain WebSocket (`--plain`, behind a proxy that terminates TLS).
    Plain,
}

#[derive(Debug, clap::Args)]
pub struct AggregatorMemoryArgs {
    /// Idle phones the aggregator holds; one file each, in one process.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub phones: u64,

    /// The modes to measure, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::Tls, Mode::Plain])]
    pub modes: Vec<Mode>,

    /// Where the aggregator, gateway and mobile-sim binaries are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// Runs `lab bench aggregator-memory`: one line per mode.
pub async fn run(args: AggregatorMemoryArgs) -> anyhow::Result<bool> {
    files_for(args.phones + FILES_SPARE, &format!("{} phones in one process", args.phones))?;
    let bin = crate::cluster::run::bin_dir(args.bin_dir.clone())?;
    // The binaries are looked for before the run's folder is made (none is left for a wrong one).
    let setup = Setup::new(PathBuf::new(), &bin)?;
    let work = work_dir("aggregator-memory")?;
    let mut signals = Interrupts::catch()?;
    let mut result = Ok(true);
    for &mode in &args.modes {
        let cx = Setup { out: work.join(spelled(mode)), aggregator_tls: mode == Mode::Tls, ..setup.clone() };
        let outcome = tokio::select! {
            r = measure(&cx, mode, args.phones) => r,
            signal = signals.recv() => Err(anyhow!("{signal}: the bench was stopped")),
        };
        if !tally(&mut result, outcome, || format!("mode {}", spelled(mode))) {
            break;
        }
    }
    leave(&work, &result);
    result
}

/// Starts the aggregator, measures one mode, and stops it whether or not that went well.
async fn measure(cx: &Setup, mode: Mode, phones: u64) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&cx.out).with_context(|| format!("creating {}", cx.out.display()))?;
    let served = serve(Server::Aggregator, cx, &cx.out, phones + MAX_PHONES_SPARE).await?;
    let result = measure_with(cx, mode, phones, &served).await;
    served.stop().await;
    result
}

/// One mode's line; Ok(false) when the phones were not all held (it printed why).
async fn measure_with(cx: &Setup, mode: Mode, phones: u64, served: &Served) -> anyhow::Result<bool> {
    let scraper = served.metrics.as_ref().context("the aggregator's metrics")?;
    tokio::time::sleep(IDLE_SETTLE_EMPTY).await;
    let before = usage("the aggregator", served.pid)?.rss_bytes;
    let idle_json = cx.out.join("idle.json");
    let idle = idle_phones(cx, served, "idle", phones);
    let mut sim = Proc::spawn("mobile-sim-idle", idle, 0, &cx.out, Some(&idle_json))?;
    let waited = wait_held(phones, &mut sim, move || async move {
        scraper.scrape().await?.value(DIRECT_SESSIONS).with_context(|| format!("no metric {DIRECT_SESSIONS}"))
    })
    .await;
    let held = match waited.into_result() {
        Ok(held) => held,
        Err(short) => {
            println!("{:<5} FAILED: {short}", spelled(mode));
            return Ok(false);
        }
    };
    tokio::time::sleep(IDLE_SETTLE_HELD).await;
    let during = usage("the aggregator", served.pid)?.rss_bytes;
    stop_idle(&mut sim, &idle_json, phones, DRAIN + SIM_MARGIN).await?;
    println!("{}", line(mode, held, before, during, phones));
    Ok(true)
}

/// A mode's line, as the script printed it: the aggregator's RSS (bytes) before and while it
/// held `held` of the `phones` idle phones, and the difference per phone asked for.
fn line(mode: Mode, held: u64, before: u64, during: u64, phones: u64) -> String {
    format!(
        "{:<5} phones held {held:>6}  aggregator RSS {:>7} KiB -> {:>7} KiB  per idle phone {:>5} bytes",
        spelled(mode),
        kib(before),
        kib(during),
        per_phone(before, during, phones).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_as_the_script_printed_it() {
        // printf '%-5s phones held %6s  aggregator RSS %7d KiB -> %7d KiB  per idle phone %5d bytes'
        assert_eq!(
            line(Mode::Tls, 10_000, 135_728 << 10, 194_564 << 10, 10_000),
            "tls   phones held  10000  aggregator RSS  135728 KiB ->  194564 KiB  per idle phone  6024 bytes"
        );
        assert!(line(Mode::Plain, 10, 0, 0, 10).starts_with("plain phones held     10  "));
    }
}
