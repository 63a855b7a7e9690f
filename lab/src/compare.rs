//! `lab compare`: the host gateway and the aggregator side by side with the seed's stack.
//!
//! Four servers, each one process under the same open-file limit, loaded in turn by the same
//! mobile-sim phones: the host gateway (its two TLS trunks go to an aggregator on SQLite, whose
//! own cost is not counted), the aggregator serving phones directly (plain WebSocket, as behind
//! a TLS-terminating proxy; its SQLite writes are counted), and two minimal Node.js servers, one
//! on `ws` and one on socket.io (`scripts/bench/peers`: each counts a message's bytes and answers
//! the connection's total at once, where the gateway and the aggregator answer after a database
//! commit). For each server, in each run:
//!
//! 1. **memory per idle phone**: its RSS before, and while it holds `--idle` phones that send
//!    nothing (socket.io's own pings go on: they are that stack's cost of an idle phone);
//!    **idle cores**: its CPU over [`IDLE_WINDOW`] while it holds them;
//! 2. **CPU per phone byte**: `--busy` phones each send a byte every `--interval-ms` on average
//!    (uniform in 0.5x to 1.5x) for `--busy-s`; the server's CPU from their start to their exit,
//!    divided by the bytes mobile-sim saw confirmed. Their connecting is in it (at the defaults
//!    about 3,000 x 100 µs against some 888,000 bytes x 15-65 µs: 2 % or less).
//!
//! Medians over `--runs` runs; the servers take turns within each run, so that a change in the
//! machine's load during the command touches them alike. The Node.js packages are installed once
//! with npm into `--node-dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use cli_env::Interrupts;
use serde::Serialize;
use tokio::process::Command;

use crate::children::{self, Proc};
use crate::cli::{CompareArgs, Server};
use crate::cluster::self_made_tls;
use crate::hold::{binary, load_average, wait_listening};
use crate::metrics::{self, Scraper};
use crate::procfs;
use crate::report::SimReport;
use crate::wait::{self, Alive, Want, Watch};

/// How long the idle phones are watched for the server's idle CPU.
pub const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// After the last idle phone connected, before the server's memory is read.
const SETTLE: Duration = Duration::from_secs(5);
/// The longest a ramp of phones, a server's start, or the end of a phase may take.
const PHASE_TIMEOUT: Duration = Duration::from_secs(180);
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How often the server's open files are counted while phones connect or close.
const FILES_POLL: Duration = Duration::from_millis(250);
/// New connections per second while phones connect.
pub(crate) const RAMP_RATE: u32 = 5_000;
/// mobile-sim's own default `--engine`: not passed on its command line, so that a build from
/// before the flag (a bench's `--msim-bin`, to measure before and after) runs the same phones.
pub(crate) const DEFAULT_ENGINE: &str = "auto";

/// The yardsticks, carried in the lab so that it runs from any folder.
const WS_SERVER_JS: &str = include_str!("../../scripts/bench/peers/ws-count-server.js");
const SOCKETIO_SERVER_JS: &str = include_str!("../../scripts/bench/peers/socketio-count-server.js");
/// The npm packages, pinned.
const WS_PACKAGE: &str = "ws@8.23.0";
const SOCKETIO_PACKAGE: &str = "socket.io@4.8.1";

/// One server's figures in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub server: Server,
    pub run: u32,
    pub rss_per_idle_phone_bytes: f64,
    pub idle_cores: f64,
    pub us_per_byte: f64,
    /// Bytes the busy phones saw confirmed.
    pub bytes: u64,
    /// What ran the busy phones (mobile-sim's report: `host-runtime` or `tokio`).
    pub phone_engine: String,
}

/// One server's medians over the runs, and their ratio to each Node.js server's.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub server: Server,
    pub rss_per_idle_phone_bytes: f64,
    pub idle_cores: f64,
    pub us_per_byte: f64,
    /// This server's µs per byte over Node.js `ws`'s (medians).
    pub cpu_ratio_to_node_ws: Option<f64>,
    pub cpu_ratio_to_node_socketio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub idle_phones: u64,
    pub busy_phones: u64,
    pub interval_ms: u64,
    pub busy_seconds: u64,
    pub runs: u32,
    /// mobile-sim's `--engine` for the plain-WebSocket servers (socket.io's phones: tokio).
    pub phone_engine: String,
    /// The processor, its Spectre v2 mitigation and the kernel ([`crate::procfs::machine`]).
    pub machine: String,
    pub load_average_at_start: String,
    pub load_average_at_end: String,
    pub measurements: Vec<Measurement>,
    pub summary: Vec<Summary>,
}

