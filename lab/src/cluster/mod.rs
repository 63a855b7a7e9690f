//! A local holdfast cluster, started and stopped part by part: the store (a private PostgreSQL,
//! or the embedded SQLite file), N aggregators, nginx in front, gateways and phones. `lab
//! cluster` (README's run command, [`run`]) and `lab drills` ([`crate::drills`]) are built on it.
//!
//! Layout: every part on its own loopback address, all on the cluster's port P, as if on their
//! own hosts; nothing listens beyond 127.0.0.0/8 (unless LAN mode asks nginx to):
//!
//! | part           | address          |                                                      |
//! |----------------|------------------|------------------------------------------------------|
//! | nginx          | 127.0.0.1:P      | TLS 1.3 for phones (/ws) and gateways (/trunk)       |
//! | aggregator i   | 127.0.1.i:P      | `--plain` behind nginx, or its own TLS (passthrough) |
//! | PostgreSQL     | 127.0.1.200:P    | a private server in the cluster's folder             |
//! | host gateway i | 127.0.2.i:P      | the phones' side of a real gateway                   |
//!
//! Every process started here is a [`Proc`] in the cluster's list, stopped newest first by
//! [`Cluster::stop_all`] (or killed when the cluster is dropped); the private PostgreSQL last.

pub mod load;
pub mod nginx;
pub mod postgres;
pub mod run;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::Command;

use crate::children::{self, Proc};
use crate::metrics::{Scrape, Scraper};
use postgres::PrivatePostgres;

/// Most aggregators in a cluster: the certificate names 127.0.1.1 ..= 127.0.1.16.
pub const MAX_AGGREGATORS: u32 = 16;
/// Most host gateways: one loopback address each, 127.0.2.1 ..= 127.0.2.250.
pub const MAX_HOST_GATEWAYS: u32 = 250;

/// How long a process gets to stop cleanly (an aggregator's graceful shutdown takes about 4 s).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long nginx may take to answer /healthz after its start.
const NGINX_START: Duration = Duration::from_secs(10);

/// Where the counts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// The embedded SQLite file, shared by the aggregators (WAL: safe on one machine).
    Sqlite,
    /// A private PostgreSQL server in the cluster's folder.
    Postgres,
    /// PostgreSQL when it is installed (and its account can reach the folder), else SQLite.
    Auto,
}

/// Where TLS ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// nginx terminates TLS 1.3; the aggregators run `--plain` behind it.
    Terminate,
    /// nginx passes TCP through (stream module); every aggregator serves TLS itself.
    Passthrough,
}

/// What "a gateway" is in this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GatewayKind {
    /// firmware/host's `gateway` (the firmware's core on Linux), mobile-sim phones connected to it.
    Host,
    /// mobile-sim's virtual gateway: the trunk crate's real state machine with its phones inside.
    Virtual,
}

/// How a setting is spelled on the command line ("sqlite", "terminate"): for messages.
pub fn spelled<T: clap::ValueEnum>(value: T) -> String {
    value.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())
}

/// What a cluster is made of.
#[derive(Debug, Clone)]
pub struct Settings {
    pub aggregators: u32,
    pub store: StoreKind,
    pub tls: TlsMode,
    /// Gateways provisioned in the store (gw-1 ..= gw-N).
    pub gateways: u32,
    pub gateway: GatewayKind,
    /// Trunk links per gateway.
    pub links: u32,
    /// Phones per gateway.
    pub sessions: u32,
    /// A phone's pause between bytes, as mobile-sim takes it ("200ms", "2s").
    pub min_interval: String,
    pub max_interval: String,
    /// LAN mode: this machine's address on its network, for a real phone (nginx listens there
    /// too; the certificate names it).
    pub lan_address: Option<IpAddr>,
    pub nginx_workers: u32,
    /// The aggregators' RUST_LOG.
    pub aggregator_log: String,
    /// More environment for the aggregators (the drills' folding margins).
    pub aggregator_env: Vec<(String, String)>,
    /// Where aggregator, gateway and mobile-sim are.
    pub bin: PathBuf,
    /// A PostgreSQL database of the caller's to use instead of the private server (`lab bench
    /// trunk-throughput` on a server it was given); `None`: as [`Settings::store`] says.
    pub database_url: Option<String>,
}

