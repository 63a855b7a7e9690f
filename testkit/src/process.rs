//! The aggregator for a test: the real binary, run as a process the test can SIGKILL, SIGTERM
//! and restart ([`Aggregator::start`]), or the same service in the test's own process
//! ([`Aggregator::in_process`]: `aggregator::Service` on a thread and runtime of its own) for the
//! tests that do not test the process itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aggregator::store::Store;

use crate::db::{admin_url, Kind, PgDatabase};

/// What the start-up message told, in the order it tells it.
enum Printed {
    Addr(String),
    Dashboard(Option<String>),
}

pub struct Aggregator {
    child: Option<Child>,
    /// The service in this process, when started with [`Aggregator::in_process`].
    service: Option<InProcess>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub database_url: Option<String>,
    pg: Option<PgDatabase>,
    extra: Vec<String>,
    /// The dashboard's token: the one given with `--dashboard-token`, or the one the aggregator
    /// made for the run and printed.
    token: String,
}

/// The aggregator binary: cargo names it for the aggregator's own tests; other packages' tests
/// (the gateway's, which include this file) find it next to their own test binary, where
/// `cargo test --workspace` builds it.
pub fn binary() -> std::path::PathBuf {
    match option_env!("CARGO_BIN_EXE_aggregator") {
        Some(path) => path.into(),
        None => workspace_binary("aggregator"),
    }
}

/// A binary of another workspace package, next to the running test binary (in
/// `target/<profile>/`, where `cargo test --workspace` builds every package's binaries).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let path = exe.parent().and_then(Path::parent).expect("target/<profile>/deps").join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build -p {name}, with --release for a release test)",
        path.display()
    );
    path
}

impl Aggregator {
    /// Starts an aggregator on a free loopback port with a fresh database of `kind`; `None` when
    /// the kind is Postgres and no server is configured (outside CI).
    pub async fn start(kind: Kind, extra: &[&str]) -> Option<Aggregator> {
        Self::start_at(kind, extra, 0).await
    }

