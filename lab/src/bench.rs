//! `lab bench`: benchmarks whose figures docs/benchmarks.md records (the scripts of
//! scripts/bench/ call them), on a local cluster ([`crate::cluster`]) or on single servers started
//! as `lab compare` starts them, each in a folder and on a port of its own, measured from /proc
//! ([`procfs`]), the aggregators' metrics ([`crate::metrics`]) and the gateway's status line.
//!
//! - `trunks`: many trunks through nginx into several aggregators. A private PostgreSQL, A
//!   aggregators behind nginx (one worker), G virtual gateways (one mobile-sim process) of P
//!   sessions on 2 TLS trunks each, every session sending a byte every 1-5 s for D, verified per
//!   session against the database. Prints how the trunks spread (halfway) and everyone's memory
//!   over the middle half of the run (the median of samples every [`RSS_SAMPLE`], and their range),
//!   mobile-sim's verdict with bytes per second, each process's CPU over the run, and each
//!   aggregator's flushes, rows and flush lag. A run whose verification fails prints why and no
//!   figures, and exits 1.
//! - `nginx-memory`: memory per idle phone in nginx in front of the aggregators and in the
//!   aggregator behind it. Per TLS variant, one aggregator on the embedded store, one nginx worker
//!   and N idle wss:// phones through nginx: the RSS of the nginx worker and of the aggregator
//!   before and while holding them, divided by N.
//! - `gateway` ([`gateway`]): the host gateway's memory per idle phone session, and phone bytes
//!   per second through it, verified per device.
//! - `aggregator-memory` ([`aggregator_memory`]): memory per idle direct phone in one aggregator,
//!   over TLS and plain.
//! - `trunk-throughput` ([`trunk_throughput`]): virtual gateways' trunks straight into one
//!   aggregator on PostgreSQL: bytes and rows per second, flush lag.
//! - `mobile-sim-cost` ([`mobile_sim_cost`], scripts/bench/mobile-sim-cost.sh): mobile-sim's own
//!   CPU per held idle phone and per byte sent, one process on one host gateway.
//! - `gateway-tls-cost` ([`gateway_tls_cost`], scripts/bench/gateway-tls-cost.sh): the host
//!   gateway's RSS and CPU to accept per phone, ws against wss phones.
//! - `thor` ([`thor`], scripts/bench/thor-compare.sh): mobile-sim next to Thor, the Node load
//!   tool, holding the same idle connections.
//! - `write-path` ([`crate::bench::write_path`]) and `flush-cpu` ([`crate::bench::flush_cpu`]): aggregator
//!   builds' write paths side by side, one aggregator at a time on a fresh database of its own
//!   ([`crate::bench::solo`]), no cluster; `fold` ([`crate::bench::fold`]): the sessions table's bounded
//!   growth over runs into one such aggregator.
//!
//! `gateway`, `aggregator-memory`, `mobile-sim-cost`, `gateway-tls-cost` and `lab gateway-cost`
//! share [`cost`]: their frame, idle phones held and released, the gateway's count of held
//! phones, and CPU windows aligned to its once-a-second counter line.
//!
//! The run's folder is removed when it went well, and kept (its path printed) when it did not.

pub mod aggregator_memory;
pub mod cost;
pub mod flush_cpu;
pub mod fold;
pub mod gateway;
pub mod gateway_tls_cost;
pub mod mobile_sim_cost;
pub mod solo;
pub mod thor;
pub mod trunk_throughput;
pub mod write_path;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use cli_env::Interrupts;

use crate::children::Proc;
use crate::cluster::load::{Load, LoadSpec};
use crate::cluster::{spelled, Cluster, GatewayKind, Settings, StoreKind, TlsMode, MAX_AGGREGATORS};
use crate::metrics::{Scrape, Window, DIRECT_SESSIONS, FLUSHES, FLUSH_LAG, FLUSH_ROWS, TRUNKS};
use crate::procfs;
use crate::report::SimReport;
use crate::wait::{self, End, Waited, Want, Watch};