impl Settings {
    /// Two aggregators, store auto, TLS at nginx, 2 host gateways of 500 phones on 2 links each,
    /// a byte every 0.2-2 s; the binaries next to the lab's own.
    pub fn new(bin: PathBuf) -> Settings {
        Settings {
            aggregators: 2,
            store: StoreKind::Auto,
            tls: TlsMode::Terminate,
            gateways: 2,
            gateway: GatewayKind::Host,
            links: 2,
            sessions: 500,
            min_interval: "200ms".into(),
            max_interval: "2s".into(),
            lan_address: None,
            nginx_workers: 1,
            aggregator_log: "info".into(),
            aggregator_env: Vec::new(),
            bin,
            database_url: None,
        }
    }
}

/// A provisioned gateway: its id and secret (`aggregator gateway add`'s `NAME HEXSECRET`).
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub name: String,
    pub secret: String,
}

/// One local cluster.
pub struct Cluster {
    pub settings: Settings,
    /// Its folder (kept between runs: the CA, the store, the dashboard token).
    pub dir: PathBuf,
    pub port: u16,
    pub pki: PathBuf,
    pub dashboard_token: String,
    /// The store the aggregators share (set by [`Cluster::start_servers`]).
    pub db_url: String,
    pub gateways: Vec<Provisioned>,
    /// The store as resolved from [`StoreKind::Auto`].
    pub store: StoreKind,
    procs: Vec<Proc>,
    pub postgres: Option<PrivatePostgres>,
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A port that nothing listens on at any address (the drills run next to other work).
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let p = testkit::free_port();
        if !listening_on_port(p) {
            return Ok(p);
        }
    }
    bail!("no free port found")
}

fn listening_on_port(port: u16) -> bool {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|table| {
        table.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|a| a.ends_with(&want)) && f.get(3) == Some(&"0A")
        })
    })
}

