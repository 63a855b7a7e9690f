//! One aggregator on a store of its own, as the write-path benches run it (`lab bench
//! write-path`, `flush-cpu`, `fold`): no nginx in front, its own TLS (the CA and certificate it
//! makes in its data folder on its first start, which the load pins), on a fresh database of the
//! given PostgreSQL server (testkit's, as `lab e2e` makes them) or a fresh SQLite file.
//!
//! The binaries are given by path, not found next to the lab: a bench may measure an older
//! build next to this one.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cli_env::Interrupts;
use sqlx::Connection as _;

use crate::children::{self, Proc};
use crate::metrics::Scraper;
use crate::report::SimReport;

/// How long an aggregator gets to stop cleanly (its graceful shutdown flushes what it holds).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the journal's size is read while it is being merged.
const JOURNAL_POLL: Duration = Duration::from_secs(2);

/// A store made for one run: a fresh PostgreSQL database, or a fresh SQLite file.
pub struct FreshStore {
    /// What the aggregator and mobile-sim are given.
    pub url: String,
    kind: Kind,
}

enum Kind {
    Postgres(testkit::db::PgDatabase),
    /// The file (SQLite adds `-wal` and `-shm` next to it).
    Sqlite(PathBuf),
}

impl FreshStore {
    /// On the PostgreSQL server of `server` (a role that may CREATE DATABASE) a database named
    /// `PREFIX_` and 64 random bits; or, when `server` is `sqlite:` (anything starting so), the
    /// file `dir/NAME.sqlite`.
    pub async fn create(server: &str, prefix: &str, dir: &Path, name: &str) -> anyhow::Result<FreshStore> {
        if server.starts_with("sqlite:") {
            let file = dir.join(format!("{name}.sqlite"));
            return Ok(FreshStore { url: format!("sqlite://{}", file.display()), kind: Kind::Sqlite(file) });
        }
        let db = testkit::db::PgDatabase::try_create(server, prefix).await.map_err(anyhow::Error::msg)?;
        Ok(FreshStore { url: db.url.clone(), kind: Kind::Postgres(db) })
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.kind, Kind::Postgres(_))
    }

    /// A connection to it, PostgreSQL only (the benches' checks in SQL).
    pub async fn connect(&self) -> anyhow::Result<sqlx::PgConnection> {
        if !self.is_postgres() {
            bail!("{}: a check in SQL needs PostgreSQL", self.url);
        }
        sqlx::PgConnection::connect(&self.url).await.context("connecting to the run's database")
    }

    /// Drops the database, or removes the file; an error says it could not.
    pub async fn remove(self) -> anyhow::Result<()> {
        match self.kind {
            Kind::Postgres(db) => db.drop_now().await.map_err(anyhow::Error::msg),
            Kind::Sqlite(file) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut path = file.clone().into_os_string();
                    path.push(suffix);
                    match std::fs::remove_file(&path) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(e).with_context(|| format!("removing {}", file.display()))
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
        }
    }
}

/// One value of a query that reads one number (a count, a sum cast to bigint).
pub async fn scalar(db: &mut sqlx::PgConnection, sql: &str) -> anyhow::Result<i64> {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(db).await.with_context(|| format!("reading {sql}"))
}

/// Whether the store has a journal (PostgreSQL builds since the journal; its compactor merges it
/// into `sessions`).
pub async fn has_journal(db: &mut sqlx::PgConnection) -> anyhow::Result<bool> {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass('journal') IS NOT NULL")
        .fetch_one(db)
        .await
        .context("looking for the journal")
}

/// Waits until the journal holds no flight (the compactor merged everything), at most `limit`;
/// how long that took, `None` when it was still not merged at the limit.
pub async fn wait_journal_merged(
    db: &mut sqlx::PgConnection,
    limit: Duration,
) -> anyhow::Result<Option<Duration>> {
    let from = Instant::now();
    loop {
        if scalar(db, "SELECT count(*) FROM journal").await? == 0 {
            return Ok(Some(from.elapsed()));
        }
        if from.elapsed() >= limit {
            return Ok(None);
        }
        tokio::time::sleep(JOURNAL_POLL).await;
    }
}