/// Trunk links per virtual gateway (the gateways' own default).
const LINKS: u32 = 2;
/// A session's pause between bytes.
const MIN_INTERVAL: &str = "1s";
const MAX_INTERVAL: &str = "5s";
/// The shortest run worth a halfway look, and the longest a bench may ask for.
const MIN_DURATION: Duration = Duration::from_secs(2);
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// How often `trunks` samples everyone's RSS over the middle half of its run: the aggregators'
/// RSS swings by tens of MiB within a run as flushes come and go, so one sample said little
/// (docs/benchmarks.md, "What a trunk costs the aggregator").
const RSS_SAMPLE: Duration = Duration::from_millis(500);
/// How long mobile-sim may outlive its duration (drain, verification of every session, report).
const LOAD_MARGIN: Duration = Duration::from_secs(600);
/// Open files a process needs beyond its connections (listeners, logs, the store).
const FILES_SPARE: u64 = 512;
/// How long a process gets to stop cleanly.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Idle phones: connected per second, handshakes in flight at once, and a pause between bytes
/// longer than the hold (so nothing is sent while their memory is measured).
const IDLE_RATE: &str = "1000";
const IDLE_CONCURRENT: &str = "256";
const IDLE_INTERVAL: &str = "1h";
/// After nginx and the aggregators start, before their memory is read with no load.
const IDLE_SETTLE_EMPTY: Duration = Duration::from_secs(1);
/// The longest the phones may take to be all held, and how often that is asked.
const IDLE_HELD_WAIT: Duration = Duration::from_secs(120);
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Once all are held, before their memory is read (the last handshakes' buffers settle).
const IDLE_SETTLE_HELD: Duration = Duration::from_secs(3);
/// The idle phones' run outlasts the wait and the settle; they are stopped once measured.
const IDLE_DURATION: Duration = Duration::from_secs(150);

/// Which bench.
#[derive(Debug, clap::Subcommand)]
pub enum Bench {
    /// Many trunks through nginx into several aggregators (scripts/bench/cluster-trunks.sh):
    /// G virtual gateways of P sessions on 2 TLS trunks each against a private PostgreSQL,
    /// verified per session; the trunks' spread, memory, CPU, flushes and flush lag.
    Trunks(TrunksArgs),
    /// Memory per idle phone in the nginx worker and in the aggregator behind it, per TLS variant
    /// (scripts/bench/nginx-memory.sh).
    NginxMemory(NginxMemoryArgs),
    /// mobile-sim's own CPU per held idle phone and per byte sent (scripts/bench/mobile-sim-cost.sh):
    /// one mobile-sim process holding N phones on one host gateway, idle and then sending.
    MobileSimCost(mobile_sim_cost::MobileSimCostArgs),
    /// What TLS for phones costs the host gateway (scripts/bench/gateway-tls-cost.sh): its RSS
    /// and CPU to accept per idle phone, ws against wss.
    GatewayTlsCost(gateway_tls_cost::GatewayTlsCostArgs),
    /// mobile-sim and Thor (the Node WebSocket load tool) holding the same idle connections
    /// against the same aggregator: memory per connection, time to all held, CPU
    /// (scripts/bench/thor-compare.sh).
    Thor(thor::ThorArgs),
    /// The host gateway (scripts/bench/gateway.sh): its memory per idle phone session, and phone
    /// bytes per second through it into an aggregator on SQLite, verified per device.
    Gateway(gateway::GatewayArgs),
    /// Memory per idle direct phone in one aggregator, over TLS and plain
    /// (scripts/bench/aggregator-memory.sh).
    AggregatorMemory(aggregator_memory::AggregatorMemoryArgs),
    /// Phone bytes per second through virtual gateways' trunks straight into one aggregator on
    /// PostgreSQL, with its flush lag and rows per second (scripts/bench/trunk-throughput.sh).
    TrunkThroughput(trunk_throughput::TrunkThroughputArgs),
    /// The write path side by side (scripts/bench/write-path.sh): the same trunk load into each
    /// given aggregator binary in turn, each run on a fresh database; throughput, flush lag and
    /// CPU per run, and their medians per binary.
    WritePath(crate::bench::write_path::WritePathArgs),
    /// The aggregator's CPU per phone byte with direct phones, few sessions changing per flush
    /// (scripts/bench/flush-cpu.sh): per given aggregator binary, each run on a fresh database;
    /// the medians and their ratio to the first.
    FlushCpu(crate::bench::flush_cpu::FlushCpuArgs),
    /// Bounded growth of the sessions table (scripts/bench/fold.sh): runs one after the other
    /// into one aggregator, the table's rows after each, every device verified again in SQL at
    /// the end.
    Fold(crate::bench::fold::FoldArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrunksArgs {
    /// Virtual gateways (all in one mobile-sim process), each on 2 trunk links.
    #[arg(long, default_value_t = 1000, value_name = "G",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub gateways: u32,

    /// Phone sessions per gateway.
    #[arg(long, default_value_t = 100, value_name = "P",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub sessions: u32,

    /// How long the sessions send, ramp included (10s, 500ms, 5m, 1h; a bare number is
    /// seconds); memory is sampled over its middle half, the trunks counted at half of it.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Aggregators behind nginx (at most 16).
    #[arg(long, default_value_t = 2, value_name = "A",
          value_parser = clap::value_parser!(u32).range(1..=MAX_AGGREGATORS as i64))]
    pub aggregators: u32,

    /// Where TLS ends: at nginx, or at the aggregators (nginx passes TCP through).
    #[arg(long, value_enum, default_value = "terminate")]
    pub tls: TlsMode,

    /// Where the aggregator and mobile-sim binaries are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct NginxMemoryArgs {
    /// Idle phones held through nginx; the nginx worker holds 2 files per phone, so twice this
    /// must fit the open-file limit.
    #[arg(long, default_value_t = 8000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub phones: u64,

    /// The TLS variants to measure, in this order: terminate (nginx does TLS 1.3, the aggregator
    /// runs --plain) and passthrough (nginx's stream proxy, the aggregator does TLS).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [TlsMode::Terminate, TlsMode::Passthrough])]
    pub variants: Vec<TlsMode>,

    /// Where the aggregator and mobile-sim binaries are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// Runs a bench: Ok(true) when it measured a run that went well, Ok(false) when the run failed
/// (it printed why), an error when it could not run.
pub async fn run(bench: Bench) -> anyhow::Result<bool> {
    match bench {
        Bench::Trunks(args) => trunks(args).await,
        Bench::NginxMemory(args) => nginx_memory(args).await,
        Bench::MobileSimCost(args) => mobile_sim_cost::run(args).await,
        Bench::GatewayTlsCost(args) => gateway_tls_cost::run(args).await,
        Bench::Thor(args) => thor::run(args).await,
        Bench::Gateway(args) => gateway::run(args).await,
        Bench::AggregatorMemory(args) => aggregator_memory::run(args).await,
        Bench::TrunkThroughput(args) => trunk_throughput::run(args).await,
        Bench::WritePath(args) => crate::bench::write_path::run(args).await,
        Bench::FlushCpu(args) => crate::bench::flush_cpu::run(args).await,
        Bench::Fold(args) => crate::bench::fold::run(args).await,
    }
}

/// A duration as mobile-sim takes it ([`cli_env::parse_duration`]), within [`MIN_DURATION`] and
/// [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = cli_env::parse_duration(s)?;
    if d < MIN_DURATION || d > MAX_DURATION {
        return Err(format!("{s:?}: from {MIN_DURATION:?} to {MAX_DURATION:?}"));
    }
    Ok(d)
}

/// `d` as mobile-sim takes it.
pub(crate) fn sim_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// A folder of the bench's own under the temporary folder. As root the private PostgreSQL runs
/// as the postgres account, which must traverse it (not list it).
pub(crate) fn work_dir(name: &str) -> anyhow::Result<PathBuf> {
    let work = std::env::temp_dir().join(format!("holdfast-bench-{name}.{}", crate::cluster::random_hex(4)));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o711))
        .with_context(|| format!("chmod 711 {}", work.display()))?;
    Ok(work)
}