impl Cluster {
    /// A cluster in `dir` (created; kept between runs) on `port`. Resolves the store: PostgreSQL
    /// when asked, or when auto and installed.
    pub async fn init(dir: &Path, port: u16, settings: Settings) -> anyhow::Result<Cluster> {
        if !(1..=MAX_AGGREGATORS).contains(&settings.aggregators) {
            bail!("a cluster has 1 to {MAX_AGGREGATORS} aggregators, not {}", settings.aggregators);
        }
        if settings.gateway == GatewayKind::Host && settings.gateways > MAX_HOST_GATEWAYS {
            bail!("a cluster has at most {MAX_HOST_GATEWAYS} host gateways, not {}", settings.gateways);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        // The dashboard's token, kept with the cluster so its address stays the same between
        // runs: the aggregators run --plain behind nginx, where without a token it is closed.
        let token_file = dir.join("dashboard.token");
        let dashboard_token = match std::fs::read_to_string(&token_file) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => {
                let t = random_hex(16);
                std::fs::write(&token_file, &t)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))?;
                t
            }
        };
        let store = match settings.store {
            StoreKind::Auto if postgres::bindir().is_some() => {
                // As root the server runs as the postgres account, which must reach the folder.
                if postgres::owner_can_reach(dir.parent().unwrap_or(&dir)).await {
                    StoreKind::Postgres
                } else {
                    eprintln!(
                        "[cluster] PostgreSQL is installed but its account cannot reach {}: using the embedded store",
                        dir.display()
                    );
                    StoreKind::Sqlite
                }
            }
            StoreKind::Auto => StoreKind::Sqlite,
            s => s,
        };
        Ok(Cluster {
            pki: dir.join("pki"),
            dir,
            port,
            dashboard_token,
            db_url: String::new(),
            gateways: Vec::new(),
            store,
            settings,
            procs: Vec::new(),
            postgres: None,
        })
    }

    /// nginx's address: where phones and gateways connect.
    pub fn front(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Aggregator `i`'s own address (1-based).
    pub fn aggregator_addr(&self, i: u32) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(127, 0, 1, i as u8), self.port))
    }

    /// The base URL of aggregator `i` (metrics, dashboard).
    pub fn aggregator_url(&self, i: u32) -> String {
        let scheme = match self.settings.tls {
            TlsMode::Passthrough => "https",
            TlsMode::Terminate => "http",
        };
        format!("{scheme}://{}", self.aggregator_addr(i))
    }

    /// Host gateway `i`'s phone listener (1-based).
    pub fn host_gateway_addr(&self, i: u32) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(127, 0, 2, i as u8), self.port))
    }

    pub fn ca(&self) -> PathBuf {
        self.pki.join("ca.pem")
    }

    pub fn device_key(&self) -> PathBuf {
        self.pki.join("device-token.key")
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.settings.bin.join(name)
    }

    /// The aggregator binary with the cluster's own settings only: a DATABASE_URL meant for
    /// something else (scripts/test.sh's shared Postgres) or a HOLDFAST_* setting must not reach
    /// it ([`Settings::aggregator_env`] is how a caller passes one on).
    pub fn aggregator(&self) -> Command {
        let mut c = children::clean_command(&self.bin("aggregator"));
        c.env("NO_COLOR", "1");
        c
    }

    /// Runs an admin subcommand of the aggregator on the cluster's store; its stdout.
    pub async fn admin(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = self.aggregator();
        c.arg("--data-dir")
            .arg(self.dir.join("admin"))
            .arg("--database-url")
            .arg(&self.db_url)
            .args(args)
            .env("RUST_LOG", "warn");
        children::output(c).await
    }

    /// A device token for `device`, from the cluster's device key: `(device, token)`.
    pub async fn device_token(&self, device: &str, valid_for_days: u32) -> anyhow::Result<(String, String)> {
        let mut c = self.aggregator();
        c.arg("--device-key").arg(self.device_key()).args([
            "device",
            "token",
            "--valid-for-days",
            &valid_for_days.to_string(),
            device,
        ]);
        let line = children::output(c).await?;
        let (d, t) = line.trim().split_once(' ').context("`device token` printed no DEVICE TOKEN")?;
        Ok((d.to_owned(), t.to_owned()))
    }

    // --- the servers ---------------------------------------------------------------------------

    /// The certificates, the store, the aggregators and nginx, ready for load.
    pub async fn start_servers(&mut self) -> anyhow::Result<()> {
        self.start_aggregators().await?;
        self.start_nginx().await
    }

    /// The certificates, the store and the aggregators, nothing in front of them (load straight
    /// to an aggregator: `lab bench trunk-throughput`).
    pub async fn start_aggregators(&mut self) -> anyhow::Result<()> {
        for b in ["aggregator", "mobile-sim"] {
            if !self.bin(b).is_file() {
                bail!(
                    "{} is missing: cargo build --release -p aggregator -p mobile-sim -p gateway",
                    self.bin(b).display()
                );
            }
        }
        self.make_pki().await?;
        self.start_store().await?;
        for i in 1..=self.settings.aggregators {
            self.start_aggregator(i).await?;
        }
        Ok(())
    }

    /// A local CA and one server certificate (ECDSA P-256, what the gateways' TLS speaks) for
    /// localhost, the aggregators' addresses and the LAN address, made by the aggregator's own
    /// `certificate` subcommand (the one CA implementation). The CA is kept between runs (a phone
    /// that installed it keeps trusting the cluster); the server certificate is made again when
    /// it lacks a name or is about to expire. nginx serves it (terminate) or every aggregator
    /// does (passthrough): clients pin the CA either way.
    pub async fn make_pki(&self) -> anyhow::Result<()> {
        let mut sans: Vec<String> = (1..=16).map(|i| format!("127.0.1.{i}")).collect();
        sans.extend(self.settings.lan_address.map(|a| a.to_string()));
        self_made_tls(&self.bin("aggregator"), &self.pki, &sans)
            .await
            .context("the cluster's certificates")?;
        Ok(())
    }

    /// The store, migrated, with the cluster's gateways provisioned; then the fault of a check
    /// of the checks, if one is asked for ([`crate::cluster::load::inject_fault`]).
    async fn start_store(&mut self) -> anyhow::Result<()> {
        self.db_url = match (self.store, self.settings.database_url.clone()) {
            (StoreKind::Postgres, Some(url)) => url,
            (StoreKind::Postgres, None) => {
                let pg = PrivatePostgres::start_in(&self.dir, self.port).await?;
                let url = pg.database_url();
                self.postgres = Some(pg);
                url
            }
            _ => {
                // Two or more aggregators may share the file: SQLite in WAL mode locks between
                // processes on one machine, every flush is one IMMEDIATE transaction, and the
                // writes are idempotent and monotonic, so they interleave safely.
                let store = self.dir.join("store");
                std::fs::create_dir_all(&store)?;
                format!("sqlite://{}", store.join("holdfast.db").display())
            }
        };
        self.provision_gateways().await?;
        load::inject_fault(&self.db_url).await
    }

    /// Makes sure gw-1 ..= gw-N are provisioned (this also runs the migrations, once, before the
    /// aggregators race for them); their secrets are kept with the store's kind.
    async fn provision_gateways(&mut self) -> anyhow::Result<()> {
        let file = self.dir.join(match self.store {
            StoreKind::Postgres => "gateways-postgres.txt",
            _ => "gateways-sqlite.txt",
        });
        let mut have: Vec<Provisioned> = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, s)| Provisioned { name: n.to_owned(), secret: s.trim().to_owned() })
            .collect();
        // A fresh database (a new private PostgreSQL) does not know gateways provisioned before.
        if !have.is_empty() {
            let listed = self.admin(&["gateway", "list"]).await.unwrap_or_default();
            if !listed.lines().any(|l| l.split('\t').any(|f| f == "gw-1")) {
                have.clear();
            }
        }
        let wanted = self.settings.gateways as usize;
        if have.len() < wanted {
            let names: Vec<String> = (have.len() + 1..=wanted).map(|i| format!("gw-{i}")).collect();
            let mut args = vec!["gateway", "add"];
            args.extend(names.iter().map(String::as_str));
            let added = self.admin(&args).await.context("cannot provision gateways")?;
            for line in added.lines() {
                let (n, s) = line.split_once(' ').context("`gateway add` printed no NAME SECRET line")?;
                have.push(Provisioned { name: n.to_owned(), secret: s.trim().to_owned() });
            }
        } else {
            // Migrations still run once here, before the aggregators start.
            self.admin(&["gateway", "list"]).await?;
        }
        let text: String = have.iter().map(|g| format!("{} {}\n", g.name, g.secret)).collect();
        std::fs::write(&file, text)?;
        self.gateways = have;
        Ok(())
    }

    /// Starts aggregator `i` and waits until it listens.
    pub async fn start_aggregator(&mut self, i: u32) -> anyhow::Result<()> {
        let addr = self.aggregator_addr(i);
        let mut c = self.aggregator();
        c.arg("--data-dir").arg(self.dir.join(format!("aggregator-{i}"))).args([
            "--listen",
            &addr.to_string(),
            "--database-url",
            &self.db_url,
        ]);
        match self.settings.tls {
            TlsMode::Passthrough => c
                .arg("--tls-cert")
                .arg(self.pki.join("server.pem"))
                .arg("--tls-key")
                .arg(self.pki.join("server.key")),
            TlsMode::Terminate => c.arg("--plain"),
        };
        c.arg("--ca-cert")
            .arg(self.ca())
            .args(["--dashboard-token", &self.dashboard_token])
            .arg("--device-key")
            .arg(self.device_key())
            .env("RUST_LOG", &self.settings.aggregator_log)
            .envs(self.settings.aggregator_env.iter().map(|(k, v)| (k, v)));
        let name = format!("aggregator-{i}");
        let out = self.dir.join(format!("{name}.out"));
        let mut p = Proc::spawn(&name, c, 0, &self.dir, Some(&out))?;
        crate::hold::wait_listening(&mut p, addr).await?;
        self.procs.push(p);
        Ok(())
    }

    /// SIGKILL aggregator `i`: gone at once, nothing flushed, no go-away.
    pub async fn kill_aggregator(&mut self, i: u32) -> anyhow::Result<()> {
        let mut p = self
            .take(&format!("aggregator-{i}"))
            .with_context(|| format!("no aggregator {i} was started"))?;
        p.signal(libc::SIGKILL);
        p.wait(STOP_GRACE).await;
        Ok(())
    }

    /// nginx with its own prefix in DIR/nginx (not the system's service), until /healthz
    /// answers through it.
    async fn start_nginx(&mut self) -> anyhow::Result<()> {
        let prefix = self.dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        std::fs::create_dir_all(prefix.join("tmp"))?;
        let conf = self.render_nginx(&prefix)?;
        let nginx = nginx::binary()?;
        let error_log = prefix.join("logs/error.log");
        let test = {
            let mut c = Command::new(&nginx);
            c.arg("-t").arg("-q").arg("-p").arg(&prefix).arg("-e").arg(&error_log).arg("-c").arg(&conf);
            c
        };
        children::output(test).await.context("nginx -t failed")?;
        let mut c = Command::new(&nginx);
        c.arg("-p").arg(&prefix).arg("-e").arg(&error_log).arg("-c").arg(&conf);
        let mut p = Proc::spawn("nginx", c, 0, &prefix.join("logs"), None)?;
        let health = Scraper::new(self.front(), &self.ca())?;
        let deadline = Instant::now() + NGINX_START;
        loop {
            if health.get("/healthz").await.is_ok() {
                break;
            }
            if let Some(status) = p.exited() {
                bail!("nginx exited at start ({status}): {}", tail(&error_log, 20));
            }
            if Instant::now() >= deadline {
                bail!(
                    "nginx does not answer on https://localhost:{}/healthz: {}",
                    self.port,
                    tail(&error_log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.procs.push(p);
        Ok(())
    }

    /// Writes nginx.conf for this cluster under `prefix`; its path.
    pub fn render_nginx(&self, prefix: &Path) -> anyhow::Result<PathBuf> {
        let mut values = nginx::Values::new(
            prefix,
            self.front(),
            &self.pki.join("server.pem"),
            &self.pki.join("server.key"),
            (1..=self.settings.aggregators).map(|i| self.aggregator_addr(i)).collect(),
        );
        values.lan_listen = self.settings.lan_address.map(|a| SocketAddr::new(a, self.port));
        values.worker_processes = self.settings.nginx_workers;
        let conf = prefix.join("nginx.conf");
        let text = nginx::render(nginx::template(self.settings.tls), &values)
            .with_context(|| format!("rendering {}", conf.display()))?;
        std::fs::write(&conf, text)?;
        Ok(conf)
    }

    // --- the processes ---------------------------------------------------------------------------

    /// Adds a process to the cluster's list (stopped with the rest).
    pub fn remember(&mut self, p: Proc) {
        self.procs.push(p);
    }

    /// The newest process started under `name`.
    pub fn proc(&self, name: &str) -> Option<&Proc> {
        self.procs.iter().rev().find(|p| p.name == name)
    }

    pub fn pid(&self, name: &str) -> Option<u32> {
        self.proc(name).and_then(Proc::pid)
    }

    /// Takes the newest process named `name` off the list.
    pub fn take(&mut self, name: &str) -> Option<Proc> {
        let at = self.procs.iter().rposition(|p| p.name == name)?;
        Some(self.procs.remove(at))
    }

    /// Waits for `name` to end, for at most `limit` (`None`: however long it takes); its exit
    /// status (`None`: not started here, or still running at the limit, when it is stopped).
    pub async fn wait(&mut self, name: &str, limit: Option<Duration>) -> Option<ExitStatus> {
        let mut p = self.take(name)?;
        let status = match limit {
            Some(limit) => p.wait(limit).await,
            None => p.wait_all().await,
        };
        if status.is_none() {
            p.stop(STOP_GRACE).await;
        }
        status
    }

    /// Whether every aggregator and nginx this cluster started still runs.
    pub fn check_servers(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if p.name.starts_with("aggregator-") || p.name == "nginx" {
                if let Some(status) = p.exited() {
                    bail!("{} exited ({status}): {}", p.name, p.log_tail(10));
                }
            }
        }
        Ok(())
    }

    /// Stops everything started here, newest first (load, then nginx, then the aggregators,
    /// which flush what they hold), and the private PostgreSQL last.
    pub async fn stop_all(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(STOP_GRACE).await;
        }
        if let Some(mut pg) = self.postgres.take() {
            if let Err(e) = pg.stop().await {
                eprintln!("[cluster] {e:#}");
            }
        }
    }

    // --- probes ----------------------------------------------------------------------------------

    /// One scrape of aggregator `i`'s metrics (TLS in passthrough, plain behind a terminating
    /// nginx). No answer is an error, never a page of zeros.
    pub async fn scrape(&self, i: u32) -> anyhow::Result<Scrape> {
        let scraper = match self.settings.tls {
            TlsMode::Passthrough => Scraper::new(self.aggregator_addr(i), &self.ca())?,
            TlsMode::Terminate => Scraper::plain(self.aggregator_addr(i)),
        };
        scraper.scrape().await.with_context(|| format!("metrics of aggregator {i}"))
    }

    /// The value of an unlabelled metric of aggregator `i`. An aggregator that does not answer,
    /// or has no such metric, is an error: a probe that errs must never read as 0.
    pub async fn metric(&self, i: u32, name: &str) -> anyhow::Result<f64> {
        let page = self.scrape(i).await?;
        page.value(name).with_context(|| format!("metrics of aggregator {i}: no metric {name}"))
    }

    /// The sum of an unlabelled metric over the running aggregators; an error when any read
    /// fails.
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for i in 1..=self.settings.aggregators {
            if self.proc(&format!("aggregator-{i}")).is_some() {
                sum += self.metric(i, name).await?;
            }
        }
        Ok(sum)
    }
}

