//! `lab drills` (scripts/drills.sh; scripts/test.sh runs it): failure drills, each on a fresh
//! local cluster ([`crate::cluster`]) in a folder and on a port of its own: a private PostgreSQL,
//! 2 aggregators behind nginx, 3 gateways x 300 phones on 2 TLS trunks each and 200 phones
//! straight to the aggregators, every phone sending a byte every 0.2-1 s. Each drill breaks one
//! thing mid-run, prints what it did and what it saw, and ends with mobile-sim's verdict on every
//! phone: every device checked, every byte sent confirmed durable and persisted exactly once;
//! connections failed or dropped and bytes left unconfirmed only within the bounds the drill
//! states for the part it breaks (none elsewhere), or the drill fails. A probe that errs (a
//! database read, a metric read) fails the drill: it is an error, never a zero.

mod relay;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use sqlx::Connection;

use crate::cluster::load::{Load, LoadSpec};
use crate::cluster::{postgres, spelled, Cluster, GatewayKind, Settings, StoreKind, TlsMode};
use crate::metrics::{DB_ERRORS, DIRECT_SESSIONS, FLUSHES, FOLDED_BOOTS, FOLDED_SESSIONS, TRUNKS};
use crate::procfs;
use crate::report::SimReport;

/// Gateways in every drill's cluster.
const GATEWAYS: u32 = 3;
/// Phones per gateway.
const SESSIONS: u32 = 300;
/// Trunk links per gateway.
const LINKS: u32 = 2;
/// Phones straight to the aggregators.
const PHONES: u64 = 200;
/// Aggregators behind nginx.
const AGGREGATORS: u32 = 2;
/// Every trunk link of the cluster.
const LINKS_TOTAL: f64 = (GATEWAYS * LINKS) as f64;
/// How much an aggregator's memory may grow while PostgreSQL is down: the ledger is a fixed
/// table allocated at start, acknowledgements wait in it, and trunks and phones are not read when
/// it is full. 64 MiB over the starting RSS is generous.
const OUTAGE_RSS_BOUND: u64 = 64 << 20;
/// How long a load may outlive its duration (drain, verification, report).
const LOAD_MARGIN: Duration = Duration::from_secs(180);
/// The longest load of any drill (postgres-restart's 45 s), with room to spare.
const LOAD_DURATION_MAX: Duration = Duration::from_secs(60);

/// A drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Drill {
    /// SIGKILL one aggregator: its trunks reconnect through nginx to the other; phones at
    /// gateways keep their sessions (one session row per phone).
    AggregatorKill,
    /// Stop PostgreSQL for 10 s: acknowledgements pause and resume, nothing is lost, aggregator
    /// memory stays within a bound.
    PostgresRestart,
    /// Kill one trunk's TCP connection (`ss -K`; where the kernel cannot, or with --cut relay,
    /// a relay in the lab cuts it): the gateway reconnects and replays.
    TrunkCut,
    /// SIGKILL a host gateway (firmware/host) and restart it: its phones come back with backoff
    /// and jitter, the aggregators see only its trunks.
    GatewayRestart,
    /// Not a failure: the TLS passthrough variant of nginx (stream proxy, the aggregators' own
    /// TLS) on the embedded SQLite store, 15 s of load, verified.
    Passthrough,
}

impl Drill {
    const ALL: [Drill; 5] = [
        Drill::AggregatorKill,
        Drill::PostgresRestart,
        Drill::TrunkCut,
        Drill::GatewayRestart,
        Drill::Passthrough,
    ];

    fn name(self) -> &'static str {
        match self {
            Drill::AggregatorKill => "aggregator-kill",
            Drill::PostgresRestart => "postgres-restart",
            Drill::TrunkCut => "trunk-cut",
            Drill::GatewayRestart => "gateway-restart",
            Drill::Passthrough => "passthrough",
        }
    }
}