/// Waits up to `limit` for a mobile-sim load to end, then reads its report (JSON, at `report`).
/// Its exit status is the verdict (an older mobile-sim writes none in its report): `Err(why)`
/// when it failed, with its failed rules, or its log's last lines when it wrote none.
pub async fn verdict(
    sim: &mut Proc,
    limit: Duration,
    report: &Path,
) -> anyhow::Result<Result<SimReport, String>> {
    let status = sim.wait(limit).await;
    let read = crate::compare::sim_report(report);
    if status.is_some_and(|s| s.success()) {
        return read.map(Ok);
    }
    let why = match &read {
        Ok(r) if !r.failures.is_empty() => r.failure_lines().join("; "),
        _ => sim.log_tail(5),
    };
    let status = status.map_or(format!("still running after {limit:?}, stopped"), |s| s.to_string());
    Ok(Err(format!("{status}: {why}")))
}

/// One aggregator under test and the mobile-sim that drives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    /// As given (the results name it so).
    pub name: String,
    pub aggregator: PathBuf,
    pub sim: PathBuf,
}

/// The binaries of `given` (`AGGREGATOR[:MOBILE_SIM]`, split at the first colon), each
/// mobile-sim `default_sim` unless named; `default_aggregator` alone when none is given.
pub fn subjects(given: &[String], default_aggregator: &Path, default_sim: &Path) -> Vec<Subject> {
    if given.is_empty() {
        let name = default_aggregator.display().to_string();
        return vec![Subject {
            name,
            aggregator: default_aggregator.to_owned(),
            sim: default_sim.to_owned(),
        }];
    }
    given
        .iter()
        .map(|g| {
            let (aggregator, sim) = match g.split_once(':') {
                Some((a, s)) => (a, PathBuf::from(s)),
                None => (g.as_str(), default_sim.to_owned()),
            };
            Subject { name: aggregator.to_owned(), aggregator: PathBuf::from(aggregator), sim }
        })
        .collect()
}

/// An error naming the first binary of `subjects` that is not a file.
pub fn present(subjects: &[Subject]) -> anyhow::Result<()> {
    for path in subjects.iter().flat_map(|s| [&s.aggregator, &s.sim]) {
        if !path.is_file() {
            bail!("{} is not a file (cargo build --release -p aggregator -p mobile-sim)", path.display());
        }
    }
    Ok(())
}

/// How one run of a bench ended.
pub enum Outcome<T> {
    Measured(T),
    /// Why it did not verify.
    Failed(String),
}

/// How a bench that compares aggregator binaries names things.
#[derive(Debug, Clone, Copy)]
pub struct Naming {
    /// The columns a subject's name takes in a result line.
    pub width: usize,
    /// Its stores' names start with this.
    pub store_prefix: &'static str,
}

/// Runs of a bench that compares aggregator binaries: each run of each binary on a fresh store.
pub struct Turns<'a> {
    naming: Naming,
    runs: u32,
    subjects: &'a [Subject],
    /// The PostgreSQL server the stores are made on ([`FreshStore::create`]), or `sqlite:`.
    database_url: &'a str,
    /// Where SQLite stores go.
    work: &'a Path,
}

impl<'a> Turns<'a> {
    pub fn new(
        naming: Naming,
        runs: u32,
        subjects: &'a [Subject],
        database_url: &'a str,
        work: &'a Path,
    ) -> Self {
        Turns { naming, runs, subjects, database_url, work }
    }

    /// [`Turns::take`], stopped by a signal (an error); then the lines `medians` makes of each
    /// subject's figures, and the load at the end. Ok(false) when a run did not verify (it
    /// printed why, and no medians).
    pub async fn compare<T>(
        &self,
        line: impl Fn(&T) -> String,
        one: impl AsyncFnMut(&str, &Subject, &FreshStore) -> anyhow::Result<Outcome<T>>,
        medians: impl Fn(&[Vec<T>]) -> Vec<String>,
    ) -> anyhow::Result<bool> {
        let mut signals = Interrupts::catch()?;
        let taken = tokio::select! {
            r = self.take(line, one) => r?,
            signal = signals.recv() => bail!("{signal}: the bench was stopped"),
        };
        let Some(results) = taken else { return Ok(false) };
        for m in medians(&results) {
            println!("{m}");
        }
        println!("load at the end: {}", crate::hold::load_average());
        Ok(true)
    }

