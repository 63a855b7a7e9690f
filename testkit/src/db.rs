//! Real databases for tests: a fresh Postgres database per test on the server of `DATABASE_URL`
//! (`scripts/start-postgres.sh` starts one), or nothing (SQLite in the aggregator's data folder).
//!
//! What a Postgres database costs a test, and what is done about it: `CREATE DATABASE` (about half
//! a second), the aggregator's migrations (most of a second) and `DROP DATABASE` (over a second,
//! and one at a time: each forces a checkpoint of the whole server). [`PgDatabase::migrated`]
//! copies a database this test process migrated once (with the aggregator's own `Store::open`),
//! and a test's database, once the test is done with it, is emptied back to that template's rows
//! (`TRUNCATE`, then the rows the migrations wrote) for the process's next test, on a thread of its
//! own; what is left is dropped when the process exits.

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
    /// The template this is a copy of ([`PgDatabase::migrated`]): emptied back to its rows for the
    /// next test rather than dropped.
    template: Option<std::sync::Arc<Template>>,
}

/// The migrated template of this process: its name, and the rows the migrations wrote (table,
/// `COPY` text), which a database gets back when it is emptied for the next test.
struct Template {
    name: String,
    rows: Vec<(String, Vec<u8>)>,
}

static TEMPLATE: tokio::sync::Mutex<Option<std::sync::Arc<Template>>> = tokio::sync::Mutex::const_new(None);
/// Databases emptied back to the template's rows, for the next test.
static EMPTIED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

impl PgDatabase {
    /// A fresh, empty database for a test; panics when the server cannot make one.
    pub async fn create(admin_url: &str) -> PgDatabase {
        Self::try_create(admin_url, "holdfast_test").await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A fresh database for a test with the aggregator's migrations applied, as the aggregator's
    /// first start leaves it: a copy of a template this process migrated once (with
    /// `aggregator::store::Store::open`, which the aggregator runs at every start), which is
    /// dropped at exit. Panics when the server cannot make one.
    pub async fn migrated(admin_url: &str) -> PgDatabase {
        let template = Self::template(admin_url).await;
        let emptied = EMPTIED.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut db = match emptied {
            Some(name) => PgDatabase {
                admin_url: admin_url.to_owned(),
                url: with_database(admin_url, &name),
                name,
                kept: false,
                template: None,
            },
            None => Self::try_create_from(admin_url, "holdfast_test", Some(&template.name))
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        };
        db.template = Some(template);
        db
    }

    /// This process's migrated template, made at the first call.
    async fn template(admin_url: &str) -> std::sync::Arc<Template> {
        let mut template = TEMPLATE.lock().await;
        if template.is_none() {
            let mut made = Self::create(admin_url).await;
            let dir = tempfile::tempdir().unwrap();
            let store = aggregator::store::Store::open(Some(&made.url), dir.path(), 1)
                .await
                .unwrap_or_else(|e| panic!("migrating the template database {}: {e:#}", made.name));
            store.close().await;
            let rows = template_rows(&made.url)
                .await
                .unwrap_or_else(|e| panic!("reading the template database {}: {e}", made.name));
            // Dropped at exit, after every copy.
            made.kept = true;
            dropper().template(admin_url, &made.name);
            *template = Some(std::sync::Arc::new(Template { name: made.name.clone(), rows }));
        }
        template.clone().expect("made above")
    }

    /// A fresh database named `PREFIX_` and 64 random bits, on the server of `admin_url`.
    pub async fn try_create(admin_url: &str, prefix: &str) -> Result<PgDatabase, String> {
        Self::try_create_from(admin_url, prefix, None).await
    }

    /// [`PgDatabase::try_create`], as a copy of `template` if given.
    async fn try_create_from(
        admin_url: &str,
        prefix: &str,
        template: Option<&str>,
    ) -> Result<PgDatabase, String> {
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .map_err(|e| format!("connecting to the database server: {e}"))?;
        let from = template.map(|t| format!(" TEMPLATE {t}")).unwrap_or_default();
        sqlx::query(&format!("CREATE DATABASE {name}{from}")).execute(&mut admin).await.map_err(|e| {
            format!("CREATE DATABASE {name}{from} failed (does the role have CREATEDB?): {e}")
        })?;
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

async fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..5u64 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
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
        dropper().later(Job {
            admin_url: self.admin_url.clone(),
            name: self.name.clone(),
            empty: self.template.take(),
        });
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
    template: std::sync::Mutex<Option<(String, String)>>,
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
                    let exiting = EXITING.load(std::sync::atomic::Ordering::Relaxed);
                    if let (Some(template), false) = (&job.empty, exiting) {
                        match rt.block_on(empty_database(&job.admin_url, &job.name, template)) {
                            Ok(()) => {
                                // Unless the process began exiting meanwhile (see finish_drops).
                                let mut emptied = EMPTIED.lock().unwrap_or_else(|e| e.into_inner());
                                if !EXITING.load(std::sync::atomic::Ordering::Relaxed) {
                                    emptied.push(job.name);
                                    continue;
                                }
                            }
                            Err(e) => {
                                eprintln!("could not empty test database {} (dropping it): {e}", job.name)
                            }
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
        Dropper {
            tx: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(Some(thread)),
            template: std::sync::Mutex::new(None),
        }
    })
}

/// A database a test is done with: to empty back to a template's rows for the next test, or to
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

    fn template(&self, admin_url: &str, name: &str) {
        *self.template.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((admin_url.to_owned(), name.to_owned()));
    }
}

/// At exit: the emptied databases and the template join the end of the list (to drop), then the
/// list is finished.
extern "C" fn finish_drops() {
    let Some(d) = DROPPER.get() else { return };
    if let Some((admin_url, template)) = d.template.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // Those still being emptied are dropped instead (the process is exiting: no next test).
        let emptied = {
            let mut emptied = EMPTIED.lock().unwrap_or_else(|e| e.into_inner());
            EXITING.store(true, std::sync::atomic::Ordering::Relaxed);
            std::mem::take(&mut *emptied)
        };
        for name in emptied.into_iter().chain([template]) {
            d.later(Job { admin_url: admin_url.clone(), name, empty: None });
        }
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