/// How the trunk-cut drill cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cut {
    /// `ss -K` when this kernel can destroy sockets (CONFIG_INET_DIAG_DESTROY), else the relay.
    Auto,
    /// The kernel's SOCK_DESTROY on the trunk's socket.
    Ss,
    /// Gateway 1's trunks through a relay in the lab, which resets one of them.
    Relay,
}

#[derive(Debug, clap::Args)]
pub struct DrillsArgs {
    /// A drill that cannot run here (no PostgreSQL) is skipped instead of failing the run.
    #[arg(long)]
    pub allow_skip: bool,

    /// Keep the drills' folders (logs, reports, the stores).
    #[arg(long, env = "DRILLS_KEEP")]
    pub keep: bool,

    /// How the trunk-cut drill cuts.
    #[arg(long, env = "DRILL_CUT", value_enum, default_value = "auto")]
    pub cut: Cut,

    /// Where the aggregator, gateway and mobile-sim binaries are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Drills to run (default: all of them, in this order).
    #[arg(value_enum)]
    pub drills: Vec<Drill>,
}

fn say(text: impl AsRef<str>) {
    println!("  {}", text.as_ref());
}

/// Seconds since `t`, one decimal.
fn since(t: Instant) -> String {
    format!("{:.1}", t.elapsed().as_secs_f64())
}

/// Polls `$cond` (an expression, awaited inside) every 200 ms until it is true; after `$secs`
/// seconds the drill fails naming `$what`.
macro_rules! wait_for {
    ($secs:expr, $what:expr, $cond:expr) => {{
        let deadline = Instant::now() + Duration::from_secs($secs);
        loop {
            if $cond {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{} within {} s", $what, $secs);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }};
}

/// The drills were stopped by a signal: the run ends after this drill's cluster is stopped.
#[derive(Debug)]
struct Stopped(cli_env::Interrupt);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: the drills were stopped", self.0)
    }
}

impl std::error::Error for Stopped {}

/// A drill that cannot run here.
#[derive(Debug)]
struct Skip(String);

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// Runs the drills; Ok(true) when every one passed (skipped ones count with --allow-skip).
pub async fn run(args: DrillsArgs) -> anyhow::Result<bool> {
    let drills: Vec<Drill> = if args.drills.is_empty() { Drill::ALL.to_vec() } else { args.drills.clone() };
    let bin = crate::cluster::run::bin_dir(args.bin_dir.clone())?;
    let work = PathBuf::from(format!("/tmp/holdfast-drills.{}", crate::cluster::random_hex(4)));
    std::fs::create_dir_all(&work)?;
    // As root, the private PostgreSQL runs as the postgres account, which must reach its folder.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o711))?;
    }
    let mut signals = cli_env::Interrupts::catch()?;
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (n, &drill) in drills.iter().enumerate() {
        println!("\n=== drill {}/{}: {}", n + 1, drills.len(), drill.name());
        let began = Instant::now();
        let dir = work.join(drill.name());
        let mut cx = Cx { work: work.clone(), bin: bin.clone(), cut: args.cut, cluster: None };
        let outcome = tokio::select! {
            r = cx.run(drill) => r,
            signal = signals.recv() => Err(Stopped(signal).into()),
        };
        let interrupted = outcome.as_ref().err().is_some_and(|e| e.downcast_ref::<Stopped>().is_some());
        if let Some(mut c) = cx.cluster.take() {
            c.stop_all().await;
        }
        let secs = began.elapsed().as_secs();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("  PASS ({secs} s)");
            }
            Err(e) if e.downcast_ref::<Skip>().is_some() => {
                skipped += 1;
                let fails = if args.allow_skip { "" } else { ": fails the run (--allow-skip to allow)" };
                println!("  SKIPPED ({secs} s): {e}{fails}");
            }
            Err(e) => {
                failed += 1;
                say(format!("FAILED: {e:#}"));
                println!("  FAIL ({secs} s); logs: {} (--keep or DRILLS_KEEP=1 keeps them)", dir.display());
                if !args.keep {
                    print_log_tails(&dir);
                }
            }
        }
        if interrupted {
            break;
        }
    }
    if args.keep {
        eprintln!("drill folders kept in {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    println!("\ndrills: {passed} passed, {failed} failed, {skipped} skipped");
    Ok(failed == 0 && (skipped == 0 || args.allow_skip))
}

/// The last lines of a failed drill's logs.
fn print_log_tails(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.ends_with(".log")
                && (name.starts_with("aggregator-") || name.starts_with("gateway-") || name == "phones.log")
        })
        .collect();
    logs.sort();
    for log in logs {
        println!("    ==> {} <==", log.display());
        for line in crate::cluster::tail(&log, 5).lines() {
            println!("    {line}");
        }
    }
}