impl CompareReport {
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lab compare: {} idle phones, then {} phones at one byte per {} ms each for {} s; medians of {} runs",
            self.idle_phones, self.busy_phones, self.interval_ms, self.busy_seconds, self.runs
        );
        let _ =
            writeln!(s, "phones' engine (mobile-sim --engine): {}, socket.io's on tokio", self.phone_engine);
        let _ = writeln!(
            s,
            "machine: {}; load average {} at start, {} at end\n",
            self.machine, self.load_average_at_start, self.load_average_at_end
        );
        let _ = writeln!(
            s,
            "  {:<14} {:>16} {:>12} {:>12} {:>12} {:>16}",
            "server", "RSS/idle phone", "idle cores", "us/byte", "/ Node ws", "/ Node socket.io"
        );
        let ratio = |r: Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
        for m in &self.summary {
            let _ = writeln!(
                s,
                "  {:<14} {:>14.0} B {:>12.4} {:>12.2} {:>12} {:>16}",
                m.server.name(),
                m.rss_per_idle_phone_bytes,
                m.idle_cores,
                m.us_per_byte,
                ratio(m.cpu_ratio_to_node_ws),
                ratio(m.cpu_ratio_to_node_socketio)
            );
        }
        let _ = writeln!(s, "\nruns:");
        for m in &self.measurements {
            let _ = writeln!(
                s,
                "  run {} {:<14} {:>8.0} B/idle phone  {:.4} idle cores  {:>7.2} us/byte  ({} bytes, phones on {})",
                m.run,
                m.server.name(),
                m.rss_per_idle_phone_bytes,
                m.idle_cores,
                m.us_per_byte,
                m.bytes,
                m.phone_engine
            );
        }
        s
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

/// The lower middle of `values` for an even count (scripts/lib.sh's `hf_median`): always a figure
/// one of the runs gave, so that the median of histogram bucket bounds is a bucket bound. `None`
/// when empty.
pub fn lower_median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len().checked_sub(1)? / 2).copied()
}

/// Medians per server, in the order the servers were given, with the CPU ratios.
pub fn summarize(servers: &[Server], measurements: &[Measurement]) -> Vec<Summary> {
    let of = |server: Server, f: fn(&Measurement) -> f64| {
        median(measurements.iter().filter(|m| m.server == server).map(f).collect())
    };
    let node_ws = of(Server::NodeWs, |m| m.us_per_byte);
    let node_socketio = of(Server::NodeSocketio, |m| m.us_per_byte);
    servers
        .iter()
        .filter_map(|&server| {
            let us_per_byte = of(server, |m| m.us_per_byte)?;
            Some(Summary {
                server,
                rss_per_idle_phone_bytes: of(server, |m| m.rss_per_idle_phone_bytes)?,
                idle_cores: of(server, |m| m.idle_cores)?,
                us_per_byte,
                cpu_ratio_to_node_ws: node_ws.map(|n| us_per_byte / n),
                cpu_ratio_to_node_socketio: node_socketio.map(|n| us_per_byte / n),
            })
        })
        .collect()
}

/// What every server's turn needs (`lab gateway-cost` starts its servers with it too).
#[derive(Clone)]
pub(crate) struct Setup {
    pub(crate) out: PathBuf,
    pub(crate) aggregator_bin: PathBuf,
    pub(crate) gateway_bin: PathBuf,
    pub(crate) sim_bin: PathBuf,
    pub(crate) node_modules: PathBuf,
    /// mobile-sim's `--engine` for the plain-WebSocket servers.
    pub(crate) phone_engine: String,
    /// The gateway's seconds between status lines (`live=N ... bytes=N`, logged at info), for
    /// a caller that reads them; `None`: the gateway logs warnings only.
    pub(crate) gateway_status_s: Option<u64>,
    /// New phone connections per second while phones connect (mobile-sim's `--rate`).
    pub(crate) ramp_rate: u32,
    /// The gateway serves its phones over TLS (wss://, `--phone-tls-cert`) with a certificate
    /// of the aggregator's making for its address; the phones pin that CA.
    pub(crate) phone_tls: bool,
    /// The aggregator serves its phones over TLS (wss://, its own certificate), not plain: `lab
    /// bench aggregator-memory` measures both.
    pub(crate) aggregator_tls: bool,
}