    /// `one` for each subject in turn, `runs` times (the subjects alternate, so that a change in
    /// the machine's load touches them alike), each time on a fresh store, removed after it
    /// whatever happened, and with a tag of its own (run and subject: `10` is run 1 of the
    /// first); prints a line per run (`line`, after the subject's name). Each subject's figures
    /// in order; `None` when a run did not verify (it printed why, and no more runs are made).
    pub async fn take<T>(
        &self,
        line: impl Fn(&T) -> String,
        mut one: impl AsyncFnMut(&str, &Subject, &FreshStore) -> anyhow::Result<Outcome<T>>,
    ) -> anyhow::Result<Option<Vec<Vec<T>>>> {
        let mut results: Vec<Vec<T>> = self.subjects.iter().map(|_| Vec::new()).collect();
        for r in 1..=self.runs {
            for (i, (s, figures)) in self.subjects.iter().zip(results.iter_mut()).enumerate() {
                let tag = format!("{r}{i}");
                let prefix = self.naming.store_prefix;
                let name = format!("{prefix}-{tag}");
                let store = FreshStore::create(self.database_url, prefix, self.work, &name).await?;
                let outcome = one(&tag, s, &store).await;
                if let Err(e) = store.remove().await {
                    eprintln!("lab bench: {e:#}");
                }
                match outcome.with_context(|| format!("run {tag}, {}", s.name))? {
                    Outcome::Measured(f) => {
                        println!("  run {r}  {:<width$}  {}", s.name, line(&f), width = self.naming.width);
                        figures.push(f);
                    }
                    Outcome::Failed(why) => {
                        println!("FAILED: {why}");
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(results))
    }
}

/// One aggregator, started by [`Solo::start`], killed if dropped.
pub struct Solo {
    proc: Proc,
    bin: PathBuf,
    /// Its data folder: CA, certificate, device-token key.
    pub data: PathBuf,
    pub url: String,
    pub addr: SocketAddr,
}

impl Solo {
    /// Starts `bin` on the store at `url` with its files in `data` (created), listening with its
    /// own TLS on 127.0.0.1 and a free port, `RUST_LOG=warn`, with `extra` arguments (its
    /// bounds); its stdout and log in `log_dir` as `NAME.out` and `NAME.log`. Returns once it
    /// listens, with the fault of a check of the checks injected into its store when
    /// `HOLDFAST_FAULT` asks for one ([`crate::cluster::load::inject_fault`]).
    pub async fn start(
        bin: &Path,
        data: &Path,
        url: &str,
        extra: &[String],
        log_dir: &Path,
        name: &str,
    ) -> anyhow::Result<Solo> {
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::cluster::free_port()?));
        let mut c = children::clean_command(bin);
        c.arg("--data-dir")
            .arg(data)
            .args(["--database-url", url, "--listen", &addr.to_string()])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1");
        let out = log_dir.join(format!("{name}.out"));
        let mut proc = Proc::spawn(name, c, 0, log_dir, Some(&out))
            .with_context(|| format!("starting {}", bin.display()))?;
        crate::hold::wait_listening(&mut proc, addr)
            .await
            .with_context(|| format!("{} did not start", bin.display()))?;
        // It has run the migrations: a check of the checks breaks the store now, if asked to.
        crate::cluster::load::inject_fault(url).await?;
        Ok(Solo { proc, bin: bin.to_owned(), data: data.to_owned(), url: url.to_owned(), addr })
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.proc.pid().context("the aggregator's pid")
    }

    /// The CA its certificate chains to (made in its data folder at its first start).
    pub fn ca(&self) -> PathBuf {
        self.data.join("ca.pem")
    }

    /// The key phones' device tokens are signed with.
    pub fn device_key(&self) -> PathBuf {
        self.data.join("device-token.key")
    }

    /// Where virtual gateways open their trunks.
    pub fn trunk_target(&self) -> String {
        format!("wss://localhost:{}/trunk", self.addr.port())
    }

    /// Where phones connect straight to it.
    pub fn phone_target(&self) -> String {
        format!("wss://localhost:{}/ws", self.addr.port())
    }

    /// Its metrics page as it serves it (an error when it does not answer).
    pub async fn metrics_page(&self) -> anyhow::Result<String> {
        Scraper::new(self.addr, &self.ca())?.get("/metrics").await.context("the aggregator's metrics")
    }

    /// Provisions the gateways `names` in its store (`gateway add`); the file of their `NAME
    /// HEXSECRET` lines, `gateways.txt` in its data folder, for mobile-sim.
    pub async fn provision(&self, names: &[String]) -> anyhow::Result<PathBuf> {
        let mut c = children::clean_command(&self.bin);
        c.arg("--data-dir")
            .arg(&self.data)
            .args(["--database-url", &self.url, "gateway", "add"])
            .args(names)
            .env("RUST_LOG", "warn");
        let lines = children::output(c).await.context("provisioning the gateways")?;
        let file = self.data.join("gateways.txt");
        std::fs::write(&file, lines).with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    }

    /// An error when it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.proc.exited() {
            Some(status) => bail!("the aggregator exited ({status}): {}", self.proc.log_tail(10)),
            None => Ok(()),
        }
    }

    /// SIGTERM, and up to [`STOP_GRACE`] to stop cleanly.
    pub async fn stop(mut self) {
        self.proc.stop(STOP_GRACE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for mobile-sim: prints `json` as its report and exits with `code`.
    fn fake_sim(dir: &Path, json: &str, code: i32) -> Proc {
        let mut c = tokio::process::Command::new("sh");
        c.args(["-c", &format!("printf '%s' '{json}'; echo some log >&2; exit {code}")]);
        Proc::spawn("fake-sim", c, 0, dir, Some(&dir.join("report.json"))).unwrap()
    }

    #[tokio::test]
    async fn the_exit_status_is_the_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report.json");
        let limit = Duration::from_secs(10);
        let json = r#"{"ok":true,"end":"duration","processes":1,"drain_seconds":0,"connections":{"attempted":1,
            "established":1,"failed":0,"dropped":0},"connect_rate":{"all_connected_after_s":null,"peak_per_s":1},
            "handshake_ms":{"p50":1,"p99":1,"max":1},"bytes":{"sent":3,"durable":3,"unconfirmed":0}}"#
            .replace('\n', " ");
        let r = verdict(&mut fake_sim(dir.path(), &json, 0), limit, &report).await.unwrap().unwrap();
        assert_eq!(r.bytes.durable, 3);
        // A failed verdict names its rules; one with no report, the log's last lines.
        let failed =
            json.replace(r#""ok":true"#, r#""ok":false,"failures":[{"rule":"lost","detail":"2 bytes"}]"#);
        let why = verdict(&mut fake_sim(dir.path(), &failed, 1), limit, &report).await.unwrap().unwrap_err();
        assert!(why.ends_with("lost: 2 bytes"), "{why}");
        let why = verdict(&mut fake_sim(dir.path(), "", 1), limit, &report).await.unwrap().unwrap_err();
        assert!(why.ends_with("some log"), "{why}");
        // Exit 0 with no report is an error, never a verdict.
        assert!(verdict(&mut fake_sim(dir.path(), "", 0), limit, &report).await.is_err());
    }

    #[test]
    fn binaries_and_their_mobile_sims() {
        let (agg, sim) = (Path::new("/b/aggregator"), Path::new("/b/mobile-sim"));
        let default = subjects(&[], agg, sim);
        assert_eq!(default.len(), 1);
        assert_eq!((default[0].name.as_str(), default[0].sim.as_path()), ("/b/aggregator", sim));
        let given = subjects(&["/old/aggregator:/old/mobile-sim".into(), "/new/aggregator".into()], agg, sim);
        assert_eq!(given[0].aggregator, PathBuf::from("/old/aggregator"));
        assert_eq!(given[0].sim, PathBuf::from("/old/mobile-sim"));
        assert_eq!(given[0].name, "/old/aggregator");
        assert_eq!(given[1].sim, sim);
    }
}