/// The loads of one drill.
struct Loads {
    prefix: String,
    gateways: Vec<Load>,
    phones: Load,
    started: Instant,
}

/// What each load may suffer, as mobile-sim's bounds (--max-dropped, --max-failed,
/// --allow-unconfirmed); empty: nothing. A drill sets them for the part it breaks.
#[derive(Default)]
struct Bounds {
    gateways: Vec<String>,
    /// Replaces `gateways` for gateway 1, when set.
    gateway_1: Option<Vec<String>>,
    phones: Vec<String>,
    /// Another way to the aggregators for gateway 1's trunks (the relay).
    trunk_url_1: Option<String>,
}

fn bounds(pairs: &[(&str, u64)]) -> Vec<String> {
    pairs.iter().flat_map(|(flag, v)| [flag.to_string(), v.to_string()]).collect()
}

/// One drill's context: its cluster (stopped by the caller however the drill ends).
struct Cx {
    work: PathBuf,
    bin: PathBuf,
    cut: Cut,
    cluster: Option<Cluster>,
}

impl Cx {
    async fn run(&mut self, drill: Drill) -> anyhow::Result<()> {
        match drill {
            Drill::AggregatorKill => self.aggregator_kill().await,
            Drill::PostgresRestart => self.postgres_restart().await,
            Drill::TrunkCut => self.trunk_cut().await,
            Drill::GatewayRestart => self.gateway_restart().await,
            Drill::Passthrough => self.passthrough().await,
        }
    }

    /// A fresh cluster in the drill's folder, on a port of its own.
    async fn start(
        &mut self,
        name: &str,
        store: StoreKind,
        tls: TlsMode,
        gateway: GatewayKind,
    ) -> anyhow::Result<()> {
        if store == StoreKind::Postgres && postgres::bindir().is_none() {
            return Err(
                Skip("PostgreSQL is not installed (scripts/install-deps.sh installs it)".into()).into()
            );
        }
        let mut s = Settings::new(self.bin.clone());
        s.store = store;
        s.tls = tls;
        s.gateway = gateway;
        s.aggregators = AGGREGATORS;
        s.gateways = GATEWAYS;
        s.sessions = SESSIONS;
        s.links = LINKS;
        s.min_interval = "200ms".into();
        s.max_interval = "1s".into();
        // Folding runs during the drills (docs/ARCHITECTURE.md, "Folding"), with a short margin
        // so that it happens while they break things: sessions closed 2 s ago and gateway boots
        // superseded 2 s ago leave the sessions table, and the verification must still find
        // every byte exactly once.
        for (k, default) in [("HOLDFAST_FOLD_AFTER_S", "2"), ("HOLDFAST_FOLD_INTERVAL_MS", "500")] {
            s.aggregator_env.push((k.into(), std::env::var(k).unwrap_or_else(|_| default.into())));
        }
        let cluster =
            self.cluster.insert(Cluster::init(&self.work.join(name), crate::cluster::free_port()?, s).await?);
        cluster.start_servers().await?;
        say(format!(
            "cluster: {} store, {AGGREGATORS} aggregators ({}, {}), nginx on {} (TLS {})",
            spelled(cluster.store),
            cluster.aggregator_addr(1),
            cluster.aggregator_addr(2),
            cluster.front(),
            spelled(cluster.settings.tls)
        ));
        Ok(())
    }

