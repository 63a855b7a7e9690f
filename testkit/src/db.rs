//! Real databases for tests: a fresh Postgres database per test on the server of `DATABASE_URL`
//! (`scripts/start-postgres.sh` starts one), or nothing (SQLite in the aggregator's data folder).
//!
//! What a Postgres database costs a test, and what is done about it: `CREATE DATABASE` (about half
//! a second), the aggregator's migrations (most of a second) and `DROP DATABASE` (over a second,
//! and one at a time: each forces a checkpoint of the whole server). [`PgDatabase::migrated`]
//! gives a test a database that an earlier test of this process is done with, emptied back to
//! what the migrations left (`TRUNCATE`, then the rows the migrations wrote, on a thread of its
//! own), or when none is left nor being emptied, a new one migrated by the aggregator's own
//! `Store::open`. So a test process makes as many databases as it runs Postgres tests at once,
//! and drops those at exit.

use sqlx::Connection as _;

/// Which store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// The `DATABASE_URL` of the Postgres server, or `None` (and the test is skipped) when it is not
/// set outside CI. In CI its absence fails the test: the Postgres tests must run there.
pub fn admin_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => {
            panic!(
                "DATABASE_URL is not set, and CI is: run scripts/start-postgres.sh and export what it prints"
            )
        }
        Err(_) => {
            eprintln!("skipping a Postgres test: DATABASE_URL is not set (scripts/start-postgres.sh)");
            None
        }
    }
}

/// A throw-away database, dropped when this is (even when the test panics), unless kept.
pub struct PgDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
    kept: bool,
    /// What the migrations left in it ([`PgDatabase::migrated`]): it is emptied back to that for
    /// the next test rather than dropped.
    template: Option<std::sync::Arc<Template>>,
}

/// The rows the migrations wrote (table, `COPY` text), read from this process's first migrated
/// database: what a database gets back when it is emptied for the next test.
struct Template {
    rows: Vec<(String, Vec<u8>)>,
}

static TEMPLATE: std::sync::OnceLock<std::sync::Arc<Template>> = std::sync::OnceLock::new();
/// Databases emptied back to the template's rows, for the next test.
static EMPTIED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
/// Databases being emptied; [`EMPTIED_ONE`] tells when one is done.
static EMPTYING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static EMPTIED_ONE: tokio::sync::Notify = tokio::sync::Notify::const_new();

impl PgDatabase {
    /// A fresh, empty database for a test; panics when the server cannot make one.
    pub async fn create(admin_url: &str) -> PgDatabase {
        Self::try_create(admin_url, "holdfast_test").await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A database for a test with the aggregator's migrations applied and nothing else, as the
    /// aggregator's first start leaves it: one an earlier test of this process is done with,
    /// emptied back to that (waiting for one being emptied), or a new one that
    /// `aggregator::store::Store::open` migrated. Panics when the server cannot make one.
    pub async fn migrated(admin_url: &str) -> PgDatabase {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            // Registered before looking, so that an emptying that ends meanwhile is not missed.
            let emptied_one = EMPTIED_ONE.notified();
            if let Some((_, name)) = EMPTIED.lock().unwrap_or_else(|e| e.into_inner()).pop() {
                return PgDatabase {
                    admin_url: admin_url.to_owned(),
                    url: with_database(admin_url, &name),
                    name,
                    kept: false,
                    template: TEMPLATE.get().cloned(),
                };
            }
            if EMPTYING.load(SeqCst) == 0 {
                break;
            }
            // Bounded: a database the dropping thread never gave back is not waited for.
            if tokio::time::timeout(std::time::Duration::from_secs(30), emptied_one).await.is_err() {
                break;
            }
        }
        let mut db = Self::create(admin_url).await;
        let dir = tempfile::tempdir().unwrap();
        let store = aggregator::store::Store::open(Some(&db.url), dir.path(), 1)
            .await
            .unwrap_or_else(|e| panic!("migrating the test database {}: {e:#}", db.name));
        store.close().await;
        if TEMPLATE.get().is_none() {
            let rows = template_rows(&db.url)
                .await
                .unwrap_or_else(|e| panic!("reading the migrated database {}: {e}", db.name));
            let _ = TEMPLATE.set(std::sync::Arc::new(Template { rows }));
        }
        db.template = TEMPLATE.get().cloned();
        db
    }

