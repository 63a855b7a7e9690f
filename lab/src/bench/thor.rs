//! `lab bench thor` (scripts/bench/thor-compare.sh): mobile-sim and Thor (the Node WebSocket load
//! tool, npm package `thor` 1.0.0) holding the same connections against the same server, side by
//! side: resident memory per held connection, time until all N are held, CPU time. A benchmark,
//! not a test: it asserts nothing about the figures, it prints them.
//!
//! How the comparison is made fair (read Thor's bin/thor and mjolnir.js to check):
//! - Thor cannot hold an idle connection. Each connection sends a message of `-B` bytes as soon as
//!   it is open, sends the next one when a reply arrives, and closes after `-M` replies: it holds
//!   a connection only while it waits for a reply. So both tools run against a server that never
//!   answers: the aggregator (`--plain` or TLS, embedded SQLite, a fresh one per run) answers a
//!   phone only with `{"durable":N}` after committing new bytes, and Thor's message is empty (`-B
//!   0`): no new bytes, no answer. Thor's connections are then as idle as mobile-sim's phones
//!   (`--min-interval 1h`: nothing sent during the hold). The only difference in traffic is
//!   Thor's one empty frame per connection (6 bytes on the wire).
//! - The same server binary and settings, the same URL path, the same connection attempts in
//!   flight (Thor `-C`, mobile-sim `-C`, and no rate limit for mobile-sim: `--rate 0`).
//! - Memory is read from outside the same way for both, summed over every process of the tool
//!   (Thor's master and its cluster workers; mobile-sim's workers if any), `--settle-s` after
//!   the server counted all N: VmRSS, and its anonymous part RssAnon (heap, stacks: where
//!   connections live). Per connection = (RssAnon sum - the same sum in a run holding 1
//!   connection) / N, so the fixed cost of the runtime (Node's ~50 MiB per process) is not
//!   spread over the connections. RssAnon and not VmRSS because this machine runs DAMON with a
//!   pageout scheme (/sys/kernel/mm/damon): with no swap it can drop only file-backed pages, such
//!   as the node binary's code, at unpredictable moments (VmRSS of identical runs differed by up
//!   to 80 MiB). The marginal cost between two N is printed too.
//! - Time is from starting the tool's command to the server counting N open sessions
//!   (`holdfast_direct_sessions`, polled every [`POLL`]), the same clock for both, process
//!   start-up included (Node forks its workers first).
//! - Each tool with its defaults otherwise: Thor forks one worker per CPU; mobile-sim runs one
//!   process up to 15,000 phones.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cli_env::Interrupts;
use tokio::process::Command;

use super::{leave, work_dir};
use crate::children::{self, Proc};
use crate::compare::{aggregator_command, median};
use crate::hold::{binary, load_average, wait_listening};
use crate::metrics::{self, Scraper};
use crate::procfs;
use crate::report::SimReport;