impl Setup {
    /// The aggregator, gateway and mobile-sim binaries in `bin_dir`, the files of the run in
    /// `out`; the Node.js servers' packages where `lab compare` installs them (not installed
    /// here), phones on mobile-sim's engine `auto`, the gateway quiet, the aggregator plain.
    pub(crate) fn new(out: PathBuf, bin_dir: &Path) -> anyhow::Result<Setup> {
        Ok(Setup {
            out,
            aggregator_bin: binary(bin_dir, "aggregator")?,
            gateway_bin: binary(bin_dir, "gateway")?,
            sim_bin: binary(bin_dir, "mobile-sim")?,
            node_modules: crate::cli::default_node_dir().join("node_modules"),
            phone_engine: "auto".to_owned(),
            gateway_status_s: None,
            aggregator_tls: false,
            ramp_rate: RAMP_RATE,
            phone_tls: false,
        })
    }
}

/// A server, started, and what phones need to reach it.
pub(crate) struct Served {
    /// Stopped newest first.
    procs: Vec<Proc>,
    /// The process whose CPU and memory are measured.
    pub(crate) pid: u32,
    target: String,
    socketio: bool,
    device_key: Option<PathBuf>,
    /// The CA the phones check the server's certificate with (a wss:// target).
    ca: Option<PathBuf>,
    /// The aggregator's metrics, when the aggregator is the server.
    pub(crate) metrics: Option<Scraper>,
}

impl Served {
    pub(crate) async fn stop(mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(STOP_GRACE).await;
        }
    }

    /// The log (stderr and stdout) of the measured process, which is started last.
    pub(crate) fn log(&self) -> Option<&Path> {
        self.procs.last().map(|p| p.log.as_path())
    }

    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        self.procs.iter_mut().try_for_each(Alive::check_alive)
    }
}

impl Alive for Served {
    fn check_alive(&mut self) -> anyhow::Result<()> {
        Served::check_alive(self)
    }
}

/// Runs `lab compare`.
pub async fn run(args: CompareArgs) -> anyhow::Result<CompareReport> {
    let mut signals = Interrupts::catch()?;
    let files_limit = procfs::raise_files_limit();
    if args.idle + crate::plan::SPARE_FILES > files_limit
        || args.busy + crate::plan::SPARE_FILES > files_limit
    {
        bail!(
            "a process may open {files_limit} files: --idle and --busy must leave {} spare",
            crate::plan::SPARE_FILES
        );
    }
    if args.servers.is_empty() || args.runs == 0 {
        bail!("nothing to compare: give --servers and --runs of at least one");
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("lab-runs/compare-{stamp}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("the lab's folder")?.to_owned(),
    };
    let node_modules = node_packages(&args.node_dir, &args.servers).await?;
    let cx = Setup {
        aggregator_bin: binary(&bin_dir, "aggregator")?,
        gateway_bin: binary(&bin_dir, "gateway")?,
        sim_bin: binary(&bin_dir, "mobile-sim")?,
        node_modules,
        out,
        phone_engine: args.phone_engine.clone(),
        gateway_status_s: None,
        ramp_rate: RAMP_RATE,
        phone_tls: false,
        aggregator_tls: false,
    };
    let load_at_start = load_average();
    let mut measurements = Vec::new();
    for run in 1..=args.runs {
        for &server in &args.servers {
            eprintln!("lab compare: run {run} of {}, {}", args.runs, server.name());
            let dir = cx.out.join(format!("run{run}-{}", server.name()));
            // Each run starts from nothing: a rerun into the same --out must not find the last
            // run's database (its gateway name is taken) or reports.
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir)?;
            let mut served = serve(server, &cx, &dir, args.idle.max(args.busy) + 100).await?;
            let measured = tokio::select! {
                m = measure(&args, &cx, &dir, &mut served, server, run) => m,
                signal = signals.recv() => Err(anyhow::anyhow!("{signal}: the comparison was stopped")),
            };
            served.stop().await;
            let m = measured
                .with_context(|| format!("{} in run {run} (files in {})", server.name(), dir.display()))?;
            eprintln!(
                "lab compare:   {:.0} B per idle phone, {:.4} idle cores, {:.2} us per byte",
                m.rss_per_idle_phone_bytes, m.idle_cores, m.us_per_byte
            );
            measurements.push(m);
        }
    }
    let report = CompareReport {
        idle_phones: args.idle,
        busy_phones: args.busy,
        interval_ms: args.interval_ms,
        busy_seconds: args.busy_s,
        runs: args.runs,
        phone_engine: args.phone_engine.clone(),
        machine: crate::procfs::machine(),
        load_average_at_start: load_at_start,
        load_average_at_end: load_average(),
        summary: summarize(&args.servers, &measurements),
        measurements,
    };
    std::fs::write(cx.out.join("compare.txt"), report.text())?;
    std::fs::write(cx.out.join("compare.json"), serde_json::to_vec_pretty(&report)?)?;
    eprintln!("lab compare: reports in {}/compare.{{txt,json}}", cx.out.display());
    Ok(report)
}