/// The TLS files the aggregator's `certificate` subcommand makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// The local CA's certificate, for clients to pin.
    pub(crate) ca: PathBuf,
    /// The server's certificate chain and its key.
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl TlsFiles {
    /// From what `certificate` prints: `ca PATH`, `cert PATH` and `key PATH`, a line each.
    fn parse(printed: &str) -> anyhow::Result<TlsFiles> {
        let path = |name: &str| {
            printed
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .map(PathBuf::from)
                .with_context(|| format!("`certificate` printed no {name} path: {printed:?}"))
        };
        Ok(TlsFiles { ca: path("ca")?, cert: path("cert")?, key: path("key")? })
    }
}

/// A local CA (kept once made) and an ECDSA P-256 server certificate it signs for localhost,
/// 127.0.0.1, ::1 and `sans`, in `dir`: made by the aggregator's `certificate` subcommand (the
/// one CA implementation), again when a name is missing or it is about to expire.
pub(crate) async fn self_made_tls(
    aggregator: &Path,
    dir: &Path,
    sans: &[String],
) -> anyhow::Result<TlsFiles> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut c = children::clean_command(aggregator);
    c.env("NO_COLOR", "1").arg("--data-dir").arg(dir);
    if !sans.is_empty() {
        c.args(["--tls-san", &sans.join(",")]);
    }
    c.arg("certificate");
    let printed = children::output(c)
        .await
        .with_context(|| format!("the certificates could not be made in {}", dir.display()))?;
    TlsFiles::parse(&printed)
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paths_certificate_prints() {
        let printed = "ca /w/phones/ca.pem\ncert /w/phones/server.pem\nkey /w/phones/server.key\n";
        let files = TlsFiles::parse(printed).unwrap();
        assert_eq!(files.ca, PathBuf::from("/w/phones/ca.pem"));
        assert_eq!(files.cert, PathBuf::from("/w/phones/server.pem"));
        assert_eq!(files.key, PathBuf::from("/w/phones/server.key"));
        assert!(TlsFiles::parse("ca /a\ncert /b\n").is_err(), "no key line");
        assert!(TlsFiles::parse("cacert /a\ncert /b\nkey /c\n").is_err(), "a word, not the key");
    }
}