    fn c(&mut self) -> &mut Cluster {
        self.cluster.as_mut().expect("a drill starts its cluster first")
    }

    /// The gateways and the direct phones, in the background.
    async fn load(&mut self, name: &str, duration: &str, b: Bounds) -> anyhow::Result<Loads> {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let prefix = format!("{name}-{stamp}-");
        let c = self.c();
        let mut gateways = Vec::new();
        for i in 1..=GATEWAYS {
            let mut spec = LoadSpec::new(duration, &prefix);
            spec.extra = match (&b.gateway_1, i) {
                (Some(g1), 1) => g1.clone(),
                _ => b.gateways.clone(),
            };
            let url = if i == 1 { b.trunk_url_1.as_deref() } else { None };
            gateways.push(c.start_gateway_load(i, &spec, url).await?);
        }
        let mut spec = LoadSpec::new(duration, &format!("{prefix}phone-"));
        spec.extra = b.phones.clone();
        let phones = c.start_direct_phones(PHONES, &spec, false)?;
        say(format!(
            "load: {GATEWAYS} gateways x {SESSIONS} phones on {LINKS} trunks each, {PHONES} direct phones, for {duration}"
        ));
        Ok(Loads { prefix, gateways, phones, started: Instant::now() })
    }

    async fn all_links_up(&self) -> bool {
        let c = self.cluster.as_ref().expect("started");
        c.metric_sum(TRUNKS).await.is_ok_and(|n| n == LINKS_TOTAL)
    }

    async fn all_up(&self) -> bool {
        let c = self.cluster.as_ref().expect("started");
        self.all_links_up().await && c.metric_sum(DIRECT_SESSIONS).await.is_ok_and(|n| n == PHONES as f64)
    }

    /// Waits for every load to end and checks every report: prints one verification line, fails
    /// unless every report has mobile-sim's OK verdict over the devices expected. `extra` checks
    /// more on the reports (gateway loads first, the direct phones last), adding to `bad`.
    async fn verify(
        &mut self,
        loads: &Loads,
        extra: impl FnOnce(&[(Load, SimReport)], &mut Vec<String>),
    ) -> anyhow::Result<()> {
        let c = self.c();
        let mut reports = Vec::new();
        let mut bad = Vec::new();
        for load in loads.gateways.iter().chain([&loads.phones]) {
            if !c.wait(&load.name, Some(LOAD_MARGIN + LOAD_DURATION_MAX)).await.is_some_and(|s| s.success()) {
                // The report says why (its failures are listed below).
                bad.push(format!("{} did not end well", load.name));
            }
            match load.read() {
                Ok(r) => reports.push((load.clone(), r)),
                Err(e) => bail!("{e:#}"),
            }
        }
        let (mut devices, mut lost, mut double, mut durable, mut unconfirmed) = (0, 0, 0, 0, 0);
        for (load, r) in &reports {
            let Some(v) = &r.verification else {
                bad.push(format!(
                    "{}: no verification: {}",
                    load.report.display(),
                    r.failure_lines().join("; ")
                ));
                continue;
            };
            devices += v.devices_checked;
            lost += v.lost_bytes;
            double += v.double_counted_bytes;
            unconfirmed += v.unconfirmed_bytes;
            durable += r.bytes.durable;
            if !r.ok {
                bad.push(format!(
                    "{}: verdict FAILED: {}",
                    load.report.display(),
                    r.failure_lines().join("; ")
                ));
            }
            if v.devices_checked != v.devices_expected || v.devices_persisted != v.devices_checked {
                bad.push(format!(
                    "{}: {}",
                    load.report.display(),
                    serde_json::to_string(v).unwrap_or_default()
                ));
            }
        }
        say(format!(
            "verification: {devices} phones, {durable} bytes confirmed durable, {lost} lost, {double} double-counted, {unconfirmed} unconfirmed"
        ));
        let expected = u64::from(GATEWAYS * SESSIONS) + PHONES;
        if devices != expected {
            bad.push(format!("{devices} phones verified, the drill ran {expected}"));
        }
        if lost > 0 || double > 0 {
            bad.push(format!("{lost} bytes lost, {double} double-counted"));
        }
        extra(&reports, &mut bad);
        if bad.is_empty() {
            Ok(())
        } else {
            for b in &bad {
                say(format!("FAILED: {b}"));
            }
            bail!("{} check(s) of the verification failed", bad.len())
        }
    }