/// The Node.js packages the chosen servers need, installed into `dir` unless there already; the
/// `node_modules` folder to put in NODE_PATH.
pub(crate) async fn node_packages(dir: &Path, servers: &[Server]) -> anyhow::Result<PathBuf> {
    let modules = dir.join("node_modules");
    let mut wanted = Vec::new();
    if servers.contains(&Server::NodeWs) && !modules.join("ws/package.json").is_file() {
        wanted.push(WS_PACKAGE);
    }
    if servers.contains(&Server::NodeSocketio) && !modules.join("socket.io/package.json").is_file() {
        wanted.push(SOCKETIO_PACKAGE);
    }
    if !wanted.is_empty() {
        std::fs::create_dir_all(dir)?;
        eprintln!("lab compare: installing {} into {}", wanted.join(" "), dir.display());
        let mut c = Command::new("npm");
        c.arg("install").arg("--prefix").arg(dir).args(["--no-save", "--no-audit", "--no-fund"]);
        c.args(["--loglevel=error"]).args(&wanted);
        children::output(c).await.context("npm (Node.js 18+ and npm are needed for the Node.js servers)")?;
    }
    Ok(modules)
}

/// The aggregator binary with its files (SQLite database, keys, CA) in `data`, none of the
/// caller's settings: the comparison measures the embedded store.
pub(crate) fn aggregator_command(bin: &Path, data: &Path) -> Command {
    let mut c = children::clean_command(bin);
    c.arg("--data-dir").arg(data);
    c
}