/// Removes the run's folder when it went well; keeps it, for its logs, when not.
pub(crate) fn leave(work: &Path, result: &anyhow::Result<bool>) {
    if matches!(result, Ok(true)) {
        let _ = std::fs::remove_dir_all(work);
    } else {
        eprintln!("the run's folder (logs, reports) is kept in {}", work.display());
    }
}

/// The open-file limit, raised to its hard limit (children inherit it); an error when `needed`
/// files do not fit.
pub(crate) fn files_for(needed: u64, what: &str) -> anyhow::Result<()> {
    let limit = procfs::raise_files_limit();
    if needed > limit {
        bail!("{what} need {needed} open files, the limit is {limit}: raise the hard limit (ulimit -Hn) or ask for less");
    }
    Ok(())
}

/// The nginx worker: the child of the cluster's nginx master (the cluster runs one).
fn nginx_worker(cluster: &Cluster) -> anyhow::Result<u32> {
    let master = cluster.pid("nginx").context("nginx was not started")?;
    // tree() lists the root first, then its children.
    procfs::tree(master).get(1).copied().with_context(|| format!("nginx (pid {master}) has no worker"))
}

/// A watched process's CPU and memory now; an error when it is gone.
pub(crate) fn usage(name: &str, pid: u32) -> anyhow::Result<procfs::Usage> {
    procfs::usage(pid).with_context(|| format!("{name} (pid {pid}) is gone"))
}

fn kib(bytes: u64) -> u64 {
    bytes / 1024
}

/// `amount` per second over `seconds` (0 when no time passed): bytes or rows per second, and
/// CPU seconds per second, which is cores.
fn per_second(amount: f64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        amount / seconds
    } else {
        0.0
    }
}