/// One aggregator process holds every connection of a run, under the 20,000 open files a
/// process may have.
pub const MAX_CONNECTIONS: u64 = 18_000;
/// How often the server's count of open sessions is read while the tool connects.
const POLL: Duration = Duration::from_millis(50);
/// The longest a tool may take to connect all N; the run is then reported with what it held.
const CONNECT_LIMIT: Duration = Duration::from_secs(300);
/// SIGINT is how both tools are meant to end (Thor closes every socket and prints its summary;
/// mobile-sim closes with 1000 and prints its report); whatever is left after this is killed.
const TOOL_STOP_GRACE: Duration = Duration::from_secs(60);
const SERVER_STOP_GRACE: Duration = Duration::from_secs(15);
/// A run's connections in TIME_WAIT hold local ports for 60 s: with tens of thousands of them
/// the kernel's search for a free ephemeral port slows every connect() of the next run (Thor's
/// 10,000 connections took 15, 28 and 41 s in three back-to-back runs before this wait). The
/// next run waits until fewer than this many are left, at most [`TIME_WAIT_LIMIT`].
const TIME_WAIT_LEFT: usize = 100;
const TIME_WAIT_LIMIT: Duration = Duration::from_secs(70);
/// The server's ports are drawn from below the ephemeral range (32768-60999 by default), so
/// that no client socket can hold one.
const SERVER_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Thor as published cannot be installed or run unchanged: its package.json takes `ws` and
/// `fast-stats` from git URLs (git:// is gone from GitHub), so those two become registry versions:
/// ws ^8 (the old 0.4 API Thor uses, `new WebSocket(url, {protocolVersion})`, `send(data, {binary},
/// cb)`, events open/message/close/error, still holds) and fast-stats 0.0.7. And mjolnir.js passes
/// `mask: masked` to send(), false unless --masked: ws 8 then sends unmasked client frames, which
/// RFC 6455 servers must reject (the aggregator closes with 1002), so the option is removed and
/// ws masks as a client must. Nothing else is changed.
const THOR_VERSION: &str = "1.0.0";
/// Written into the installed folder; a different value reinstalls (bump it when the fixes change).
const THOR_FIXES: &str = "ws=^8 fast-stats=0.0.7 no-mask-option";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Mode {
    /// ws:// against `aggregator --plain`.
    Plain,
    /// wss:// against the aggregator's own TLS (its CA trusted by both tools).
    Tls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    MobileSim,
    Thor,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::MobileSim => "mobile-sim",
            Tool::Thor => "thor",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ThorArgs {
    /// Connections each tool holds, one size after the other (a run holding 1 is always added:
    /// the fixed cost subtracted from the others).
    #[arg(value_name = "N", default_values_t = [5_000u64, 10_000],
          value_parser = clap::value_parser!(u64).range(2..=MAX_CONNECTIONS))]
    pub sizes: Vec<u64>,

    /// Runs per tool and size; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,

    /// Seconds all N are held before memory and CPU are read.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub settle_s: u64,

    /// Connection attempts in flight, the same for both tools (Thor -C, mobile-sim -C).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrent: u32,

    /// Which transports, in this order (plain: ws://; tls: wss:// as well).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Mode::Plain])]
    pub modes: Vec<Mode>,

    /// Thor's -W (worker processes); default: Thor's own, one per CPU.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub thor_workers: Option<u32>,

    /// Where Thor is installed (with its fixes, once).
    #[arg(long, value_name = "DIR")]
    pub thor_dir: Option<PathBuf>,

    /// Keep the work folder with every run's output.
    #[arg(long)]
    pub keep: bool,

    /// Where the aggregator and mobile-sim binaries are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone)]
struct RunFigures {
    mode: Mode,
    tool: Tool,
    n: u64,
    run: u32,
    /// From starting the tool to the server counting all N (or giving up).
    seconds_to_all: f64,
    rss_kib: u64,
    anon_kib: u64,
    user_s: f64,
    system_s: f64,
    processes: usize,
    /// The server's count of open sessions when memory was read.
    held: u64,
    /// The tool's own "all connected after" figure, when it gives one.
    own_seconds: Option<f64>,
    /// RssAnon of each of the tool's processes, MiB.
    anon_each_mib: Vec<u64>,
}

struct Setup {
    aggregator_bin: PathBuf,
    sim_bin: PathBuf,
    thor: PathBuf,
    work: PathBuf,
    settle: Duration,
    concurrent: u32,
    thor_workers: Option<u32>,
}

/// Runs the comparison; Ok(true) once every run was measured (whatever it held).
pub async fn run(args: ThorArgs) -> anyhow::Result<bool> {
    let bin_dir = crate::cluster::run::bin_dir(args.bin_dir.clone())?;
    let thor_dir = match &args.thor_dir {
        Some(d) => d.clone(),
        None => home_cache()?.join("thor").join(format!("thor-{THOR_VERSION}")),
    };
    install_thor(&thor_dir).await?;
    let ws_version = package_version(&thor_dir.join("node_modules/ws/package.json"))?;
    let mut node = Command::new("node");
    node.arg("--version");
    let node_version = children::output(node).await.context("node (Node.js is needed)")?.trim().to_owned();
    procfs::raise_files_limit();
    let work = work_dir("thor")?;
    let setup = Setup {
        aggregator_bin: binary(&bin_dir, "aggregator")?,
        sim_bin: binary(&bin_dir, "mobile-sim")?,
        thor: thor_dir.join("bin/thor"),
        work: work.clone(),
        settle: Duration::from_secs(args.settle_s),
        concurrent: args.concurrent,
        thor_workers: args.thor_workers,
    };
    let load_at_start = load_average();
    eprintln!(
        "lab bench thor: Node {node_version}, thor {THOR_VERSION} with ws {ws_version}; {} CPUs; N = {:?}; {} runs each; -C {}; modes: {:?}",
        cpus(),
        args.sizes,
        args.runs,
        args.concurrent,
        args.modes
    );
    let mut signals = Interrupts::catch()?;
    let result = tokio::select! {
        r = all_runs(&args, &setup) => r,
        signal = signals.recv() => Err(anyhow::anyhow!("{signal}: the comparison was stopped")),
    };
    let result = result.map(|figures| {
        println!("{}", table(&args, &figures, &node_version, &ws_version, &load_at_start, &load_average()));
        true
    });
    if args.keep {
        eprintln!("kept {}", work.display());
    } else {
        leave(&work, &result);
    }
    result
}