/// Starts `server` with its files in `dir`; returns once it listens (and, for the gateway, once
/// its trunks are up).
pub(crate) async fn serve(server: Server, cx: &Setup, dir: &Path, max_phones: u64) -> anyhow::Result<Served> {
    let port = testkit::free_port();
    let node = |script: &str, body: &str| -> anyhow::Result<Command> {
        let path = dir.join(script);
        std::fs::write(&path, body)?;
        let mut c = Command::new("node");
        c.arg(&path).arg(port.to_string()).env("NODE_PATH", &cx.node_modules);
        Ok(c)
    };
    let aggregator = |listen: SocketAddr, plain: bool| {
        let mut c = aggregator_command(&cx.aggregator_bin, &dir.join("aggregator"));
        c.arg("--listen").arg(listen.to_string());
        if plain {
            c.arg("--plain");
        }
        c.env("RUST_LOG", "warn").env("NO_COLOR", "1");
        c
    };
    let local = SocketAddr::from(([127, 0, 0, 1], port));
    match server {
        Server::NodeWs => {
            let mut p = Proc::spawn("node-ws", node("ws-count-server.js", WS_SERVER_JS)?, 0, dir, None)?;
            wait_listening(&mut p, local).await?;
            let pid = p.pid().context("node's pid")?;
            Ok(Served {
                procs: vec![p],
                pid,
                target: format!("ws://{local}/ws"),
                socketio: false,
                device_key: None,
                ca: None,
                metrics: None,
            })
        }
        Server::NodeSocketio => {
            let mut p = Proc::spawn(
                "node-socketio",
                node("socketio-count-server.js", SOCKETIO_SERVER_JS)?,
                0,
                dir,
                None,
            )?;
            wait_listening(&mut p, local).await?;
            let pid = p.pid().context("node's pid")?;
            Ok(Served {
                procs: vec![p],
                pid,
                target: format!("ws://{local}/socket.io/?EIO=4&transport=websocket"),
                socketio: true,
                device_key: None,
                ca: None,
                metrics: None,
            })
        }
        Server::Aggregator => {
            let listen = SocketAddr::from(([127, 0, 1, 1], port));
            // Makes the device-token key the phones' tokens are signed with.
            let mut key = aggregator_command(&cx.aggregator_bin, &dir.join("aggregator"));
            key.args(["device", "public-key"]);
            children::output(key).await?;
            let mut c = aggregator(listen, !cx.aggregator_tls);
            c.arg("--max-phones").arg(max_phones.to_string());
            if cx.aggregator_tls {
                // Its self-made certificate names localhost; the phones connect to this address.
                c.arg("--tls-san").arg(listen.ip().to_string());
            }
            let mut p = Proc::spawn("aggregator", c, 0, dir, None)?;
            wait_listening(&mut p, listen).await?;
            let pid = p.pid().context("the aggregator's pid")?;
            let ca = dir.join("aggregator/ca.pem");
            let (target, metrics, ca) = if cx.aggregator_tls {
                (format!("wss://{listen}/ws"), Scraper::new(listen, &ca)?, Some(ca))
            } else {
                (format!("ws://{listen}/ws"), Scraper::plain(listen), None)
            };
            Ok(Served {
                procs: vec![p],
                pid,
                target,
                socketio: false,
                device_key: Some(dir.join("aggregator/device-token.key")),
                ca,
                metrics: Some(metrics),
            })
        }
        Server::Gateway => {
            let data = dir.join("aggregator");
            let admin = |what: &[&str]| {
                let mut c = aggregator_command(&cx.aggregator_bin, &data);
                c.args(what).env("RUST_LOG", "warn");
                c
            };
            let provisioned = children::output(admin(&["gateway", "add", "gw-1"])).await?;
            let (name, secret) =
                provisioned.trim().split_once(' ').context("`gateway add` printed no NAME SECRET")?;
            let secret_file = dir.join("gw-1.secret");
            std::fs::write(&secret_file, secret.trim())?;
            let public_key = children::output(admin(&["device", "public-key"])).await?.trim().to_owned();
            let agg_addr = SocketAddr::from(([127, 0, 1, 1], port));
            let mut agg = Proc::spawn("aggregator", aggregator(agg_addr, false), 0, dir, None)?;
            wait_listening(&mut agg, agg_addr).await?;
            let listen = SocketAddr::from(([127, 0, 2, 1], port));
            let mut c = Command::new(&cx.gateway_bin);
            c.arg("--listen")
                .arg(listen.to_string())
                .arg("--aggregator")
                .arg(agg_addr.to_string())
                .arg("--server-name")
                .arg("localhost")
                .arg("--ca")
                .arg(data.join("ca.pem"))
                .arg("--id")
                .arg(name)
                .arg("--secret-file")
                .arg(&secret_file)
                .arg("--device-public-key")
                .arg(public_key)
                .arg("--capacity")
                .arg(max_phones.to_string())
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1");
            if let Some(every_s) = cx.gateway_status_s {
                c.arg("--status-interval-s").arg(every_s.to_string()).env("RUST_LOG", "info");
            }
            // The phones' certificate names the address they connect to; made in a folder of
            // its own (the aggregator's data folder has its own CA, for the trunks).
            let phone_tls = if cx.phone_tls {
                let sans = [listen.ip().to_string()];
                Some(self_made_tls(&cx.aggregator_bin, &dir.join("phones"), &sans).await?)
            } else {
                None
            };
            if let Some(tls) = &phone_tls {
                c.arg("--phone-tls-cert").arg(&tls.cert).arg("--phone-tls-key").arg(&tls.key);
            }
            let mut gw = Proc::spawn("gateway", c, 0, dir, None)?;
            wait_listening(&mut gw, listen).await?;
            let scraper = Scraper::new(agg_addr, &data.join("ca.pem"))?;
            let trunks = || async {
                let up = scraper.scrape().await?.value(metrics::TRUNKS).unwrap_or(0.0);
                Ok(up as u64)
            };
            let every = Duration::from_millis(200);
            let watch = Watch::default().server(&mut gw);
            if let Err(waited) =
                wait::until("trunks up", Want::AtLeast(2), every, PHASE_TIMEOUT, watch, trunks)
                    .await
                    .into_result()
            {
                bail!("the gateway's trunks: {waited}: {}", gw.log_tail(10));
            }
            let pid = gw.pid().context("the gateway's pid")?;
            Ok(Served {
                procs: vec![agg, gw],
                pid,
                target: format!("{}://{listen}/ws", if phone_tls.is_some() { "wss" } else { "ws" }),
                socketio: false,
                device_key: Some(data.join("device-token.key")),
                ca: phone_tls.map(|tls| tls.ca),
                metrics: None,
            })
        }
    }
}

