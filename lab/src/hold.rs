//! `lab hold`: N phones held end to end, measured per tier, then verified.
//!
//! The run, in order:
//! 1. plan the processes from N and the open-file limit; settle the kernel settings;
//! 2. a fresh database on the given PostgreSQL server, then the run's own network namespace
//!    (its connection table sized for the run; PostgreSQL's port relayed into it); the gateways
//!    provisioned in the database; one aggregator (its own TLS, its own device-token key) on 127.0.1.1;
//! 3. the host gateways, each on its own loopback address, their trunks up;
//! 4. mobile-sim's phones, spread round-robin over the gateways, each sending one byte at random
//!    intervals; the ramp ends when the aggregator has heard of every phone's session;
//! 5. the hold: CPU and memory of every tier from /proc, the aggregator's metrics at both ends;
//! 6. the phones stop (SIGINT: mobile-sim drains, waits for every byte to be durable, verifies
//!    every device against the database and writes its report);
//! 7. everything stops, newest first; the report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cli_env::Interrupts;
use tokio::process::Command;

use crate::children::{self, Proc};
use crate::cli::{EhashEntries, HoldArgs, Sysctl};
use crate::kernel;
use crate::metrics::{self, Scrape, Scraper, Window};
use crate::netns;
use crate::plan::Plan;
use crate::procfs::{self, KernelSockets, Usage};
use crate::report::{Goal, HoldReport, Sample, SimReport, Tier, TierFigures};

/// How often the lab samples the tiers and the aggregator's metrics.
const TICK: Duration = Duration::from_secs(1);
/// How long a server may take to listen (or a gateway's trunks to come up).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server gets to stop cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// mobile-sim's own wait for a worker's report (REPORT_WAIT there) plus its closes: the lab waits
/// this much longer than the drain for mobile-sim's exit.
const SIM_EXIT_MARGIN: Duration = Duration::from_secs(300);

/// The ledger counts as caught up with the ramp when it holds at most this share of the phones'
/// sessions.
const CAUGHT_UP_SHARE: f64 = 0.01;

/// The goals of issue #17, measured by every run.
const GOAL_CORES: f64 = 0.6;
const GOAL_LAG_P99_S: f64 = 2.0;
const GOAL_DRAIN_S: f64 = 5.0;
const GOAL_CONNECT_S: f64 = 120.0;

/// How long the lists of each tier's processes are reused between samples: finding them scans
/// all of /proc, which took most of a second per sample with 110 busy processes.
const PIDS_REUSED_FOR: Duration = Duration::from_secs(10);

/// The processes of a run, by tier.
struct Running {
    aggregator: Proc,
    gateways: Vec<Proc>,
    phones: Option<Proc>,
    /// Each tier's process ids, and when they were found.
    pids: std::cell::RefCell<Option<(Instant, [Vec<u32>; 4])>>,
}

impl Running {
    fn new(aggregator: Proc) -> Running {
        Running { aggregator, gateways: Vec::new(), phones: None, pids: Default::default() }
    }

    fn find_pids(&self, tier: Tier) -> Vec<u32> {
        match tier {
            Tier::Gateways => self.gateways.iter().filter_map(Proc::pid).collect(),
            Tier::MobileSim => self.phones.as_ref().and_then(Proc::pid).map(procfs::tree).unwrap_or_default(),
            Tier::Aggregator => self.aggregator.pid().map(procfs::tree).unwrap_or_default(),
            Tier::Postgres => procfs::named("postgres"),
        }
    }

    /// Every tier's CPU and memory now, its processes found again if `fresh` or if their list is
    /// older than [`PIDS_REUSED_FOR`].
    fn usage_with(&self, fresh: bool) -> [Usage; 4] {
        let mut pids = self.pids.borrow_mut();
        if fresh || pids.as_ref().is_none_or(|(at, _)| at.elapsed() >= PIDS_REUSED_FOR) {
            *pids = Some((Instant::now(), Tier::ALL.map(|t| self.find_pids(t))));
        }
        let (_, lists) = pids.as_ref().expect("just found");
        std::array::from_fn(|i| procfs::usage_of(&lists[i]))
    }

    /// For the figures (the hold's ends): every process found again.
    fn usage(&self) -> [Usage; 4] {
        self.usage_with(true)
    }

