//! `lab bench gateway-tls-cost` (scripts/bench/gateway-tls-cost.sh): what TLS for phones costs
//! the host gateway (issue #12, item 2), against plain ws in the same run. For each of ws and
//! wss (the gateway's `--phone-tls-cert`, a P-256 certificate made by the aggregator's
//! `certificate` subcommand for the gateway's address), one gateway holds `--phones` idle
//! mobile-sim phones (they connect, then send nothing for the hold): the gateway's RSS before
//! and while holding them, and its CPU (utime + stime, /proc/PID/stat) from before the first
//! connect until its status line says all are held; so per phone, resident memory and the CPU of
//! accepting it (the TLS handshake, for wss).
//!
//! Each mode gets a gateway of its own, and an aggregator on SQLite for its trunks (not
//! measured), started as `lab compare` starts them ([`crate::compare::serve`]). The phones must
//! all be held, and mobile-sim's report must say every one connected and none dropped, or the
//! run fails before that mode's line is printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::bench::cost::{
    self, idle_phones, stop_idle, until_held, FILES_SPARE, MAX_PHONES, MIN_PHONES, SCRIPT_RAMP_RATE,
    SETTLE_EMPTY, SETTLE_HELD,
};
use crate::bench::{files_for, usage};
use crate::children::Proc;
use crate::cli::Server;
use crate::compare::{serve, Served, Setup};

/// The longest the phones may take to be all held (TLS handshakes on a busy machine).
const HELD_WAIT: Duration = Duration::from_secs(120);
/// A phone's connection attempt may take this long (mobile-sim's `--connect-timeout`): a wss
/// handshake waits behind the others at the gateway while they ramp.
const CONNECT_TIMEOUT: &str = "60s";
/// The longest the idle phones may take to end once stopped (their closes, the report).
const SIM_END_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct GatewayTlsCostArgs {
    /// Idle phones the gateway holds in each mode, 100 to 19,500 (one gateway process and one
    /// mobile-sim process hold them all).
    #[arg(long, default_value_t = 5_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(MIN_PHONES..=MAX_PHONES))]
    pub phones: u64,

    /// Keep the run's folder (logs, mobile-sim's reports, the phones' certificate) even when the
    /// run went well.
    #[arg(long)]
    pub keep: bool,

    /// The folder of the aggregator, gateway and mobile-sim binaries. Default: the lab's own.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// How phones reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Ws,
    Wss,
}

impl Transport {
    const BOTH: [Transport; 2] = [Transport::Ws, Transport::Wss];

    fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// Runs `lab bench gateway-tls-cost`: a line per transport. Ok(true) when both were measured, an
/// error when not.
pub async fn run(args: GatewayTlsCostArgs) -> anyhow::Result<bool> {
    files_for(args.phones + FILES_SPARE, &format!("{} phones in one process", args.phones))?;
    let cx = cost::setup("gateway-tls-cost", args.bin_dir.clone(), None, None, SCRIPT_RAMP_RATE)?;
    let work = cx.out.clone();
    cost::framed(&work, args.keep, "", measure(cx, args.phones)).await
}

async fn measure(mut cx: Setup, phones: u64) -> anyhow::Result<bool> {
    for transport in Transport::BOTH {
        cx.phone_tls = transport == Transport::Wss;
        let dir = cx.out.join(transport.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut gateway = serve(Server::Gateway, &cx, &dir, MAX_PHONES).await?;
        let held = hold(&cx, &mut gateway, &dir, transport, phones).await;
        gateway.stop().await;
        println!("{}", held.with_context(|| format!("{} phones", transport.name()))?.text());
    }
    Ok(true)
}

/// The gateway's memory and CPU before `phones` idle phones, as they are all held, and once
/// settled.
async fn hold(
    cx: &Setup,
    gateway: &mut Served,
    dir: &Path,
    transport: Transport,
    phones: u64,
) -> anyhow::Result<Figures> {
    let log = gateway.log().context("the gateway's log")?.to_owned();
    tokio::time::sleep(SETTLE_EMPTY).await;
    let name = transport.name();
    let before = usage("the gateway", gateway.pid)?;
    let mut c = idle_phones(cx, gateway, name, phones);
    c.args(["--connect-timeout", CONNECT_TIMEOUT]);
    let report = dir.join(format!("{name}.json"));
    let mut sim = Proc::spawn(&format!("mobile-sim-{name}"), c, 0, dir, Some(&report))?;
    until_held(gateway, &log, &mut sim, phones, HELD_WAIT, &format!("{name} phones")).await?;
    let accepted = usage("the gateway", gateway.pid)?;
    tokio::time::sleep(SETTLE_HELD).await;
    let held = usage("the gateway", gateway.pid)?;
    stop_idle(&mut sim, &report, phones, SIM_END_WAIT).await?;
    Ok(Figures {
        transport,
        phones,
        rss_before_bytes: before.rss_bytes,
        rss_held_bytes: held.rss_bytes,
        accept_cpu_seconds: accepted.cpu_seconds - before.cpu_seconds,
    })
}

/// What one transport's phones cost the gateway.
#[derive(Debug, Clone, PartialEq)]
struct Figures {
    transport: Transport,
    phones: u64,
    rss_before_bytes: u64,
    rss_held_bytes: u64,
    /// The gateway's CPU from before the first connect until all were held.
    accept_cpu_seconds: f64,
}

impl Figures {
    fn text(&self) -> String {
        let n = self.phones as f64;
        let rss_per_phone = (self.rss_held_bytes as f64 - self.rss_before_bytes as f64) / n;
        format!(
            "{:<3} {} idle phones: gateway RSS {} -> {} KiB, {rss_per_phone:.0} B per phone; CPU to accept them \
             {:.2} s, {:.0} us per phone",
            self.transport.name(),
            self.phones,
            self.rss_before_bytes / 1024,
            self.rss_held_bytes / 1024,
            self.accept_cpu_seconds,
            self.accept_cpu_seconds * 1e6 / n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transports_line() {
        let f = Figures {
            transport: Transport::Wss,
            phones: 3_000,
            rss_before_bytes: 10_240 * 1024,
            rss_held_bytes: 10_240 * 1024 + 3_000 * 4_200,
            accept_cpu_seconds: 0.99,
        };
        assert_eq!(
            f.text(),
            "wss 3000 idle phones: gateway RSS 10240 -> 22544 KiB, 4200 B per phone; CPU to accept them 0.99 s, \
             330 us per phone"
        );
        let ws = Figures { transport: Transport::Ws, rss_held_bytes: 10_240 * 1024 - 3_000, ..f };
        assert!(ws
            .text()
            .starts_with("ws  3000 idle phones: gateway RSS 10240 -> 10237 KiB, -1 B per phone"));
    }
}