/// mobile-sim with `phones` phones against `served` (spread round-robin over them when more
/// than one; the first one's protocol, the first device key and CA among them), pausing
/// `min_ms..max_ms` between bytes.
pub(crate) fn phones(
    cx: &Setup,
    served: &[&Served],
    name: &str,
    phones: u64,
    min_ms: u64,
    max_ms: u64,
    duration_s: u64,
) -> Command {
    let mut c = Command::new(&cx.sim_bin);
    for s in served {
        c.arg("--target").arg(&s.target);
    }
    c.arg("--phones")
        .arg(phones.to_string())
        .arg("--rate")
        .arg(cx.ramp_rate.to_string())
        .arg("--min-interval")
        .arg(format!("{min_ms}ms"))
        .arg("--max-interval")
        .arg(format!("{max_ms}ms"))
        .arg("--duration")
        .arg(format!("{duration_s}s"))
        .arg("--device-prefix")
        .arg(format!("{name}-"))
        .arg("--json")
        .arg("--quiet")
        .env("RUST_LOG", "warn");
    if served.first().is_some_and(|s| s.socketio) {
        c.arg("--protocol").arg("socketio");
    } else if cx.phone_engine != DEFAULT_ENGINE {
        c.arg("--engine").arg(&cx.phone_engine);
    }
    if let Some(key) = served.iter().find_map(|s| s.device_key.as_ref()) {
        c.arg("--device-key").arg(key);
    }
    if let Some(ca) = served.iter().find_map(|s| s.ca.as_ref()) {
        c.arg("--ca").arg(ca);
    }
    c
}

/// Waits up to [`PHASE_TIMEOUT`] until the server holds at least `want` more open files than
/// `base` (each phone is one), or at most `want` more when `up` is false; an error when it (or
/// `sim`, the phones' mobile-sim, when given) ends first, or time runs out. `what`: the phones,
/// in the errors.
async fn open_files(
    served: &mut Served,
    sim: Option<&mut Proc>,
    base: usize,
    want: usize,
    up: bool,
    what: &str,
) -> anyhow::Result<()> {
    let mark = (base + want) as u64;
    let want = if up { Want::AtLeast(mark) } else { Want::AtMost(mark) };
    let pid = served.pid;
    let mut watch = Watch::default().server(served);
    if let Some(sim) = sim {
        watch = watch.phones(sim);
    }
    let probe = || {
        let n = procfs::open_files(pid).with_context(|| format!("no /proc/{pid}/fd"));
        std::future::ready(n.map(|n| n as u64))
    };
    wait::until("open files", want, FILES_POLL, PHASE_TIMEOUT, watch, probe)
        .await
        .into_result()
        .with_context(|| format!("{what}: the server's open files (base {base})"))?;
    Ok(())
}