async fn all_runs(args: &ThorArgs, setup: &Setup) -> anyhow::Result<Vec<RunFigures>> {
    let mut figures = Vec::new();
    let mut used_ports = Vec::new();
    for &mode in &args.modes {
        for n in std::iter::once(1).chain(args.sizes.iter().copied()) {
            for run in 1..=args.runs {
                // Alternate which tool goes first, so neither always runs on the warmer machine.
                let order =
                    if run % 2 == 1 { [Tool::MobileSim, Tool::Thor] } else { [Tool::Thor, Tool::MobileSim] };
                for tool in order {
                    wait_time_wait(&used_ports).await;
                    let port = server_port()?;
                    used_ports.push(port);
                    let f = run_one(setup, mode, tool, n, run, port)
                        .await
                        .with_context(|| format!("{mode:?} {} N={n} run {run}", tool.name()))?;
                    eprintln!("{}", run_line(&f));
                    figures.push(f);
                }
            }
        }
    }
    Ok(figures)
}

/// One run: a fresh aggregator, one tool holding N connections, measured, then both stopped.
async fn run_one(
    setup: &Setup,
    mode: Mode,
    tool: Tool,
    n: u64,
    run: u32,
    port: u16,
) -> anyhow::Result<RunFigures> {
    let dir = setup.work.join(format!("{}-{}-{n}-{run}", spelled(mode), tool.name()));
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = aggregator_command(&setup.aggregator_bin, &data);
    // Thor cannot show device tokens: the aggregator believes phones here (a benchmark, not a
    // deployment).
    c.arg("--listen").arg(addr.to_string()).args(["--phone-auth", "off", "--max-phones"]);
    c.arg((n + 100).to_string()).env("RUST_LOG", "warn").env("NO_COLOR", "1");
    if mode == Mode::Plain {
        c.arg("--plain");
    }
    let mut server = Proc::spawn("aggregator", c, 0, &dir, Some(&dir.join("aggregator.out")))?;
    wait_listening(&mut server, addr).await?;
    let ca = data.join("ca.pem");
    let scraper = match mode {
        Mode::Plain => Scraper::plain(addr),
        Mode::Tls => Scraper::new(addr, &ca)?,
    };
    let scheme = if mode == Mode::Plain { "ws" } else { "wss" };

    let started = Instant::now();
    let mut tool_proc = match tool {
        Tool::Thor => {
            // -B 0: an empty message, which the aggregator does not answer (see the top of this
            // file); -M 1: one message.
            let mut c = Command::new("node");
            c.arg(&setup.thor).arg("-A").arg(n.to_string()).arg("-C").arg(setup.concurrent.to_string());
            c.args(["-M", "1", "-B", "0"]);
            if let Some(w) = setup.thor_workers {
                c.arg("-W").arg(w.to_string());
            }
            c.arg(format!("{scheme}://{addr}/ws?device=thor"));
            if mode == Mode::Tls {
                // Node's TLS trusts the aggregator's CA for wss://.
                c.env("NODE_EXTRA_CA_CERTS", &ca);
            }
            Proc::spawn("thor", c, 0, &dir, Some(&dir.join("tool.out")))?
        }
        Tool::MobileSim => {
            let mut c = children::clean_command(&setup.sim_bin);
            c.arg("phones").arg("--target").arg(format!("{scheme}://{addr}/ws"));
            if mode == Mode::Tls {
                c.arg("--ca").arg(&ca);
            }
            c.arg("--phones")
                .arg(n.to_string())
                .args(["--rate", "0", "-C"])
                .arg(setup.concurrent.to_string());
            c.args([
                "--min-interval",
                "1h",
                "--max-interval",
                "1h",
                "--duration",
                "30m",
                "--quiet",
                "--json",
            ]);
            Proc::spawn("mobile-sim", c, 0, &dir, Some(&dir.join("tool.out")))?
        }
    };
    let tool_pid = tool_proc.pid().context("the tool's pid")?;

    // Until the server holds all N (or the limit passes: the run is reported with what it held).
    let deadline = started + CONNECT_LIMIT;
    loop {
        if held(&scraper).await >= n || Instant::now() >= deadline || tool_proc.exited().is_some() {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let seconds_to_all = started.elapsed().as_secs_f64();

    tokio::time::sleep(setup.settle).await;
    let pids = procfs::tree(tool_pid);
    let status =
        |field: &str| pids.iter().map(|&p| procfs::status_kib(p, field).unwrap_or(0)).collect::<Vec<_>>();
    let anon_each = status("RssAnon");
    let rss_kib = status("VmRSS").iter().sum();
    let (user_s, system_s) =
        pids.iter().filter_map(|&p| procfs::cpu_split(p)).fold((0.0, 0.0), |(u, s), (a, b)| (u + a, s + b));
    let held_now = held(&scraper).await;

    tool_proc.signal(libc::SIGINT);
    if tool_proc.wait(TOOL_STOP_GRACE).await.is_none() {
        eprintln!("lab bench thor: {} did not end {TOOL_STOP_GRACE:?} after SIGINT: killed", tool.name());
    }
    for &p in &pids {
        // SAFETY: kill(2) on the tool's own processes, found under its pid a moment ago; the
        // tool's direct child is not reaped yet (Proc holds it), its workers are ours to end.
        unsafe {
            libc::kill(p as i32, libc::SIGKILL);
        }
    }
    let _ = tool_proc.wait(SERVER_STOP_GRACE).await;
    server.stop(SERVER_STOP_GRACE).await;

    let out = std::fs::read_to_string(dir.join("tool.out")).unwrap_or_default();
    let own_seconds = match tool {
        Tool::Thor => thor_online_seconds(&out),
        Tool::MobileSim => {
            serde_json::from_str::<SimReport>(&out).ok().and_then(|r| r.connect_rate.all_connected_after_s)
        }
    };
    Ok(RunFigures {
        mode,
        tool,
        n,
        run,
        seconds_to_all,
        rss_kib,
        anon_kib: anon_each.iter().sum(),
        user_s,
        system_s,
        processes: pids.len(),
        held: held_now,
        own_seconds,
        anon_each_mib: anon_each.iter().map(|k| (k + 512) / 1024).collect(),
    })
}

/// The server's open phone sessions (0 while it cannot say).
async fn held(scraper: &Scraper) -> u64 {
    scraper.scrape().await.ok().and_then(|s| s.value(metrics::DIRECT_SESSIONS)).map_or(0, |v| v as u64)
}

/// Thor's own "all connected" figure: its summary's `Online <ms> milliseconds` line, in seconds.
fn thor_online_seconds(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.starts_with("Online"))?;
    let ms: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(ms / 1000.0)
}

/// A port below the ephemeral range that nothing listens on now.
fn server_port() -> anyhow::Result<u16> {
    let span = u32::from(SERVER_PORTS.end - SERVER_PORTS.start);
    for _ in 0..100 {
        let draw = u32::from_str_radix(&crate::cluster::random_hex(4), 16).unwrap_or(0);
        let port = SERVER_PORTS.start + (draw % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {SERVER_PORTS:?}")
}

async fn wait_time_wait(ports: &[u16]) {
    if ports.is_empty() {
        return;
    }
    let deadline = Instant::now() + TIME_WAIT_LIMIT;
    loop {
        let left = procfs::time_wait_on(ports);
        if left < TIME_WAIT_LEFT {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("lab bench thor: {left} connections of earlier runs still in TIME_WAIT");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Installs Thor into `dir` with the fixes of [`THOR_FIXES`], unless it is there already.
async fn install_thor(dir: &Path) -> anyhow::Result<()> {
    let marker = dir.join(".holdfast-fixes");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == THOR_FIXES)
        && dir.join("node_modules/ws").is_dir()
    {
        return Ok(());
    }
    eprintln!("lab bench thor: installing thor {THOR_VERSION} into {}", dir.display());
    let cache = dir.parent().context("thor's folder has no parent")?;
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(cache.join("package"));
    std::fs::create_dir_all(cache)?;
    let mut pack = Command::new("npm");
    pack.current_dir(cache).args(["pack", "--silent", &format!("thor@{THOR_VERSION}")]);
    let tarball = children::output(pack).await.context("npm pack (Node.js and npm are needed)")?;
    let tarball = cache.join(tarball.trim());
    let mut untar = Command::new("tar");
    untar.current_dir(cache).arg("xzf").arg(&tarball);
    children::output(untar).await?;
    std::fs::rename(cache.join("package"), dir)?;
    std::fs::remove_file(&tarball)?;

    let package = dir.join("package.json");
    std::fs::write(&package, fixed_package_json(&std::fs::read_to_string(&package)?)?)?;
    let mjolnir = dir.join("mjolnir.js");
    std::fs::write(&mjolnir, fixed_mjolnir(&std::fs::read_to_string(&mjolnir)?)?)?;

    let mut install = Command::new("npm");
    install.current_dir(dir).args(["install", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"]);
    children::output(install).await.context("npm install in thor's folder")?;
    std::fs::write(&marker, THOR_FIXES)?;
    Ok(())
}

/// Thor's package.json with registry versions of the two dependencies it takes from git.
fn fixed_package_json(text: &str) -> anyhow::Result<String> {
    let mut p: serde_json::Value = serde_json::from_str(text).context("thor's package.json")?;
    let deps = p.get_mut("dependencies").and_then(|d| d.as_object_mut()).context("no dependencies")?;
    deps.insert("ws".into(), "^8".into());
    deps.insert("fast-stats".into(), "0.0.7".into());
    Ok(serde_json::to_string_pretty(&p)? + "\n")
}

/// Thor's mjolnir.js without the `mask: masked` option of its send() (see [`THOR_VERSION`]).
fn fixed_mjolnir(text: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.trim() == "mask: masked" {
            continue;
        }
        if line.trim() == "binary: binary," {
            out.push_str(&line.replacen("binary: binary,", "binary: binary", 1));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    if out.contains("mask:") {
        bail!("thor's mjolnir.js still passes a mask option: a different Thor than {THOR_VERSION}?");
    }
    Ok(out)
}

fn package_version(path: &Path) -> anyhow::Result<String> {
    let p: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    Ok(p.get("version").and_then(|v| v.as_str()).unwrap_or("?").to_owned())
}

fn home_cache() -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/holdfast"))
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn spelled(mode: Mode) -> &'static str {
    match mode {
        Mode::Plain => "plain",
        Mode::Tls => "tls",
    }
}

fn run_line(f: &RunFigures) -> String {
    format!(
        "    {:<5} {:<10} N={:<6} run {}: {:6.2} s to all held, RSS {:7} KiB, anon {:7} KiB ({} MiB), CPU {:5.2} s user {:5.2} s sys, {} processes, server held {}, tool says {} s",
        spelled(f.mode),
        f.tool.name(),
        f.n,
        f.run,
        f.seconds_to_all,
        f.rss_kib,
        f.anon_kib,
        joined(&f.anon_each_mib),
        f.user_s,
        f.system_s,
        f.processes,
        f.held,
        f.own_seconds.map_or("-".to_owned(), |s| format!("{s:.2}"))
    )
}

fn joined(mib: &[u64]) -> String {
    mib.iter().map(u64::to_string).collect::<Vec<_>>().join("+")
}

/// The medians per mode, tool and N; the marginal cost between sizes; every run.
fn table(args: &ThorArgs, all: &[RunFigures], node: &str, ws: &str, load0: &str, load1: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nIdle connections held against the aggregator (--plain or TLS, embedded SQLite, a fresh process per run); medians of {} runs",
        args.runs
    );
    let _ = writeln!(
        s,
        "Node {node}, thor {THOR_VERSION} (ws {ws}), {} CPUs, -C {}, measured {}s after all held;",
        cpus(),
        args.concurrent,
        args.settle_s
    );
    let _ = writeln!(s, "load average at start {load0}, at end {load1}");
    let _ = writeln!(
        s,
        "{:<5} {:<10} {:>6} {:>12} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}  RssAnon per process (MiB)",
        "mode",
        "tool",
        "N",
        "to all held",
        "tool says",
        "VmRSS",
        "RssAnon",
        "per conn",
        "CPU user",
        "CPU sys"
    );
    let sizes: Vec<u64> = std::iter::once(1).chain(args.sizes.iter().copied()).collect();
    for &mode in &args.modes {
        for tool in [Tool::MobileSim, Tool::Thor] {
            let runs = |n: u64| all.iter().filter(move |f| f.mode == mode && f.tool == tool && f.n == n);
            let med = |n: u64, pick: fn(&RunFigures) -> f64| median(runs(n).map(pick).collect());
            let anon = |n: u64| med(n, |f| f.anon_kib as f64);
            let base = anon(1);
            for &n in &sizes {
                let per = match (n > 1, anon(n), base) {
                    (true, Some(a), Some(b)) => format!("{:.2} KiB", (a - b) / n as f64),
                    _ => "-".to_owned(),
                };
                // The per-process split of the run whose RssAnon sum is the median (or nearest).
                let each = anon(n)
                    .and_then(|m| {
                        runs(n).min_by(|a, b| {
                            (a.anon_kib as f64 - m).abs().total_cmp(&(b.anon_kib as f64 - m).abs())
                        })
                    })
                    .map_or(String::new(), |f| joined(&f.anon_each_mib));
                let own = runs(n).filter_map(|f| f.own_seconds).collect::<Vec<_>>();
                let _ = writeln!(
                    s,
                    "{:<5} {:<10} {:>6} {:>10.2} s {:>8} s {:>6.1} MiB {:>6.1} MiB {:>10} {:>7.2} s {:>7.2} s  {}",
                    spelled(mode),
                    tool.name(),
                    n,
                    med(n, |f| f.seconds_to_all).unwrap_or(f64::NAN),
                    median(own).map_or("-".to_owned(), |v| format!("{v:.2}")),
                    med(n, |f| f.rss_kib as f64).unwrap_or(f64::NAN) / 1024.0,
                    anon(n).unwrap_or(f64::NAN) / 1024.0,
                    per,
                    med(n, |f| f.user_s).unwrap_or(f64::NAN),
                    med(n, |f| f.system_s).unwrap_or(f64::NAN),
                    each
                );
            }
            // The marginal cost between consecutive sizes: independent of any fixed cost.
            for pair in args.sizes.windows(2) {
                let (p, n) = (pair[0], pair[1]);
                if let (true, Some(a), Some(b)) = (n > p, anon(p), anon(n)) {
                    let _ = writeln!(
                        s,
                        "{:<5} {:<10} marginal {p} -> {n}: {:.2} KiB RssAnon per connection",
                        spelled(mode),
                        tool.name(),
                        (b - a) / (n - p) as f64
                    );
                }
            }
        }
    }
    let _ = writeln!(s, "\nEvery run:");
    let mut sorted: Vec<&RunFigures> = all.iter().collect();
    sorted.sort_by_key(|f| (f.mode, f.tool, f.n, f.run));
    for f in sorted {
        let _ = writeln!(s, "{}", run_line(f));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thor_summary() {
        let out = "Thor: version: 1.0.0\n\nOnline               1523 milliseconds\nTime taken           2000 milliseconds\n";
        assert_eq!(thor_online_seconds(out), Some(1.523));
        assert_eq!(thor_online_seconds("no summary"), None);
    }

    #[test]
    fn thor_fixes() {
        let pkg = r#"{"name":"thor","dependencies":{"ws":"git://github.com/x/ws","fast-stats":"git://y","async":"0.2"}}"#;
        let fixed: serde_json::Value = serde_json::from_str(&fixed_package_json(pkg).unwrap()).unwrap();
        assert_eq!(fixed["dependencies"]["ws"], "^8");
        assert_eq!(fixed["dependencies"]["fast-stats"], "0.0.7");
        assert_eq!(fixed["dependencies"]["async"], "0.2");

        let js = "  socket.send(data, {\n    binary: binary,\n    mask: masked\n  }, cb);\n";
        assert_eq!(fixed_mjolnir(js).unwrap(), "  socket.send(data, {\n    binary: binary\n  }, cb);\n");
        // Another shape of the option is not silently left in.
        assert!(fixed_mjolnir("send(d, { mask: true, binary: b })\n").is_err());
    }
}
