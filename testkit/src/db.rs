//! Real databases for tests: a fresh Postgres database per test on the server of `DATABASE_URL`
//! (`scripts/start-postgres.sh` starts one), or nothing (SQLite in the aggregator's data folder).

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
}

impl PgDatabase {
    /// A fresh database for a test; panics when the server cannot make one.
    pub async fn create(admin_url: &str) -> PgDatabase {
        Self::try_create(admin_url, "holdfast_test").await.unwrap_or_else(|e| panic!("{e}"))
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
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside the test's runtime, which cannot block on a future: use another.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(drop_database(&admin_url, &name))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("{e}"),
            Err(_) => eprintln!("could not drop test database {}: the dropping thread panicked", self.name),
        }
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