    /// An error when a process exited while it should be running (`phase`: where the run was).
    fn check_alive(&mut self, phase: &str) -> anyhow::Result<()> {
        let aggregator = &mut self.aggregator;
        if let Some(status) = aggregator.exited() {
            bail!("the aggregator exited during the {phase} ({status}): {}", aggregator.log_tail(5));
        }
        for g in &mut self.gateways {
            if let Some(status) = g.exited() {
                bail!("{} exited during the {phase} ({status}): {}", g.name, g.log_tail(5));
            }
        }
        if let Some(p) = &mut self.phones {
            if let Some(status) = p.exited() {
                bail!("mobile-sim ended during the {phase} ({status}); see {}", p.log.display());
            }
        }
        Ok(())
    }

    /// Stops everything, newest first: phones, gateways, the aggregator (which flushes what it
    /// holds).
    async fn stop(&mut self) {
        if let Some(p) = &mut self.phones {
            p.stop(STOP_GRACE).await;
        }
        for g in self.gateways.iter_mut().rev() {
            g.signal(libc::SIGTERM);
        }
        for g in self.gateways.iter_mut().rev() {
            g.stop(STOP_GRACE).await;
        }
        self.aggregator.stop(STOP_GRACE).await;
    }
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub(crate) fn binary(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: cargo build --release -p lab -p aggregator -p gateway -p mobile-sim (or give --bin-dir)",
            path.display()
        );
    }
    Ok(path)
}

/// Whether something listens on `addr` (from /proc/net/tcp, without connecting to it).
fn listening(addr: SocketAddr) -> bool {
    listeners(addr) > 0
}

/// How many sockets listen on `addr` (several with SO_REUSEPORT: the aggregator's workers).
pub(crate) fn listeners(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else { return 0 };
    let want = format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port());
    std::fs::read_to_string("/proc/net/tcp").map_or(0, |table| {
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A")
            })
            .count()
    })
}

