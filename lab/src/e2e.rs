//! `lab e2e` (scripts/e2e.sh; scripts/test.sh runs it): the real binaries against a real
//! PostgreSQL, each run verified per device against the database: mobile-sim's verdict (every
//! connection up, every byte sent confirmed and persisted exactly once) or the command fails.
//!
//! 1. 21,000 phones over wss, more than one process may open here: mobile-sim runs two worker
//!    processes with sources spread over 127.0.0.x, and the aggregator runs `--workers 2`.
//! 2. 100 virtual gateways x 1,000 sessions (100,000 sessions) over 200 TLS trunks.
//!
//! A fresh database on the given server for each run, dropped at its end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

use crate::children::{self, Proc};
use crate::cluster::load::inject_fault;
use crate::cluster::run::{bin_dir, summary};
use crate::report::SimReport;

/// How long the aggregator's workers may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Phones straight to the aggregator the aggregator is given room for, per worker.
const MAX_PHONES_PER_WORKER: &str = "15000";
/// The aggregator's worker threads (one listener each, SO_REUSEPORT).
const WORKERS: usize = 2;

#[derive(Debug, clap::Args)]
pub struct E2eArgs {
    /// The PostgreSQL server (a role that may CREATE DATABASE); each run makes its own database.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: String,

    /// Phones over wss (run 1).
    #[arg(long, env = "E2E_PHONES", default_value_t = 21_000, value_name = "N")]
    pub phones: u64,

    /// Virtual gateways (run 2), 2 trunk links each.
    #[arg(long, env = "E2E_GATEWAYS", default_value_t = 100, value_name = "G")]
    pub gateways: u32,

    /// Sessions per gateway (run 2).
    #[arg(long, env = "E2E_SESSIONS", default_value_t = 1_000, value_name = "N")]
    pub sessions: u32,

    /// How long each load sends (default: 45s for the phones, 20s for the gateways).
    #[arg(long, env = "E2E_DURATION", value_name = "DURATION")]
    pub duration: Option<String>,

    /// Where the aggregator and mobile-sim binaries are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// Runs `lab e2e`; Ok(true) when both runs verified.
pub async fn run(args: E2eArgs) -> anyhow::Result<bool> {
    let bin = bin_dir(args.bin_dir.clone())?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let work = std::env::temp_dir().join(format!("holdfast-e2e-{stamp:x}"));
    std::fs::create_dir_all(&work)?;
    let database = testkit::db::PgDatabase::try_create(&args.database_url, "holdfast_e2e")
        .await
        .map_err(anyhow::Error::msg)?;
    let result = runs(&args, &bin, &work, &database.url).await;
    if let Err(e) = database.drop_now().await {
        eprintln!("lab e2e: {e}");
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn runs(
    args: &E2eArgs,
    bin: &std::path::Path,
    work: &std::path::Path,
    url: &str,
) -> anyhow::Result<bool> {
    let port = crate::cluster::free_port()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = children::clean_command(&bin.join("aggregator"));
    c.arg("--data-dir")
        .arg(work)
        .args(["--database-url", url, "--listen", &listen.to_string()])
        .args(["--workers", &WORKERS.to_string(), "--max-phones", MAX_PHONES_PER_WORKER])
        .env("RUST_LOG", "warn");
    let mut aggregator = Proc::spawn("aggregator", c, 0, work, Some(&work.join("aggregator.out")))?;
    let deadline = Instant::now() + START_TIMEOUT;
    while crate::hold::listeners(listen) < WORKERS {
        if let Some(status) = aggregator.exited() {
            bail!("the aggregator exited at start ({status}): {}", aggregator.log_tail(20));
        }
        if Instant::now() >= deadline {
            bail!("the aggregator's {WORKERS} workers do not listen after {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The aggregator has run the migrations: a fault (if asked for) goes in now, before any load.
    inject_fault(url).await?;
    let sim = || children::clean_command(&bin.join("mobile-sim"));
    let ca = work.join("ca.pem");
    let mut passed = 0;

    eprintln!(
        "lab e2e 1/2: {} phones over wss, mobile-sim worker processes, aggregator --workers {WORKERS}",
        args.phones
    );
    // --per-process makes two worker processes whatever the size.
    let mut phones = sim();
    phones
        .args(["phones", "--target", &format!("wss://localhost:{port}/ws")])
        .arg("--ca")
        .arg(&ca)
        .arg("--device-key")
        .arg(work.join("device-token.key"))
        .args(["--phones", &args.phones.to_string(), "--rate", "3000", "-C", "512"])
        .args(["--per-process", &args.phones.div_ceil(2).to_string()])
        .args(["--min-interval", "2s", "--max-interval", "10s"])
        .args(["--duration", args.duration.as_deref().unwrap_or("45s")])
        .args(["--device-prefix", "e2e-phone-", "--verify", "--database-url", url, "--json", "--quiet"]);
    let r = load("phones", phones, work).await?;
    print!("{}", summary(&r));
    if !r.ok {
        bail!("e2e 1/2 failed: mobile-sim's verdict is above");
    }
    if r.processes != 2 {
        bail!("e2e 1/2: {} worker processes, expected 2", r.processes);
    }
    passed += 1;

    eprintln!(
        "lab e2e 2/2: {} gateways x {} sessions over {} TLS trunks",
        args.gateways,
        args.sessions,
        args.gateways * 2
    );
    let names: Vec<String> = (0..args.gateways).map(|i| format!("site-{i:03}")).collect();
    let mut add = children::clean_command(&bin.join("aggregator"));
    add.arg("--data-dir").arg(work).args(["--database-url", url, "gateway", "add"]).args(&names);
    let gateways_file = work.join("gateways.txt");
    std::fs::write(&gateways_file, children::output(add).await.context("provisioning the gateways")?)?;
    let mut gateways = sim();
    gateways
        .args(["gateways", "--target", &format!("wss://localhost:{port}/trunk")])
        .arg("--ca")
        .arg(&ca)
        .arg("--gateways-file")
        .arg(&gateways_file)
        .args([
            "--gateways",
            &args.gateways.to_string(),
            "--sessions-per-gateway",
            &args.sessions.to_string(),
        ])
        .args(["--min-interval", "1s", "--max-interval", "5s"])
        .args(["--duration", args.duration.as_deref().unwrap_or("20s")])
        .args(["--device-prefix", "e2e-gw-", "--verify", "--database-url", url, "--json", "--quiet"]);
    let r = load("gateways", gateways, work).await?;
    print!("{}", summary(&r));
    if !r.ok {
        bail!("e2e 2/2 failed: mobile-sim's verdict is above");
    }
    passed += 1;
    aggregator.stop(Duration::from_secs(10)).await;
    println!("e2e: {passed} passed, 0 failed");
    Ok(true)
}

/// Runs one mobile-sim load to its end; its report.
async fn load(
    name: &str,
    command: tokio::process::Command,
    work: &std::path::Path,
) -> anyhow::Result<SimReport> {
    let report = work.join(format!("{name}.json"));
    let mut p = Proc::spawn(name, command, 0, work, Some(&report))?;
    let status = p.wait_all().await;
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    serde_json::from_str(&text)
        .with_context(|| format!("mobile-sim ({name}) wrote no report (exit {status:?}): {}", p.log_tail(20)))
}