/// Bytes of resident memory per phone that appeared between `before` and `during` (negative
/// when the process shrank); `None` for no phone.
fn per_phone(before: u64, during: u64, phones: u64) -> Option<i64> {
    if phones == 0 {
        return None;
    }
    let per = (i128::from(during) - i128::from(before)) / i128::from(phones);
    Some(per.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
}

/// A histogram bucket's bound as the aggregator's page spells it ("-" when nothing was observed).
fn bound(le: Option<f64>) -> String {
    match le {
        None => "-".into(),
        Some(v) if v.is_infinite() => "+Inf".into(),
        Some(v) => format!("{v}s"),
    }
}

/// A counter's growth between two scrapes of aggregator `i`; an error when it is missing.
fn grew(before: &Scrape, after: &Scrape, i: u32, name: &str) -> anyhow::Result<f64> {
    let read = |s: &Scrape| s.value(name).with_context(|| format!("metrics of aggregator {i}: no {name}"));
    Ok(read(after)? - read(before)?)
}

/// Why a mobile-sim run is not to be reported as fine: it did not exit 0, its verdict failed,
/// it verified nothing, not every device it played, or found a byte lost or counted twice.
/// Empty when it went well.
fn problems(exited_ok: bool, r: &SimReport, devices: u64) -> Vec<String> {
    let mut bad = Vec::new();
    if !exited_ok {
        bad.push("mobile-sim did not exit 0".to_owned());
    }
    if !r.ok {
        bad.push(format!("verdict FAILED: {}", r.failure_lines().join("; ")));
    }
    match &r.verification {
        None => bad.push("no verification in the report".into()),
        Some(v) => {
            if v.devices_checked != devices || v.devices_expected != devices {
                bad.push(format!(
                    "{} of {} devices checked, the bench played {devices}",
                    v.devices_checked, v.devices_expected
                ));
            }
            if v.lost_bytes > 0 || v.double_counted_bytes > 0 {
                bad.push(format!("{} bytes lost, {} double-counted", v.lost_bytes, v.double_counted_bytes));
            }
        }
    }
    bad
}

/// Adds one part's outcome (a variant, a mode) to the bench's `result`: a part that failed
/// (Ok(false), it printed why) fails the bench, which goes on with the next part; an error ends
/// the bench (false: stop), with `part` for context.
fn tally(
    result: &mut anyhow::Result<bool>,
    outcome: anyhow::Result<bool>,
    part: impl FnOnce() -> String,
) -> bool {
    match outcome {
        Ok(true) => true,
        Ok(false) => {
            *result = Ok(false);
            true
        }
        Err(e) => {
            *result = Err(e.context(part()));
            false
        }
    }
}

/// Asks `count` (a server's own count of the phones it holds) every [`IDLE_POLL`] until it
/// reaches `want`, `sim` (the phones' mobile-sim) ends, or [`IDLE_HELD_WAIT`] passes.
async fn wait_held<F, Fut>(want: u64, sim: &mut Proc, mut count: F) -> Waited
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<f64>>,
{
    let watch = Watch::default().phones(sim);
    wait::until("phones held", Want::AtLeast(want), IDLE_POLL, IDLE_HELD_WAIT, watch, || {
        let read = count();
        async move { read.await.map(|n| n as u64) }
    })
    .await
}

// --- trunks ----------------------------------------------------------------------------------------

/// A process whose CPU and memory the trunks bench follows.
struct Watched {
    name: String,
    pid: u32,
    /// Its aggregator number (1-based), for an aggregator.
    aggregator: Option<u32>,
    before: procfs::Usage,
}

/// A cluster of `aggregators` on PostgreSQL and `gateways` virtual gateways of `sessions` on
/// [`LINKS`] trunks each, every session sending a byte every [`MIN_INTERVAL`]-[`MAX_INTERVAL`];
/// the aggregators log warnings only.
fn trunk_settings(
    bin_dir: Option<PathBuf>,
    gateways: u32,
    sessions: u32,
    aggregators: u32,
    tls: TlsMode,
) -> anyhow::Result<Settings> {
    let mut s = Settings::new(crate::cluster::run::bin_dir(bin_dir)?);
    s.store = StoreKind::Postgres;
    s.tls = tls;
    s.aggregators = aggregators;
    s.gateways = gateways;
    s.gateway = GatewayKind::Virtual;
    s.sessions = sessions;
    s.links = LINKS;
    s.min_interval = MIN_INTERVAL.into();
    s.max_interval = MAX_INTERVAL.into();
    s.aggregator_log = "warn".into();
    Ok(s)
}

/// mobile-sim's report of a load of virtual gateways on `trunks` trunks that ended with
/// `status`, printed with its verdict and the bytes per second; `None` when the run failed (it
/// printed why, and the bench prints no figures).
fn trunk_verdict(
    cluster: &Cluster,
    load: &Load,
    status: Option<std::process::ExitStatus>,
    trunks: u64,
) -> Option<SimReport> {
    let exited_ok = status.is_some_and(|s| s.success());
    let report = match load.read() {
        Ok(r) => r,
        Err(e) => {
            println!(
                "FAILED: mobile-sim ({}): {e:#}",
                status.map_or("still running, killed".into(), |s| s.to_string())
            );
            println!("{}", crate::cluster::tail(&cluster.dir.join("gateways.log"), 20));
            return None;
        }
    };
    // Its report's path is printed only when the run fails: the folder of a good run is removed.
    println!("mobile-sim:");
    match report.connect_rate.all_connected_after_s {
        Some(t) => println!("  trunks       all {trunks} up after {t:.1} s"),
        None => println!("  trunks       never all {trunks} up at once"),
    }
    print!("{}", crate::cluster::run::summary(&report));
    let bad = problems(exited_ok, &report, load.phones);
    if !bad.is_empty() {
        for b in &bad {
            println!("FAILED: {b}");
        }
        return None;
    }
    let sim_cpu = report.cpu.as_ref().map_or("not measured".into(), |c| {
        format!("{:.3} cores over its {:.1} s hold window", c.cores, c.window_seconds)
    });
    println!(
        "  rate         {:.0} bytes per second sent over the {:.1} s run; mobile-sim's CPU {sim_cpu}",
        per_second(report.bytes.sent as f64, report.run_seconds),
        report.run_seconds
    );
    Some(report)
}

/// Runs `lab bench trunks`.
pub async fn trunks(args: TrunksArgs) -> anyhow::Result<bool> {
    let trunks = u64::from(args.gateways) * u64::from(LINKS);
    // nginx holds 2 files per proxied trunk, mobile-sim one per trunk.
    files_for(
        trunks.saturating_mul(2).saturating_add(FILES_SPARE),
        &format!("{trunks} trunks through nginx"),
    )?;
    let s = trunk_settings(args.bin_dir.clone(), args.gateways, args.sessions, args.aggregators, args.tls)?;
    let work = work_dir("trunks")?;
    let result = on_cluster(&work, s, &args, |cluster, args| Box::pin(measure_trunks(cluster, args))).await;
    leave(&work, &result);
    result
}

/// A bench's measurement on a cluster, under way (see [`on_cluster`]).
type Measuring<'c> = Pin<Box<dyn Future<Output = anyhow::Result<bool>> + 'c>>;

/// Makes a cluster of `settings` in `work` (on a port of its own) and runs `measure` on it; then
/// stops everything started on it, whether the measurement went well, failed, or was stopped by
/// a signal (an error). `measure` borrows the cluster and the bench's arguments.
async fn on_cluster<A>(
    work: &Path,
    settings: Settings,
    args: &A,
    measure: for<'c> fn(&'c mut Cluster, &'c A) -> Measuring<'c>,
) -> anyhow::Result<bool> {
    let mut signals = Interrupts::catch()?;
    let mut cluster = Cluster::init(&work.join("cluster"), crate::cluster::free_port()?, settings).await?;
    let result = tokio::select! {
        r = measure(&mut cluster, args) => r,
        signal = signals.recv() => Err(anyhow!("{signal}: the bench was stopped")),
    };
    cluster.stop_all().await;
    result
}

async fn measure_trunks(cluster: &mut Cluster, args: &TrunksArgs) -> anyhow::Result<bool> {
    cluster.start_servers().await?;
    let trunks = u64::from(args.gateways) * u64::from(LINKS);
    println!(
        "cluster: private PostgreSQL, {} aggregator{} behind nginx on {} (TLS {}); {} gateways x {} sessions \
         on {LINKS} trunks each ({trunks} trunks), a byte every {MIN_INTERVAL}-{MAX_INTERVAL} per session for {:?}",
        args.aggregators,
        if args.aggregators == 1 { "" } else { "s" },
        cluster.front(),
        spelled(args.tls),
        args.gateways,
        args.sessions,
        args.duration
    );
    // The aggregators fill their fixed tables (the ledger) in their first second: the memory
    // "before" is read once that is done, not while the last one started is still at it.
    tokio::time::sleep(IDLE_SETTLE_EMPTY).await;
    let worker = nginx_worker(cluster)?;
    let mut watched = vec![Watched {
        name: "nginx".into(),
        pid: worker,
        aggregator: None,
        before: usage("nginx", worker)?,
    }];
    for i in 1..=args.aggregators {
        let name = format!("aggregator-{i}");
        let pid = cluster.pid(&name).with_context(|| format!("{name} was not started"))?;
        let before = usage(&name, pid)?;
        watched.push(Watched { name, pid, aggregator: Some(i), before });
    }
    // The flushes of the run alone: the counters and the histogram are read before and after.
    let mut scrapes_before = Vec::new();
    for i in 1..=args.aggregators {
        scrapes_before.push(cluster.scrape(i).await?);
    }

    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let spec = LoadSpec::new(&sim_duration(args.duration), &format!("bench{stamp}-"));
    let started = Instant::now();
    let load = cluster.start_virtual_gateways(&spec)?;
    let sim = cluster.pid(&load.name).context("mobile-sim was not started")?;

    // Over the middle half of the run: everyone's memory, sampled; halfway, where the trunks are.
    let (quarter, half) = (args.duration / 4, args.duration / 2);
    tokio::time::sleep(quarter).await;
    let mut rss: Vec<Vec<f64>> = vec![Vec::new(); watched.len() + 1];
    let mut trunks_at_half = None;
    while started.elapsed() < quarter * 3 {
        for (w, samples) in watched.iter().zip(rss.iter_mut()) {
            samples.push(usage(&w.name, w.pid)?.rss_bytes as f64);
        }
        // mobile-sim with its worker processes, if it started any.
        rss[watched.len()].push(procfs::usage_of(&procfs::tree(sim)).rss_bytes as f64);
        if trunks_at_half.is_none() && started.elapsed() >= half {
            trunks_at_half = Some(trunks_now(cluster, &watched).await?);
        }
        tokio::time::sleep(RSS_SAMPLE).await;
    }
    if trunks_at_half.is_none() {
        trunks_at_half = Some(trunks_now(cluster, &watched).await?);
    }
    let spread = |samples: &[f64]| {
        let (lo, hi) = samples.iter().fold((f64::MAX, 0.0_f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let median = crate::compare::median(samples.to_vec()).unwrap_or(0.0);
        format!(
            "{} KiB (median of {}, {}-{})",
            kib(median as u64),
            samples.len(),
            kib(lo as u64),
            kib(hi as u64)
        )
    };
    println!(
        "RSS from {:.1} s to {:.1} s, every {RSS_SAMPLE:?}; trunks at {:.1} s:",
        quarter.as_secs_f64(),
        (quarter * 3).as_secs_f64(),
        half.as_secs_f64()
    );
    let mut at_half = trunks_at_half.unwrap_or_default().into_iter();
    for (w, samples) in watched.iter().zip(&rss) {
        let extra = match w.aggregator {
            Some(_) => at_half.next().map_or(String::new(), |t| format!(", trunks {t}")),
            None => String::new(),
        };
        println!("  {}: RSS {} -> {}{extra}", w.name, kib(w.before.rss_bytes), spread(samples));
    }
    println!("  mobile-sim: RSS {}", spread(&rss[watched.len()]));

    let status = cluster.wait(&load.name, Some(args.duration + LOAD_MARGIN)).await;
    let elapsed = started.elapsed().as_secs_f64();
    if trunk_verdict(cluster, &load, status, trunks).is_none() {
        return Ok(false);
    }

    println!("CPU over the {elapsed:.1} s of the run (run and drain), in cores:");
    for w in &watched {
        let cpu = usage(&w.name, w.pid)?.cpu_seconds - w.before.cpu_seconds;
        println!("  {:<13} {cpu:.2} s of CPU, {:.3} cores", w.name, per_second(cpu, elapsed));
    }
    for (i, before) in (1..=args.aggregators).zip(&scrapes_before) {
        let after = cluster.scrape(i).await?;
        let flushes = grew(before, &after, i, FLUSHES)?;
        let rows = grew(before, &after, i, FLUSH_ROWS)?;
        let lag = Window::between(before, &after, FLUSH_LAG);
        println!(
            "aggregator {i}: {flushes} flushes, {rows} rows ({:.0} per second), flush lag p50 <= {}, p99 <= {}",
            per_second(rows, elapsed),
            bound(lag.quantile_at_most(0.5)),
            bound(lag.quantile_at_most(0.99))
        );
    }
    Ok(true)
}

/// Each watched aggregator's trunks now, in `watched`'s order.
async fn trunks_now(cluster: &Cluster, watched: &[Watched]) -> anyhow::Result<Vec<f64>> {
    let mut trunks = Vec::new();
    for i in watched.iter().filter_map(|w| w.aggregator) {
        trunks.push(cluster.metric(i, TRUNKS).await?);
    }
    Ok(trunks)
}

// --- nginx-memory ----------------------------------------------------------------------------------

/// Runs `lab bench nginx-memory`: one line per variant.
pub async fn nginx_memory(args: NginxMemoryArgs) -> anyhow::Result<bool> {
    // The nginx worker holds 2 files per phone (the phone's and the aggregator's connection).
    files_for(
        args.phones.saturating_mul(2).saturating_add(FILES_SPARE),
        &format!("{} phones through nginx", args.phones),
    )?;
    let bin = crate::cluster::run::bin_dir(args.bin_dir.clone())?;
    let work = work_dir("nginx-memory")?;
    let mut signals = Interrupts::catch()?;
    println!(
        "{} idle wss:// phones through nginx (one worker) to one aggregator on the embedded store:",
        args.phones
    );
    let mut result = Ok(true);
    for (k, &variant) in args.variants.iter().enumerate() {
        let mut s = Settings::new(bin.clone());
        s.store = StoreKind::Sqlite;
        s.tls = variant;
        s.aggregators = 1;
        s.gateways = 1;
        s.nginx_workers = 1;
        s.aggregator_log = "warn".into();
        let dir = work.join(format!("{}-{}", k + 1, spelled(variant)));
        let outcome = match Cluster::init(&dir, crate::cluster::free_port()?, s).await {
            Ok(mut cluster) => {
                let r = tokio::select! {
                    r = measure_idle(&mut cluster, variant, args.phones) => r,
                    signal = signals.recv() => Err(anyhow!("{signal}: the bench was stopped")),
                };
                cluster.stop_all().await;
                r
            }
            Err(e) => Err(e),
        };
        if !tally(&mut result, outcome, || format!("variant {}", spelled(variant))) {
            break;
        }
    }
    leave(&work, &result);
    result
}

/// One variant: `phones` idle phones held through nginx; prints its line. Ok(false) when they
/// were not all held.
async fn measure_idle(cluster: &mut Cluster, variant: TlsMode, phones: u64) -> anyhow::Result<bool> {
    cluster.start_servers().await?;
    let worker = nginx_worker(cluster)?;
    let aggregator = cluster.pid("aggregator-1").context("aggregator-1 was not started")?;
    tokio::time::sleep(IDLE_SETTLE_EMPTY).await;
    let nginx_before = usage("the nginx worker", worker)?.rss_bytes;
    let agg_before = usage("aggregator-1", aggregator)?.rss_bytes;

    let report = cluster.dir.join("phones.report");
    let mut c = crate::cluster::load::direct_phones(
        &cluster.settings.bin.join("mobile-sim"),
        &format!("wss://localhost:{}/ws", cluster.port),
        &cluster.ca(),
        &cluster.device_key(),
        phones,
        IDLE_RATE,
    );
    c.args(["-C", IDLE_CONCURRENT])
        .args(["--min-interval", IDLE_INTERVAL, "--max-interval", IDLE_INTERVAL])
        .args(["--duration", &sim_duration(IDLE_DURATION), "--quiet", "--json"]);
    // Kept here, not in the cluster's list: it is watched for an early end, and stopped (or
    // killed, when dropped on an error) before the cluster is.
    let mut sim = Proc::spawn("phones", c, 0, &cluster.dir, Some(&report))?;

    let shared: &Cluster = cluster;
    let held = wait_held(phones, &mut sim, move || shared.metric(1, DIRECT_SESSIONS)).await;
    // Short when time ran out: measured all the same, and failed below.
    if !matches!(held.end, End::Reached | End::TimedOut { .. }) {
        println!("{:<11} FAILED: {held}", spelled(variant));
        return Ok(false);
    }
    tokio::time::sleep(IDLE_SETTLE_HELD).await;
    let nginx_during = usage("the nginx worker", worker)?.rss_bytes;
    let agg_during = usage("aggregator-1", aggregator)?.rss_bytes;
    sim.stop(STOP_GRACE).await;
    println!(
        "{:<11} phones held {:>6}  nginx worker RSS {:>7} -> {:>7} KiB: {:>5} bytes per phone;  \
         aggregator RSS {:>7} -> {:>7} KiB: {:>5} bytes per phone",
        spelled(variant),
        held.count.unwrap_or(0),
        kib(nginx_before),
        kib(nginx_during),
        per_phone(nginx_before, nginx_during, phones).unwrap_or_default(),
        kib(agg_before),
        kib(agg_during),
        per_phone(agg_before, agg_during, phones).unwrap_or_default()
    );
    if !held.reached() {
        println!("{:<11} FAILED: {held}: the figures above are not per held phone", spelled(variant));
        return Ok(false);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::SimVerification;
    use crate::wait::tests::stand_in;

    #[test]
    fn durations_within_bounds() {
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        for bad in ["", "10x", "1s", "25h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(sim_duration(Duration::from_millis(2500)), "2500ms");
    }

    #[test]
    fn bytes_per_phone_and_per_second() {
        // The script's figure: (during - before) KiB * 1024 / N.
        assert_eq!(per_phone(10 << 20, 20 << 20, 1024), Some(10 * 1024));
        assert_eq!(per_phone(20 << 20, 10 << 20, 1024), Some(-10 * 1024));
        // Whole bytes, rounded toward zero as the script's shell arithmetic did.
        assert_eq!(per_phone(0, 7, 2), Some(3));
        assert_eq!(per_phone(7, 0, 2), Some(-3));
        assert_eq!(per_phone(0, 100, 0), None);
        assert_eq!(per_phone(0, u64::MAX, 1), Some(i64::MAX));
        assert_eq!(per_second(3.0, 60.0), 0.05);
        assert_eq!(per_second(3.0, 0.0), 0.0);
    }

    /// The flush-lag histogram's window from nothing to these cumulative buckets (bound, count).
    pub(super) fn lag_window(buckets: &[(&str, u64)]) -> Window {
        let page: String =
            buckets.iter().map(|(le, n)| format!("{FLUSH_LAG}_bucket{{le=\"{le}\"}} {n}\n")).collect();
        Window::between(&Scrape::parse(""), &Scrape::parse(&page), FLUSH_LAG)
    }

    #[test]
    fn bucket_bounds_as_the_page_spells_them() {
        assert_eq!(bound(None), "-");
        assert_eq!(bound(Some(f64::INFINITY)), "+Inf");
        assert_eq!(bound(Some(2.56)), "2.56s");
        // From the histogram's window: 100 flushes, 50 at most 0.32 s and 99 at most 1.28 s.
        let w = lag_window(&[("0.32", 50), ("1.28", 99), ("+Inf", 100)]);
        assert_eq!(bound(w.quantile_at_most(0.5)), "0.32s");
        assert_eq!(bound(w.quantile_at_most(0.99)), "1.28s");
        assert_eq!(bound(w.quantile_at_most(1.0)), "+Inf");
    }

    #[tokio::test]
    async fn held_phones_are_counted_until_all_are_there_or_mobile_sim_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut sim = stand_in(dir.path(), "30");
        let mut counts = [Err(anyhow!("busy")), Ok(5.0), Ok(10.0)].into_iter();
        let held = wait_held(10, &mut sim, || {
            let next = counts.next().unwrap_or(Ok(0.0));
            async move { next }
        })
        .await;
        assert_eq!(held.count, Some(10));
        assert!(held.reached(), "{held}");

        let mut ended = stand_in(dir.path(), "0");
        let _ = ended.wait(Duration::from_secs(10)).await;
        let held = wait_held(10, &mut ended, || async { Ok(3.0) }).await;
        assert_eq!(held.count, Some(3));
        let why = held.to_string();
        assert!(
            why.starts_with("stand-in ended (exit status: 0) with 3 phones held, wanted at least 10"),
            "{why}"
        );

        let short = Waited {
            counted: "phones held".into(),
            want: Want::AtLeast(10),
            count: Some(4),
            end: End::TimedOut { limit: IDLE_HELD_WAIT, last_error: Some(anyhow!("refused")) },
        };
        assert_eq!(
            short.to_string(),
            format!("only 4 phones held after {IDLE_HELD_WAIT:?}, wanted at least 10 (the last read failed: refused)")
        );
    }

    #[test]
    fn a_failed_part_fails_the_bench_and_an_error_ends_it() {
        let mut result = Ok(true);
        assert!(tally(&mut result, Ok(true), || "a".into()));
        assert!(matches!(result, Ok(true)));
        assert!(tally(&mut result, Ok(false), || "b".into()));
        assert!(matches!(result, Ok(false)));
        assert!(!tally(&mut result, Err(anyhow!("gone")), || "variant c".into()));
        assert_eq!(format!("{:#}", result.unwrap_err()), "variant c: gone");
    }

    #[test]
    fn counters_grow_or_err() {
        let before = Scrape::parse("holdfast_flushes_total 3\n");
        let after = Scrape::parse("holdfast_flushes_total 10\n");
        assert_eq!(grew(&before, &after, 1, FLUSHES).unwrap(), 7.0);
        assert!(grew(&before, &after, 1, FLUSH_ROWS).is_err());
    }

    fn verified(devices: u64) -> SimReport {
        SimReport {
            ok: true,
            verification: Some(SimVerification {
                devices_expected: devices,
                devices_checked: devices,
                devices_persisted: devices,
                ..SimVerification::default()
            }),
            ..SimReport::default()
        }
    }

    #[test]
    fn a_failed_run_is_not_fine() {
        assert!(problems(true, &verified(1000), 1000).is_empty());
        assert_eq!(problems(false, &verified(1000), 1000).len(), 1);
        assert_eq!(problems(true, &verified(999), 1000).len(), 1);
        let mut lost = verified(1000);
        if let Some(v) = lost.verification.as_mut() {
            v.lost_bytes = 1;
        }
        assert_eq!(problems(true, &lost, 1000).len(), 1);
        let mut failed = verified(1000);
        failed.ok = false;
        failed.failures = vec![serde_json::json!({"rule": "unconfirmed-within-bound", "detail": "3 bytes"})];
        let bad = problems(true, &failed, 1000);
        assert_eq!(bad, vec!["verdict FAILED: unconfirmed-within-bound: 3 bytes".to_owned()]);
        let none = SimReport { ok: true, ..SimReport::default() };
        assert_eq!(problems(true, &none, 1000), vec!["no verification in the report".to_owned()]);
    }
}