/// `server`'s figures in run `run`.
async fn measure(
    args: &CompareArgs,
    cx: &Setup,
    dir: &Path,
    served: &mut Served,
    server: Server,
    run: u32,
) -> anyhow::Result<Measurement> {
    let pid = served.pid;
    let usage = |what: &str| procfs::usage(pid).with_context(|| format!("the server is gone ({what})"));
    // --- idle -------------------------------------------------------------------------------------
    let files = procfs::open_files(pid).context("the server's open files")?;
    let before = usage("before the idle phones")?;
    let idle = phones(cx, &[&*served], "idle", args.idle, 3_600_000, 7_200_000, 3_600);
    let mut sim = Proc::spawn("mobile-sim-idle", idle, 0, dir, Some(&dir.join("idle.json")))?;
    open_files(served, Some(&mut sim), files, args.idle as usize, true, "the idle phones").await?;
    tokio::time::sleep(SETTLE).await;
    let held = usage("holding the idle phones")?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let after = usage("after the idle window")?;
    sim.signal(libc::SIGINT);
    if sim.wait(PHASE_TIMEOUT).await.is_none() {
        bail!("the idle phones did not end within {PHASE_TIMEOUT:?}");
    }
    let idle_report = sim_report(&dir.join("idle.json"))?;
    if idle_report.connections.established < args.idle || idle_report.connections.dropped > 0 {
        bail!("idle phones: {:?}", idle_report.connections);
    }
    open_files(served, None, files, 10, false, "the idle phones' closes").await?;
    let rss_per_phone = held.rss_bytes.saturating_sub(before.rss_bytes) as f64 / args.idle as f64;
    let idle_cores = (after.cpu_seconds - held.cpu_seconds) / IDLE_WINDOW.as_secs_f64();

    // --- busy -------------------------------------------------------------------------------------
    let start = usage("before the busy phones")?;
    let (min, max) = (args.interval_ms / 2, args.interval_ms * 3 / 2);
    let busy = phones(cx, &[&*served], "busy", args.busy, min.max(1), max.max(1), args.busy_s);
    let mut sim = Proc::spawn("mobile-sim-busy", busy, 0, dir, Some(&dir.join("busy.json")))?;
    let limit = Duration::from_secs(args.busy_s) + PHASE_TIMEOUT;
    let Some(status) = sim.wait(limit).await else { bail!("the busy phones did not end within {limit:?}") };
    let end = usage("after the busy phones")?;
    let busy_report = sim_report(&dir.join("busy.json"))?;
    if !status.success() || !busy_report.ok || busy_report.connections.established < args.busy {
        bail!(
            "busy phones: mobile-sim's verdict {} ({status}), {:?}, {:?}",
            busy_report.ok,
            busy_report.connections,
            busy_report.bytes
        );
    }
    let bytes = busy_report.bytes.durable;
    if bytes == 0 {
        bail!("busy phones: no byte was confirmed");
    }
    let us_per_byte = (end.cpu_seconds - start.cpu_seconds) / bytes as f64 * 1e6;
    Ok(Measurement {
        server,
        run,
        rss_per_idle_phone_bytes: rss_per_phone,
        idle_cores,
        us_per_byte,
        bytes,
        phone_engine: busy_report.engine.unwrap_or_else(|| "unknown".to_owned()),
    })
}

pub(crate) fn sim_report(path: &Path) -> anyhow::Result<SimReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not mobile-sim's report", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(server: Server, run: u32, us_per_byte: f64) -> Measurement {
        Measurement {
            server,
            run,
            rss_per_idle_phone_bytes: 500.0,
            idle_cores: 0.0,
            us_per_byte,
            bytes: 1,
            phone_engine: "host-runtime".into(),
        }
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(lower_median(vec![]), None);
        assert_eq!(lower_median(vec![7.0]), Some(7.0));
        assert_eq!(lower_median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(lower_median(vec![1.0, f64::INFINITY, 0.5, 2.0]), Some(1.0));
    }

    #[test]
    fn ratios_are_of_medians() {
        let all = [
            m(Server::Gateway, 1, 10.0),
            m(Server::Gateway, 2, 30.0),
            m(Server::Gateway, 3, 12.0),
            m(Server::NodeWs, 1, 40.0),
            m(Server::NodeWs, 2, 20.0),
            m(Server::NodeWs, 3, 24.0),
        ];
        let s = summarize(&[Server::Gateway, Server::NodeWs, Server::NodeSocketio], &all);
        assert_eq!(s.len(), 2, "a server never measured has no line");
        assert_eq!(s[0].us_per_byte, 12.0);
        assert_eq!(s[0].cpu_ratio_to_node_ws, Some(0.5));
        assert_eq!(s[0].cpu_ratio_to_node_socketio, None);
        assert_eq!(s[1].cpu_ratio_to_node_ws, Some(1.0));
    }
}