    /// Like [`Aggregator::start`], on a given port (0: any free one).
    pub async fn start_at(kind: Kind, extra: &[&str], port: u16) -> Option<Aggregator> {
        let pg = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => Some(PgDatabase::migrated(&admin_url()?).await),
        };
        let mut a = Aggregator::new(pg, extra, port);
        a.spawn();
        Some(a)
    }

    /// Like [`Aggregator::start`], but the service runs in this process: the same settings
    /// (`extra` are the binary's flags), store, TLS and listener, without a process to start. For
    /// the tests that do not test the process itself (its signals, SIGKILL, workers, the command
    /// line's environment and start-up message): [`Aggregator::spawn`], [`Aggregator::kill`],
    /// [`Aggregator::terminate`] and [`Aggregator::pid`] are for processes only. Dropped, it stops
    /// at once (its runtime is shut down), as a killed process would; [`Aggregator::stop`] stops it
    /// gracefully.
    pub async fn in_process(kind: Kind, extra: &[&str]) -> Option<Aggregator> {
        let pg = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => Some(PgDatabase::migrated(&admin_url()?).await),
        };
        let mut a = Aggregator::new(pg, extra, 0);
        let (service, addr, token) = InProcess::start(&a).await;
        (a.service, a.addr, a.token) = (Some(service), addr, token);
        Some(a)
    }

    fn new(pg: Option<PgDatabase>, extra: &[&str], port: u16) -> Aggregator {
        Aggregator {
            child: None,
            service: None,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            dir: tempfile::tempdir().unwrap(),
            database_url: pg.as_ref().map(|p| p.url.clone()),
            pg,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            token: String::new(),
        }
    }

    /// Stops an in-process service as SIGTERM stops the binary (go-away to trunks, close 1001 to
    /// phones, the grace period, a last flush) and waits for it; what its run returned.
    pub async fn stop(&mut self) -> Result<(), String> {
        let service = self.service.take().expect("an in-process aggregator (a process: terminate)");
        service.stop(false).await
    }

    fn command(&self) -> Command {
        let mut c = Command::new(binary());
        c.arg("--data-dir")
            .arg(self.dir.path())
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", std::env::var("HOLDFAST_TEST_LOG").unwrap_or_else(|_| "warn".into()));
        if let Some(url) = &self.database_url {
            c.arg("--database-url").arg(url);
        }
        c
    }

    /// Starts the process (again, on the same port, after a kill).
    pub fn spawn(&mut self) {
        assert!(self.service.is_none(), "an in-process aggregator is not restarted: start a process");
        let mut c = self.command();
        c.arg("--listen")
            .arg(self.addr.to_string())
            .args(&self.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().expect("aggregator binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[aggregator] {line}");
                if let Some(rest) = line.strip_prefix("listening on ") {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    let addr = url.rsplit("://").next().unwrap_or_default().to_owned();
                    let _ = tx.send(Printed::Addr(addr));
                } else if let Some(rest) = line.trim_start().strip_prefix("dashboard ") {
                    let token =
                        rest.split_once("?token=").map(|(_, t)| t.split_whitespace().next().unwrap_or(""));
                    let _ = tx.send(Printed::Dashboard(token.map(str::to_owned)));
                }
            }
        });
        // Kept at once, so that a failure below still kills it (Drop).
        self.child = Some(child);
        // Each worker says where it listens; worker 0 (or the only process) prints the rest.
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut addr, mut made) = (None, None);
        while addr.is_none() || made.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Printed::Addr(a)) => addr = addr.or(Some(a)),
                Ok(Printed::Dashboard(token)) => made = Some(token),
                Err(_) => {
                    panic!("the aggregator printed where it listens ({addr:?}) and its dashboard ({made:?})")
                }
            }
        }
        let (addr, made) = (addr.unwrap_or_default(), made.flatten());
        let given =
            self.extra.iter().position(|a| a == "--dashboard-token").and_then(|i| self.extra.get(i + 1));
        self.token = match (given, made) {
            (Some(given), _) => given.clone(),
            (None, Some(made)) => made,
            (None, None) => panic!("no --dashboard-token given and none printed"),
        };
        self.addr = addr.parse().unwrap();
    }

    /// The dashboard's token (given, or made for the run and printed at start).
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn url(&self, path: &str) -> String {
        format!("wss://localhost:{}{path}", self.addr.port())
    }

    /// `aggregator gateway add NAME`, returning the secret.
    pub fn add_gateway(&self, name: &str) -> Vec<u8> {
        let out = self.command().args(["gateway", "add", name]).output().expect("aggregator gateway add");
        assert!(out.status.success(), "gateway add failed: {}", String::from_utf8_lossy(&out.stderr));
        let line = String::from_utf8(out.stdout).unwrap();
        let (got, hex) = line.trim().split_once(' ').expect("NAME HEXSECRET");
        assert_eq!(got, name);
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    /// The operator's device-token key (made at the aggregator's first start): what mobile-sim's
    /// `--device-key` takes.
    pub fn device_key_file(&self) -> PathBuf {
        self.dir.path().join("device-token.key")
    }

    /// A device token for `device`, valid for an hour, as the operator issues them.
    pub fn device_token(&self, device: &str) -> String {
        device_token(self.dir.path(), device)
    }

    /// The public key that checks the tokens (64 hex digits): what gateways are given.
    pub fn device_public_key(&self) -> String {
        device_public_key(self.dir.path())
    }

    /// The store the aggregator writes to, opened by the test to check what it holds.
    pub async fn store(&self) -> Store {
        Store::open(self.database_url.as_deref(), self.dir.path(), 2).await.unwrap()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the aggregator did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.kill();
        if let Some(service) = self.service.take() {
            service.abort();
        }
        let _ = &self.pg;
    }
}