pub(crate) async fn wait_listening(p: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    while !listening(addr) {
        if let Some(status) = p.exited() {
            bail!("{} exited at start ({status}): {}", p.name, p.log_tail(10));
        }
        if Instant::now() >= deadline {
            bail!("{} does not listen on {addr} after {START_TIMEOUT:?}: {}", p.name, p.log_tail(10));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Runs `lab hold`; the report (its `ok` says whether the run held and verified).
pub async fn run(args: HoldArgs) -> anyhow::Result<HoldReport> {
    // Caught from the lab's start (before any process of its own exists) to its end: a signal
    // stops the run in order instead of killing the lab and leaving its processes.
    let mut signals = Interrupts::catch()?;
    let files_limit = procfs::raise_files_limit();
    let plan = Plan::new(args.phones, args.per_process, files_limit)?;
    let settings = kernel::settle(
        &kernel::parse(kernel::DEPLOY_SYSCTL),
        args.sysctl == Sysctl::Apply && kernel::is_root(),
    );
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from(format!("lab-runs/hold-{stamp}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?.parent().context("the lab's folder")?.to_owned(),
    };
    let (aggregator_bin, gateway_bin, sim_bin) =
        (binary(&bin_dir, "aggregator")?, binary(&bin_dir, "gateway")?, binary(&bin_dir, "mobile-sim")?);
    eprintln!(
        "lab: {} phones -> {} gateways x {} -> 1 aggregator; {} mobile-sim processes; files in {}",
        plan.phones,
        plan.gateways,
        plan.phones_per_gateway,
        plan.sim_processes,
        out.display()
    );
    let load_at_start = load_average();

    let mut database = testkit::db::PgDatabase::try_create(&args.database_url, "holdfast_lab")
        .await
        .map_err(anyhow::Error::msg)?;
    if args.keep_database {
        database.keep();
    }
    // From here on the lab, and every process it starts, lives in the run's namespace (unless
    // --ehash-entries shared); PostgreSQL's port is relayed into it.
    let sockets = 2 * plan.phones + 2 * u64::from(args.links) * u64::from(plan.gateways) + 1_000;
    let netns = match (args.ehash_entries, kernel::is_root() && netns::supported()) {
        (EhashEntries::Shared, _) | (EhashEntries::Auto, false) => None,
        (EhashEntries::Auto, true) => Some(netns::buckets_for(sockets)),
        (EhashEntries::Buckets(n), _) => Some(n),
    }
    .map(|buckets| -> anyhow::Result<_> {
        let db = netns::database_addr(&args.database_url)?;
        let entered = netns::enter(buckets, &kernel::parse(kernel::DEPLOY_SYSCTL))?;
        netns::relay(db, entered.machine.clone())?;
        eprintln!(
            "lab: in a network namespace of its own, {} buckets in its connection table (the machine's: {})",
            entered.ehash_entries, entered.machine_ehash_entries
        );
        Ok(entered)
    })
    .transpose()?;
    let data = out.join("aggregator");
    std::fs::create_dir_all(&data)?;
    let admin = |what: &[&str]| {
        let mut c = Command::new(&aggregator_bin);
        c.arg("--data-dir")
            .arg(&data)
            .arg("--database-url")
            .arg(&database.url)
            .args(what)
            .env("RUST_LOG", "warn");
        c
    };
    // The gateways, provisioned (this also runs the migrations, once, before anyone serves).
    let names: Vec<String> = (1..=plan.gateways).map(|i| format!("gw-{i}")).collect();
    let mut add = vec!["gateway", "add"];
    add.extend(names.iter().map(String::as_str));
    let provisioned = children::output(admin(&add)).await?;
    crate::cluster::load::inject_fault(&database.url).await?;
    let device_public_key = children::output(admin(&["device", "public-key"])).await?.trim().to_owned();

    let port = testkit::free_port();
    let aggregator_addr = Plan::aggregator_addr(port);
    let mut aggregator = {
        let mut c = admin(&["--listen", &aggregator_addr.to_string(), "--max-trunks", "4096"]);
        c.env("RUST_LOG", "info").env("NO_COLOR", "1");
        Proc::spawn("aggregator", c, 0, &out, Some(&out.join("aggregator.out")))?
    };
    wait_listening(&mut aggregator, aggregator_addr).await?;
    let scraper = Scraper::new(aggregator_addr, &data.join("ca.pem"))?;
    let mut running = Running::new(aggregator);
    let setup = Setup {
        args: &args,
        plan: &plan,
        out: &out,
        database_url: &database.url,
        provisioned: &provisioned,
        device_public_key: &device_public_key,
        port,
        gateway_bin: &gateway_bin,
        sim_bin: &sim_bin,
        stamp,
    };
    // A Ctrl-C or SIGTERM ends the run here, not the lab: the processes it started are in their
    // own process groups (the terminal's Ctrl-C does not reach them) and must be stopped in order.
    let result = tokio::select! {
        r = setup.drive(&mut running, &scraper) => r,
        signal = signals.recv() => Err(anyhow::anyhow!("{signal}: the run was stopped")),
    };
    running.stop().await;
    // A token per phone (98 MB at a million): of no use once the phones are gone.
    let _ = std::fs::remove_file(out.join("tokens.txt"));
    let name = database.name.clone();
    let dropped = if args.keep_database { Ok(()) } else { database.drop_now().await };
    let mut report = result?;
    report.database = match (&dropped, args.keep_database) {
        (_, true) => format!("{name} (kept)"),
        (Ok(()), false) => format!("{name} (dropped)"),
        (Err(e), false) => format!("{name} (not dropped: {e})"),
    };
    report.files_limit = files_limit;
    report.kernel_settings = settings;
    report.netns = netns;
    report.load_average_at_start = load_at_start;
    report.load_average_at_end = load_average();
    std::fs::write(out.join("report.txt"), report.text())?;
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("report.html"), report.html())?;
    eprintln!("lab: reports in {}/report.{{txt,json,html}}", out.display());
    Ok(report)
}

/// What the run's middle part needs from its start.
struct Setup<'a> {
    args: &'a HoldArgs,
    plan: &'a Plan,
    out: &'a Path,
    database_url: &'a str,
    /// `gateway add`'s output: a `NAME HEXSECRET` line per gateway.
    provisioned: &'a str,
    device_public_key: &'a str,
    port: u16,
    gateway_bin: &'a Path,
    sim_bin: &'a Path,
    stamp: u64,
}

impl Setup<'_> {
    /// The part of the run between the aggregator's start and the stop of everything.
    async fn drive(&self, running: &mut Running, scraper: &Scraper) -> anyhow::Result<HoldReport> {
        let Setup {
            args,
            plan,
            out,
            database_url,
            provisioned,
            device_public_key,
            port,
            gateway_bin,
            sim_bin,
            stamp,
        } = *self;
        let aggregator_addr = Plan::aggregator_addr(port);
        let ca = out.join("aggregator/ca.pem");
        // --- the gateways --------------------------------------------------------------------------
        let mut targets = Vec::new();
        for (i, line) in provisioned.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let (name, secret) = line.split_once(' ').context("`gateway add` printed no NAME SECRET line")?;
            let secret_file = out.join(format!("{name}.secret"));
            std::fs::write(&secret_file, secret.trim())?;
            std::fs::set_permissions(&secret_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            let listen = Plan::gateway_addr(i as u32, port);
            let mut c = Command::new(gateway_bin);
            c.arg("--listen")
                .arg(listen.to_string())
                .arg("--aggregator")
                .arg(aggregator_addr.to_string())
                .arg("--server-name")
                .arg("localhost")
                .arg("--ca")
                .arg(&ca)
                .arg("--id")
                .arg(name)
                .arg("--secret-file")
                .arg(&secret_file)
                .arg("--links")
                .arg(args.links.to_string())
                .arg("--capacity")
                .arg(plan.phones_per_gateway.to_string())
                .arg("--device-public-key")
                .arg(device_public_key)
                .arg("--status-interval-s")
                .arg("10")
                .arg("--io-batch-us")
                .arg(args.gateway_io_batch_us.to_string())
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1");
            let mut g = Proc::spawn(name, c, args.nice, out, None)?;
            wait_listening(&mut g, listen).await?;
            running.gateways.push(g);
            targets.push(format!("ws://{listen}/ws"));
        }
        let links = f64::from(plan.gateways) * f64::from(args.links);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            running.check_alive("start")?;
            if scraper.scrape().await.ok().and_then(|s| s.value(metrics::TRUNKS)).is_some_and(|n| n >= links)
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!("the gateways' {links} trunk links are not all up after {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let before_phones = running.usage();
        let kernel_before = KernelSockets::read();

        // --- the phones' tokens, issued before they start, as an operator enrols phones ---------------
        let device_prefix = format!("lab{stamp}-");
        let device_key = out.join("aggregator/device-token.key");
        let token_file = out.join("tokens.txt");
        let tokens_issued_in = if args.sign_tokens_at_connect {
            None
        } else {
            let started = Instant::now();
            let mut c = Command::new(sim_bin);
            c.arg("tokens")
                .arg("--phones")
                .arg(plan.phones.to_string())
                .arg("--device-prefix")
                .arg(&device_prefix)
                .arg("--device-key")
                .arg(&device_key)
                .arg("--out")
                .arg(&token_file);
            children::output(c).await.context("issuing the phones' tokens")?;
            Some(started.elapsed())
        };

        // --- the phones ----------------------------------------------------------------------------
        let mean_ms = (args.mean_interval_s * 1000.0).max(6.0);
        let mut c = Command::new(sim_bin);
        c.arg("phones");
        for t in &targets {
            c.arg("--target").arg(t);
        }
        c.arg("--phones")
            .arg(plan.phones.to_string())
            .arg("--rate")
            .arg(args.rate.to_string())
            .arg("--concurrent")
            .arg((args.concurrent_per_process.max(1) * plan.sim_processes).to_string())
            .arg("--send-tick")
            .arg(format!("{}ms", args.send_tick_ms))
            .arg("--engine")
            .arg(&args.phone_engine)
            .arg("--io-batch-us")
            .arg(args.phone_io_batch_us.to_string())
            .arg("--per-process")
            .arg(plan.phones_per_sim_process.to_string())
            .arg("--min-interval")
            .arg(format!("{}ms", (mean_ms / 6.0) as u64))
            .arg("--max-interval")
            .arg(format!("{}ms", (mean_ms * 11.0 / 6.0) as u64))
            .arg("--device-prefix")
            .arg(&device_prefix)
            .arg("--drain-timeout")
            .arg(format!("{}s", args.drain_timeout_s))
            .arg("--verify")
            .arg("--database-url")
            .arg(database_url)
            .arg("--json")
            .arg("--quiet")
            .env("RUST_LOG", "warn");
        if tokens_issued_in.is_some() {
            c.arg("--token-file").arg(&token_file);
        } else {
            c.arg("--device-key").arg(&device_key);
        }
        let sim_report = out.join("mobile-sim.json");
        running.phones = Some(Proc::spawn("mobile-sim", c, args.nice, out, Some(&sim_report))?);
        running.pids.replace(None);
        let t0 = Instant::now();
        let mut sampler = Sampler::new(t0, before_phones);

        // --- the ramp ------------------------------------------------------------------------------
        let ramp_deadline = t0 + Duration::from_secs(args.ramp_timeout_s);
        let connected_after = loop {
            tokio::time::sleep(TICK).await;
            let scrape = scraper.scrape().await.ok();
            sampler.sample(running, scrape.as_ref(), "ramp");
            running.check_alive("ramp")?;
            if scrape.and_then(|s| s.value(metrics::SESSIONS_OPENED)).is_some_and(|n| n >= plan.phones as f64)
            {
                break t0.elapsed();
            }
            if Instant::now() >= ramp_deadline {
                bail!("not every phone connected within {} s", args.ramp_timeout_s);
            }
        };
        eprintln!(
            "lab: all {} phones connected after {:.1} s; holding",
            plan.phones,
            connected_after.as_secs_f64()
        );
        let settle_until = Instant::now() + Duration::from_secs(args.settle_s);
        while Instant::now() < settle_until {
            tokio::time::sleep(TICK).await;
            let scrape = scraper.scrape().await.ok();
            sampler.sample(running, scrape.as_ref(), "settle");
        }

        // --- the hold ------------------------------------------------------------------------------
        let hold_start = Instant::now();
        let usage_start = running.usage();
        let scrape_start = scraper.scrape().await.context("the aggregator's metrics at the hold's start")?;
        let mut kernel_hold = None;
        let mut rss_hold = [0u64; 4];
        let mut caught_up: Option<(Duration, Scrape)> = None;
        let hold = Duration::from_secs(args.hold_s);
        while hold_start.elapsed() < hold {
            tokio::time::sleep(TICK).await;
            let scrape = scraper.scrape().await.ok();
            sampler.sample(running, scrape.as_ref(), "hold");
            // The ramp leaves every new session's first row in the ledger (a million inserts);
            // the moment the database has caught up starts the hold's steady part.
            if caught_up.is_none() {
                if let Some(s) = scrape.filter(|s| {
                    s.value(metrics::LEDGER_ENTRIES)
                        .is_some_and(|n| n <= plan.phones as f64 * CAUGHT_UP_SHARE)
                }) {
                    caught_up = Some((hold_start.elapsed(), s));
                }
            }
            running.check_alive("hold")?;
            // Memory and the kernel's sockets, halfway through the hold.
            if kernel_hold.is_none() && hold_start.elapsed() >= hold / 2 {
                kernel_hold = KernelSockets::read();
                rss_hold = running.usage().map(|u| u.rss_bytes);
            }
        }
        let usage_end = running.usage();
        let scrape_end = scraper.scrape().await.context("the aggregator's metrics at the hold's end")?;
        let hold_seconds = hold_start.elapsed().as_secs_f64();
        if kernel_hold.is_none() {
            kernel_hold = KernelSockets::read();
            rss_hold = usage_end.map(|u| u.rss_bytes);
        }

        // --- the stop ------------------------------------------------------------------------------
        eprintln!("lab: stopping the phones; mobile-sim drains and verifies every device");
        running.phones.as_ref().context("mobile-sim")?.signal(libc::SIGINT);
        let limit = Duration::from_secs(args.drain_timeout_s) + SIM_EXIT_MARGIN;
        let stopped = Instant::now();
        let exit = loop {
            if let Some(status) = running.phones.as_mut().context("mobile-sim")?.wait(TICK).await {
                break Some(status);
            }
            let scrape = scraper.scrape().await.ok();
            sampler.sample(running, scrape.as_ref(), "stop");
            if stopped.elapsed() > limit {
                break None;
            }
        };
        let sim: Option<SimReport> =
            std::fs::read(&sim_report).ok().and_then(|b| serde_json::from_slice(&b).ok());

        // --- the figures ---------------------------------------------------------------------------
        let durable = delta(&scrape_start, &scrape_end, metrics::FLUSHED_BYTES);
        let lag = Window::between(&scrape_start, &scrape_end, metrics::FLUSH_LAG);
        let steady = caught_up.as_ref().map(|(_, s)| Window::between(s, &scrape_end, metrics::FLUSH_LAG));
        let tiers: Vec<TierFigures> = Tier::ALL
            .iter()
            .enumerate()
            .map(|(i, &tier)| {
                let cpu = (usage_end[i].cpu_seconds - usage_start[i].cpu_seconds).max(0.0);
                let grown = rss_hold[i] as f64 - sampler.before_phones[i].rss_bytes as f64;
                TierFigures {
                    tier,
                    processes: usage_end[i].processes,
                    cores_during_hold: cpu / hold_seconds,
                    us_per_phone_byte: durable.filter(|&b| b > 0.0).map(|b| cpu * 1e6 / b),
                    rss_before_phones_bytes: sampler.before_phones[i].rss_bytes,
                    rss_during_hold_bytes: rss_hold[i],
                    rss_per_phone_bytes: (tier != Tier::Postgres).then(|| grown / plan.phones as f64),
                }
            })
            .collect();
        let holding_cores = tiers[0].cores_during_hold + tiers[1].cores_during_hold;
        let kernel_per_socket = match (kernel_before, kernel_hold) {
            (Some(b), Some(h)) => h.per_socket_since(&b),
            _ => None,
        };
        let mut failures = Vec::new();
        match exit {
            None => failures.push(format!("mobile-sim did not exit within {limit:?} of the hold's end")),
            Some(s) if !s.success() => failures.push(format!("mobile-sim exited with {s}")),
            Some(_) => {}
        }
        match &sim {
            None => failures.push(format!("no mobile-sim report in {}", sim_report.display())),
            Some(r) => {
                if !r.ok {
                    failures.push(format!("mobile-sim's report is not ok: {}", r.failure_lines().join("; ")));
                }
                if r.connections.established < plan.phones
                    || r.connections.failed > 0
                    || r.connections.dropped > 0
                {
                    failures.push(format!(
                        "connections: {} of {} established, {} failed, {} dropped",
                        r.connections.established, plan.phones, r.connections.failed, r.connections.dropped
                    ));
                }
                match &r.verification {
                    Some(v)
                        if v.devices_checked == plan.phones
                            && v.lost_bytes == 0
                            && v.double_counted_bytes == 0 => {}
                    Some(v) => failures.push(format!(
                        "verification: {} of {} devices checked, {} bytes lost, {} double-counted",
                        v.devices_checked, plan.phones, v.lost_bytes, v.double_counted_bytes
                    )),
                    None => failures.push("mobile-sim verified nothing".into()),
                }
            }
        }
        // A hold in which nothing became durable measured nothing.
        if !durable.is_some_and(|b| b > 0.0) {
            let counted = durable.map_or("the aggregator's metrics could not be read".to_owned(), |b| {
                format!("its flushes made {b:.0} bytes durable")
            });
            failures.push(format!("no byte became durable during the {hold_seconds:.0} s hold ({counted})"));
        }
        let drain = sim.as_ref().map(|r| r.drain_seconds);
        let goals = vec![
            goal(
                "all phones connected",
                format!("<= {GOAL_CONNECT_S} s"),
                Some(connected_after.as_secs_f64()),
                |v| v <= GOAL_CONNECT_S,
                " s",
            ),
            goal(
                "gateways + mobile-sim cores during the hold",
                format!("<= {GOAL_CORES}"),
                Some(holding_cores),
                |v| v <= GOAL_CORES,
                "",
            ),
            goal(
                "flush lag p99 during the hold (at most)",
                format!("<= {GOAL_LAG_P99_S} s"),
                lag.quantile_at_most(0.99),
                |v| v <= GOAL_LAG_P99_S,
                " s",
            ),
            goal(
                "all durable after the stop",
                format!("<= {GOAL_DRAIN_S} s"),
                drain,
                |v| v <= GOAL_DRAIN_S,
                " s",
            ),
            goal(
                "gateway RSS per held phone",
                "<= 1024 B".into(),
                tiers[0].rss_per_phone_bytes,
                |v| v <= 1024.0,
                " B",
            ),
        ];
        Ok(HoldReport {
            phones: plan.phones,
            gateways: plan.gateways,
            phones_per_gateway: plan.phones_per_gateway,
            sim_processes: plan.sim_processes,
            links_per_gateway: args.links,
            nice: args.nice,
            concurrent_connects: args.concurrent_per_process.max(1) * plan.sim_processes,
            send_tick_ms: args.send_tick_ms,
            tokens_issued_in_s: tokens_issued_in.map(|d| d.as_secs_f64()),
            gateway_io_batch_us: args.gateway_io_batch_us,
            // What mobile-sim says ran its phones ("auto" resolved).
            phone_engine: sim
                .as_ref()
                .and_then(|r| r.engine.clone())
                .unwrap_or_else(|| args.phone_engine.clone()),
            phone_io_batch_us: args.phone_io_batch_us,
            database: String::new(),
            files_limit: 0,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            machine: crate::procfs::machine(),
            load_average_at_start: String::new(),
            load_average_at_end: String::new(),
            kernel_settings: Vec::new(),
            netns: None,
            all_connected_after_s: Some(connected_after.as_secs_f64()),
            hold_seconds,
            durable_bytes_during_hold: durable,
            flushes_during_hold: Some(lag.count()),
            flush_lag_p50_at_most_s: lag.quantile_at_most(0.5),
            flush_lag_p99_at_most_s: lag.quantile_at_most(0.99),
            caught_up_after_s: caught_up.as_ref().map(|(at, _)| at.as_secs_f64()),
            steady_flush_lag_p99_at_most_s: steady.as_ref().and_then(|w| w.quantile_at_most(0.99)),
            tiers,
            gateways_and_mobile_sim_cores: holding_cores,
            tcp_sockets_during_hold: kernel_hold.map(|k| k.tcp_sockets),
            kernel_bytes_per_tcp_socket: kernel_per_socket,
            mobile_sim: sim,
            goals,
            ok: failures.is_empty(),
            failures,
            timeline: std::mem::take(&mut sampler.timeline),
        })
    }
}

fn delta(before: &Scrape, after: &Scrape, name: &str) -> Option<f64> {
    Some(after.value(name)? - before.value(name)?)
}

fn goal(what: &'static str, goal: String, measured: Option<f64>, met: fn(f64) -> bool, unit: &str) -> Goal {
    Goal {
        what,
        goal,
        measured: measured.map_or("-".into(), |v| {
            if v.is_infinite() {
                "beyond".into()
            } else {
                format!("{v:.2}{unit}")
            }
        }),
        met: measured.map(met),
    }
}

/// The run's timeline: every tier's CPU and memory each second, and the aggregator's figures.
struct Sampler {
    t0: Instant,
    before_phones: [Usage; 4],
    last: Option<(Instant, [Usage; 4], Option<f64>)>,
    timeline: Vec<Sample>,
}

impl Sampler {
    fn new(t0: Instant, before_phones: [Usage; 4]) -> Sampler {
        Sampler { t0, before_phones, last: None, timeline: Vec::new() }
    }

    fn sample(&mut self, running: &Running, scrape: Option<&Scrape>, phase: &'static str) {
        self.record(running.usage_with(false), scrape, phase);
    }

    fn record(&mut self, usage: [Usage; 4], scrape: Option<&Scrape>, phase: &'static str) {
        let now = Instant::now();
        let durable = scrape.and_then(|s| s.value(metrics::FLUSHED_BYTES));
        let (cores, durable_per_s) = match &self.last {
            Some((then, before, durable_then)) => {
                let dt = (now - *then).as_secs_f64().max(1e-3);
                let cores =
                    std::array::from_fn(|i| ((usage[i].cpu_seconds - before[i].cpu_seconds) / dt).max(0.0));
                let rate = match (durable, durable_then) {
                    (Some(a), Some(b)) => Some((a - b).max(0.0) / dt),
                    _ => None,
                };
                (cores, rate)
            }
            None => ([0.0; 4], None),
        };
        self.timeline.push(Sample {
            t_s: (now - self.t0).as_secs_f64(),
            phase,
            cores,
            rss_bytes: usage.map(|u| u.rss_bytes),
            durable_bytes_per_s: durable_per_s,
            ledger_entries: scrape.and_then(|s| s.value(metrics::LEDGER_ENTRIES)),
            sessions_opened: scrape.and_then(|s| s.value(metrics::SESSIONS_OPENED)),
        });
        self.last = Some((now, usage, durable));
    }
}