    /// A fresh database named `PREFIX_` and 64 random bits, on the server of `admin_url`.
    pub async fn try_create(admin_url: &str, prefix: &str) -> Result<PgDatabase, String> {
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .map_err(|e| format!("connecting to the database server: {e}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .map_err(|e| format!("CREATE DATABASE {name} failed (does the role have CREATEDB?): {e}"))?;
        let _ = admin.close().await;
        Ok(PgDatabase {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
            kept: false,
            template: None,
        })
    }

    /// Keeps the database when this is dropped (to look at it after a run).
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// Drops the database now and says whether that worked (a report can then tell the truth).
    /// Tries a few times: `WITH (FORCE)` fails while a backend it must end is not yet gone.
    pub async fn drop_now(mut self) -> Result<(), String> {
        self.kept = true; // whatever happens here, Drop does not try again
        drop_database(&self.admin_url, &self.name).await
    }
}

/// How long a drop is retried: `WITH (FORCE)` cannot end another role's session, and an
/// autovacuum worker (the server's) may be busy in a database that was just written a million
/// rows; it ends or moves on within seconds.
const DROP_RETRIES_FOR: std::time::Duration = std::time::Duration::from_secs(30);

async fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let mut last = String::new();
    let start = std::time::Instant::now();
    for attempt in 0..u64::MAX {
        if attempt > 0 {
            if start.elapsed() >= DROP_RETRIES_FOR {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis((200 * attempt).min(2_000))).await;
        }
        let result = async {
            let mut admin = sqlx::PgConnection::connect(admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
            admin.close().await
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("could not drop database {name}: {last}"))
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let empty = self.template.take();
        if empty.is_some() {
            EMPTYING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        dropper().later(Job { admin_url: self.admin_url.clone(), name: self.name.clone(), empty });
    }
}

/// What the migrations wrote in the database at `url`: each table's rows as `COPY` text.
async fn template_rows(url: &str) -> Result<Vec<(String, Vec<u8>)>, sqlx::Error> {
    use futures_util::TryStreamExt as _;
    let mut db = sqlx::PgConnection::connect(url).await?;
    let mut rows = Vec::new();
    for table in tables(&mut db).await? {
        let copied: Vec<_> = db.copy_out_raw(&format!("COPY {table} TO STDOUT")).await?.try_collect().await?;
        let copied = copied.concat();
        if !copied.is_empty() {
            rows.push((table, copied));
        }
    }
    db.close().await?;
    Ok(rows)
}

/// The tables the aggregator's migrations made (not sqlx's record of them), quoted.
async fn tables(db: &mut sqlx::PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT quote_ident(tablename)::text FROM pg_tables \
         WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations' ORDER BY tablename",
    )
    .fetch_all(db)
    .await
}

/// Empties the database `name` back to what the migrations left (`template`'s rows): its
/// connections ended, every table truncated (identities restarted), the migrations' rows copied
/// back, in one transaction.
async fn empty_database(admin_url: &str, name: &str, template: &Template) -> Result<(), sqlx::Error> {
    let mut admin = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
        .bind(name)
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let mut db = sqlx::PgConnection::connect(&with_database(admin_url, name)).await?;
    let mut tx = sqlx::Connection::begin(&mut db).await?;
    let tables = tables(&mut tx).await?;
    sqlx::query(&format!("TRUNCATE {} RESTART IDENTITY CASCADE", tables.join(", ")))
        .execute(&mut *tx)
        .await?;
    for (table, rows) in &template.rows {
        let mut copy = tx.copy_in_raw(&format!("COPY {table} FROM STDIN")).await?;
        copy.send(rows.as_slice()).await?;
        copy.finish().await?;
    }
    tx.commit().await?;
    db.close().await
}

/// Drops the tests' databases on a thread of its own, in the order they were given, so that no
/// test waits for a `DROP DATABASE`; at the process's exit (`atexit`) it finishes the list, then
/// drops the template.
struct Dropper {
    tx: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

static DROPPER: std::sync::OnceLock<Dropper> = std::sync::OnceLock::new();

fn dropper() -> &'static Dropper {
    DROPPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("drop-databases".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                for job in rx {
                    if let Some(template) = &job.empty {
                        let emptied = !EXITING.load(std::sync::atomic::Ordering::SeqCst)
                            && rt
                                .block_on(empty_database(&job.admin_url, &job.name, template))
                                .map_err(|e| {
                                    eprintln!("could not empty test database {} (dropping it): {e}", job.name)
                                })
                                .is_ok();
                        // Unless the process began exiting meanwhile (see finish_drops).
                        let mut list = EMPTIED.lock().unwrap_or_else(|e| e.into_inner());
                        let kept = emptied && !EXITING.load(std::sync::atomic::Ordering::SeqCst);
                        if kept {
                            list.push((job.admin_url.clone(), job.name.clone()));
                        }
                        drop(list);
                        EMPTYING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        EMPTIED_ONE.notify_waiters();
                        if kept {
                            continue;
                        }
                    }
                    if let Err(e) = rt.block_on(drop_database(&job.admin_url, &job.name)) {
                        eprintln!("{e}");
                    }
                }
            })
            .expect("a thread to drop the test databases");
        // SAFETY: registers a function without arguments that libc calls once, at exit.
        unsafe { libc::atexit(finish_drops) };
        Dropper { tx: std::sync::Mutex::new(Some(tx)), thread: std::sync::Mutex::new(Some(thread)) }
    })
}

/// A database a test is done with: to empty back to the template's rows for the next test, or to
/// drop.
struct Job {
    admin_url: String,
    name: String,
    empty: Option<std::sync::Arc<Template>>,
}

/// Set at exit: no next test, so what is left is dropped, not emptied.
static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Dropper {
    fn later(&self, job: Job) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let name = job.name.clone();
        match tx.as_ref() {
            Some(tx) if tx.send(job).is_ok() => {}
            _ => eprintln!("test database {name} left behind: the process is exiting"),
        }
    }
}

/// At exit: the emptied databases join the end of the list (to drop; those still being emptied
/// are dropped instead), then the list is finished.
extern "C" fn finish_drops() {
    let Some(d) = DROPPER.get() else { return };
    let emptied = {
        let mut emptied = EMPTIED.lock().unwrap_or_else(|e| e.into_inner());
        EXITING.store(true, std::sync::atomic::Ordering::SeqCst);
        std::mem::take(&mut *emptied)
    };
    for (admin_url, name) in emptied {
        d.later(Job { admin_url, name, empty: None });
    }
    drop(d.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
    if let Some(thread) = d.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = thread.join();
    }
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map(|i| i + 3).expect("a URL");
    let base = match base[authority..].find('/') {
        Some(slash) => &base[..authority + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}