/// `aggregator::Service` running in this process, on a thread with a runtime of its own (a test
/// may block its own thread: a browser test waits on WebDriver, a gateway is added through the
/// binary).
struct InProcess {
    /// `true`: stop at once (drop the runtime); `false`: stop gracefully.
    stop: tokio::sync::oneshot::Sender<bool>,
    done: tokio::sync::oneshot::Receiver<Result<(), String>>,
    thread: std::thread::JoinHandle<()>,
}

impl InProcess {
    /// Starts the service with `a`'s folder, database and flags on a free loopback port; where it
    /// listens and the dashboard's token.
    async fn start(a: &Aggregator) -> (InProcess, SocketAddr, String) {
        use clap::Parser as _;
        let mut args = vec!["aggregator".to_owned(), "--data-dir".to_owned()];
        args.push(a.dir.path().display().to_string());
        args.extend(["--listen".to_owned(), a.addr.to_string()]);
        args.extend(a.extra.iter().cloned());
        let cli = aggregator::config::Cli::try_parse_from(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let mut s = cli.serve;
        // This store, whatever DATABASE_URL the test's environment has (flags read it).
        s.database_url = a.database_url.clone();
        // As the binary does: a token made for the run when none is given.
        aggregator::web::make_token_if_unset(&mut s);
        let token = s.dashboard_token.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<Result<SocketAddr, String>>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<bool>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("aggregator".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the aggregator");
                let result = rt.block_on(async move {
                    let listen = s.listen;
                    let prepared = async {
                        let service = aggregator::Service::prepare(s).await?;
                        let listener = aggregator::server::bind(listen, false)?;
                        anyhow::Ok((service, listener))
                    };
                    let (service, listener) = match prepared.await {
                        Ok(ready) => ready,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{e:#}")));
                            return None;
                        }
                    };
                    let _ = ready_tx.send(listener.local_addr().map_err(|e| e.to_string()));
                    let (graceful_tx, graceful) = tokio::sync::oneshot::channel::<()>();
                    let mut run = std::pin::pin!(service.run(listener, async {
                        let _ = graceful.await;
                    }));
                    tokio::select! {
                        result = &mut run => return Some(result.map_err(|e| format!("{e:#}"))),
                        now = stop_rx => if now.unwrap_or(true) { return None },
                    }
                    let _ = graceful_tx.send(());
                    Some(run.await.map_err(|e| format!("{e:#}")))
                });
                // Whatever the service left running (connections' tasks) ends with its runtime.
                rt.shutdown_timeout(Duration::from_secs(1));
                if let Some(result) = result {
                    let _ = done_tx.send(result);
                }
            })
            .expect("a thread for the aggregator");
        match ready_rx.await {
            Ok(Ok(addr)) => (InProcess { stop, done, thread }, addr, token),
            Ok(Err(e)) => panic!("the in-process aggregator did not start: {e}"),
            Err(_) => panic!("the in-process aggregator's thread ended before it listened"),
        }
    }

    /// Stops the service: at once (`now`), or gracefully, waiting for what its run returned.
    async fn stop(self, now: bool) -> Result<(), String> {
        let _ = self.stop.send(now);
        let result = self.done.await.unwrap_or_else(|_| Err("the service ended without a result".into()));
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
        result
    }

    /// Stops the service at once, from any context (Drop).
    fn abort(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }
}

/// The device-token key in an aggregator's data folder `data`.
fn device_key(data: &Path) -> device_token::SigningKey {
    let hex = std::fs::read_to_string(data.join("device-token.key")).expect("the aggregator's device key");
    device_token::SigningKey::from_hex(&hex).expect("a device key")
}

/// A token for `device` from the key in the aggregator's data folder `data`, valid for an hour.
pub fn device_token(data: &Path, device: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    device_key(data).token(device.as_bytes(), now + 3600).expect("a short device id")
}

/// The public key (64 hex digits) of the device-token key in the aggregator's data folder `data`.
pub fn device_public_key(data: &Path) -> String {
    device_token::hex(&device_key(data).public_key().to_bytes())
}