    /// A connection to the cluster's database.
    async fn db(&mut self) -> anyhow::Result<sqlx::PgConnection> {
        let url = self.c().db_url.clone();
        sqlx::PgConnection::connect(&url).await.context("connecting to the cluster's database")
    }

    // --- the drills -----------------------------------------------------------------------------

    async fn aggregator_kill(&mut self) -> anyhow::Result<()> {
        self.start("aggregator-kill", StoreKind::Postgres, TlsMode::Terminate, GatewayKind::Virtual).await?;
        // The killed aggregator's trunks drop (every gateway may have had both links there) and
        // their reconnects may be refused while nginx finds out; its direct phones drop, retry,
        // and lose the bytes they had in flight (about 1 per phone; 3 allowed).
        let b = Bounds {
            gateways: bounds(&[("--max-dropped", u64::from(LINKS)), ("--max-failed", 20)]),
            phones: bounds(&[
                ("--max-dropped", PHONES),
                ("--max-failed", PHONES * 10),
                ("--allow-unconfirmed", PHONES * 3),
            ]),
            ..Bounds::default()
        };
        let loads = self.load("kill", "35s", b).await?;
        wait_for!(30, "all trunks and phones connected", self.all_up().await);
        let c = self.c();
        let (t1, t2) = (c.metric(1, TRUNKS).await?, c.metric(2, TRUNKS).await?);
        let (victim, survivor) = if t1 >= t2 { (1, 2) } else { (2, 1) };
        say(format!(
            "before: aggregator 1 holds {t1} trunks and {} phones, aggregator 2 {t2} trunks and {} phones",
            c.metric(1, DIRECT_SESSIONS).await?,
            c.metric(2, DIRECT_SESSIONS).await?
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let killed_at = Instant::now();
        self.c().kill_aggregator(victim).await?;
        say(format!("SIGKILL aggregator {victim} (pid gone, nothing flushed, no go-away)"));
        wait_for!(
            30,
            format!("all {LINKS_TOTAL} trunks on aggregator {survivor}"),
            self.all_links_up().await
        );
        say(format!(
            "all {LINKS_TOTAL} trunks on aggregator {survivor} after {} s: the gateways reconnected through nginx, which skipped the dead one",
            since(killed_at)
        ));
        wait_for!(30, "the direct phones back", self.all_up().await);
        say(format!(
            "all {PHONES} direct phones connected again after {} s (mobile-sim's backoff with jitter)",
            since(killed_at)
        ));
        self.c().start_aggregator(victim).await?;
        say(format!("aggregator {victim} restarted; nginx sends it new connections again (least_conn)"));
        self.verify(&loads, |reports, bad| {
            let drops: u64 = reports
                .iter()
                .filter(|(l, _)| l.name.starts_with("gateway-"))
                .map(|(_, r)| r.connections.dropped)
                .sum();
            say(format!("gateway links dropped and re-established through nginx: {drops}"));
            if drops < 1 {
                bad.push("no gateway link was dropped: the killed aggregator carried none?".into());
            }
        })
        .await?;
        // A phone at a gateway kept its one session through the failover: one session row per
        // phone, closed normally (reason 0) at the end, not a new session per reconnect.
        let mut db = self.db().await?;
        let direct = format!("{}phone-%", loads.prefix);
        let (devices, single): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE sessions = 1) FROM device_totals \
             WHERE starts_with(device, $1) AND device NOT LIKE $2",
        )
        .bind(&loads.prefix)
        .bind(&direct)
        .fetch_one(&mut db)
        .await
        .context("reading the gateway phones' totals")?;
        let closed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions_now WHERE starts_with(device, $1) AND device NOT LIKE $2 AND close_reason = 0",
        )
        .bind(&loads.prefix)
        .bind(&direct)
        .fetch_one(&mut db)
        .await
        .context("reading the gateway phones' sessions")?;
        say(format!(
            "phones at gateways: {devices} devices, {single} with exactly one session, {closed} sessions closed normally"
        ));
        if devices != i64::from(GATEWAYS * SESSIONS) || single != devices || closed != devices {
            bail!("a gateway phone lost its session");
        }
        Ok(())
    }

    async fn postgres_restart(&mut self) -> anyhow::Result<()> {
        self.start("postgres-restart", StoreKind::Postgres, TlsMode::Terminate, GatewayKind::Virtual).await?;
        // Nothing is allowed to break: connections stay up while acknowledgements pause.
        let loads = self.load("pg", "45s", Bounds::default()).await?;
        wait_for!(30, "all trunks and phones connected", self.all_up().await);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss_before = self.aggregator_rss();
        let stopped_at = Instant::now();
        self.c().postgres.as_mut().context("no private PostgreSQL")?.stop().await?;
        let down_from = loads.started.elapsed().as_secs_f64();
        say(format!("PostgreSQL stopped (pg_ctl stop -m fast) at {down_from:.1} s into the load"));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let flushes_1 = self.c().metric_sum(FLUSHES).await?;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let flushes_2 = self.c().metric_sum(FLUSHES).await?;
        let errors = self.c().metric_sum(DB_ERRORS).await?;
        let rss_during = self.aggregator_rss();
        self.c().postgres.as_mut().context("no private PostgreSQL")?.start().await?;
        let down_to = loads.started.elapsed().as_secs_f64();
        let started_at = Instant::now();
        say(format!("PostgreSQL started again after {:.1} s down", stopped_at.elapsed().as_secs_f64()));
        // The flusher waits for a connection (sqlx's acquire timeout) and then retries with
        // backoff; either way nothing commits, so nothing is acknowledged.
        say(format!(
            "while down: committed flushes {flushes_1} -> {flushes_2} (none, so no acknowledgement), {errors} flushes failed so far (a flush first waits up to 30 s for a connection)"
        ));
        if flushes_1 != flushes_2 {
            bail!("flushes were committed while PostgreSQL was down");
        }
        wait_for!(
            60,
            "a committed flush after the restart",
            self.c().metric_sum(FLUSHES).await.is_ok_and(|n| n > flushes_2)
        );
        say(format!("acknowledgements resumed {} s after the restart", since(started_at)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss_after = self.aggregator_rss();
        let mut grew = false;
        for i in 0..AGGREGATORS as usize {
            say(format!(
                "aggregator {} RSS: before {} KiB, during the outage {} KiB, after {} KiB (bound: before + {} KiB)",
                i + 1,
                rss_before[i] >> 10,
                rss_during[i] >> 10,
                rss_after[i] >> 10,
                OUTAGE_RSS_BOUND >> 10
            ));
            grew |= rss_during[i] > rss_before[i] + OUTAGE_RSS_BOUND
                || rss_after[i] > rss_before[i] + OUTAGE_RSS_BOUND;
        }
        if grew {
            bail!("aggregator memory grew past the bound");
        }
        // The phones' own view (mobile-sim's once-a-second timeline): bytes kept being sent while
        // none was confirmed durable during the outage (1.5 s of margin at each end).
        let (lo, hi) = (down_from + 1.5, down_to - 1.5);
        self.verify(&loads, |reports, bad| {
            for (load, r) in reports {
                let s: Vec<_> = r.timeline.iter().filter(|x| lo <= x.t && x.t <= hi).collect();
                let (Some(first), Some(last)) = (s.first(), s.last()) else {
                    bad.push(format!("{}: no timeline samples while PostgreSQL was down", load.name));
                    continue;
                };
                if s.len() < 2 {
                    bad.push(format!(
                        "{}: {} timeline samples while PostgreSQL was down: nothing to judge",
                        load.name,
                        s.len()
                    ));
                    continue;
                }
                if last.bytes_durable != first.bytes_durable {
                    bad.push(format!("{}: bytes confirmed durable while PostgreSQL was down", load.name));
                }
                if last.bytes_sent <= first.bytes_sent {
                    bad.push(format!("{}: no bytes sent while PostgreSQL was down", load.name));
                }
            }
            say(format!(
                "mobile-sim timelines: from {lo:.1} s to {hi:.1} s bytes were sent and none confirmed"
            ));
        })
        .await
    }

    /// Each aggregator's resident memory, bytes (0 when it is not running).
    fn aggregator_rss(&mut self) -> Vec<u64> {
        let c = self.c();
        (1..=AGGREGATORS)
            .map(|i| c.pid(&format!("aggregator-{i}")).and_then(procfs::usage).map_or(0, |u| u.rss_bytes))
            .collect()
    }

    async fn trunk_cut(&mut self) -> anyhow::Result<()> {
        let use_relay = match self.cut {
            Cut::Relay => true,
            Cut::Ss => false,
            Cut::Auto => !relay::sock_destroy_works(),
        };
        self.start("trunk-cut", StoreKind::Postgres, TlsMode::Terminate, GatewayKind::Virtual).await?;
        // Gateway 1 loses the one link that is cut (and may fail a reconnect attempt on the way).
        let mut b = Bounds {
            gateway_1: Some(bounds(&[("--max-dropped", 1), ("--max-failed", 5)])),
            ..Bounds::default()
        };
        let relay = if use_relay {
            let r = relay::Relay::start(self.c().front()).await?;
            b.trunk_url_1 = Some(format!("wss://localhost:{}/trunk", r.addr().port()));
            say(format!(
                "ss -K cannot destroy sockets on this kernel (or --cut relay): gateway 1's trunks go through a relay on {}",
                r.addr()
            ));
            Some(r)
        } else {
            None
        };
        let loads = self.load("cut", "30s", b).await?;
        wait_for!(30, "all trunks and phones connected", self.all_up().await);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let cut_at = Instant::now();
        match &relay {
            Some(r) => {
                let what = r.cut().context("the relay holds no connection to cut")?;
                say(format!("cut one of gateway 1's trunks in the relay (reset on both sides): {what}"));
            }
            None => {
                let c = self.c();
                let pid = c.pid("gateway-1").context("gateway 1 is not running")?;
                let what = relay::cut_with_ss(pid, c.front()).await?;
                say(format!(
                    "cut gateway 1's trunk {what} with ss -K (the kernel aborts the socket and resets the peer)"
                ));
            }
        }
        wait_for!(30, "the trunk back", self.all_links_up().await);
        say(format!("all {LINKS_TOTAL} trunks up again {} s after the cut", since(cut_at)));
        self.verify(&loads, |reports, bad| {
            let Some((_, r)) = reports.iter().find(|(l, _)| l.name == "gateway-1") else {
                bad.push("no report of gateway 1".into());
                return;
            };
            let c = &r.connections;
            say(format!(
                "gateway 1: links dropped {}, established {} (of {LINKS} links): it reconnected and replayed from its last acknowledged counts",
                c.dropped, c.established
            ));
            if c.dropped < 1 || c.established < u64::from(LINKS) + 1 {
                bad.push("gateway 1 did not reconnect its cut link".into());
            }
        })
        .await
    }

    async fn gateway_restart(&mut self) -> anyhow::Result<()> {
        // The real host gateway (firmware/host), with real phone WebSockets from mobile-sim.
        self.start("gateway-restart", StoreKind::Postgres, TlsMode::Terminate, GatewayKind::Host).await?;
        // Gateway 1's phones all drop when it is killed, retry while it is down, and lose what was
        // in flight and unacknowledged (about 1 byte per phone; 3 allowed).
        let s = u64::from(SESSIONS);
        let b = Bounds {
            gateway_1: Some(bounds(&[
                ("--max-dropped", s),
                ("--max-failed", s * 10),
                ("--allow-unconfirmed", s * 3),
            ])),
            ..Bounds::default()
        };
        let loads = self.load("restart", "40s", b).await?;
        wait_for!(60, "all trunks and phones connected", self.all_up().await);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let direct_before = self.c().metric_sum(DIRECT_SESSIONS).await?;
        let killed_at = Instant::now();
        let mut victim = self.c().take("gateway-1").context("gateway 1 is not running")?;
        victim.signal(libc::SIGKILL);
        victim.wait(Duration::from_secs(10)).await;
        say(format!("SIGKILL gateway 1 (its {SESSIONS} phones lose their connections; unacknowledged counts die with it)"));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Its status lines (`live=N` once a second) start again in gateway-1.out.
        self.c().spawn_host_gateway(1).await?;
        say(format!("gateway 1 restarted with the same id (a new boot epoch) after {} s", since(killed_at)));
        wait_for!(30, format!("gateway 1's trunks back ({LINKS_TOTAL} in all)"), self.all_links_up().await);
        // Its phones come back on their own, spread by their backoff with jitter.
        let out = self.c().dir.join("gateway-1.out");
        wait_for!(
            60,
            format!("all {SESSIONS} phones of gateway 1 back"),
            live_counts(&out).last() == Some(&s)
        );
        say(format!(
            "all {SESSIONS} phones of gateway 1 reconnected {} s after the kill, spread by their backoff; phones held, second by second after the restart: {}",
            since(killed_at),
            live_counts(&out).iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
        ));
        let direct_after = self.c().metric_sum(DIRECT_SESSIONS).await?;
        if direct_after != direct_before {
            bail!("direct phones at the aggregators went from {direct_before} to {direct_after}");
        }
        say(format!(
            "no storm reached the aggregators: they saw {LINKS} trunk reconnects, and {direct_after} direct phones before and after"
        ));
        // The killed boot was superseded by the restarted one: its sessions are folded while the
        // run goes on, and the verification reads them from the folded totals. Marking the boot
        // and folding its sessions are separate steps: a session's rows are folded only once none
        // of the boot's reports waits in the journal, which can take a compaction or two.
        wait_for!(
            30,
            "gateway 1's killed boot marked folded",
            self.c().metric_sum(FOLDED_BOOTS).await.is_ok_and(|n| n >= 1.0)
        );
        wait_for!(
            30,
            format!("the killed boot's {SESSIONS} sessions folded"),
            self.c().metric_sum(FOLDED_SESSIONS).await.is_ok_and(|n| n >= f64::from(SESSIONS))
        );
        say(format!(
            "the killed boot was folded: {} sessions moved to per-device totals before the verification",
            self.c().metric_sum(FOLDED_SESSIONS).await?
        ));
        self.verify(&loads, |_, _| ()).await
    }

    async fn passthrough(&mut self) -> anyhow::Result<()> {
        self.start("passthrough", StoreKind::Sqlite, TlsMode::Passthrough, GatewayKind::Virtual).await?;
        let loads = self.load("pass", "15s", Bounds::default()).await?;
        wait_for!(30, "all trunks and phones connected", self.all_up().await);
        say("aggregators serve TLS 1.3 themselves (the same certificate); nginx passes TCP through (stream module)");
        self.verify(&loads, |_, _| ()).await
    }
}

/// The `live=N` counts a host gateway's status lines report, in order.
fn live_counts(out: &Path) -> Vec<u64> {
    crate::children::log_counters(&std::fs::read_to_string(out).unwrap_or_default(), "live")
}

#[cfg(test)]
mod tests {
    #[test]
    fn live_counts_are_read_from_status_lines() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("gateway-1.out");
        std::fs::write(&out, "INFO gateway::gateway: status live=0 capacity=300 links_up=2\nINFO gateway::gateway: status live=120 capacity=300\nstatus live=300 capacity=300\n").unwrap();
        assert_eq!(super::live_counts(&out), vec![0, 120, 300]);
        assert!(super::live_counts(&dir.path().join("none")).is_empty());
    }
}
