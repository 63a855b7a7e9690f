//! A private PostgreSQL server in the cluster's folder: not the machine's own, because the drills
//! stop and start it. Made with `initdb` the first time (a password of its own, SCRAM), started
//! and stopped with `pg_ctl`, always as the account that owns its data: root cannot run
//! PostgreSQL, so as root that is the `postgres` account the Debian package creates.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use sqlx::Connection;
use tokio::process::Command;

/// Where the private server listens: its own loopback address, as if on its own host.
pub const HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 200);

/// How long `pg_ctl` may wait for a start or a stop, seconds.
const PG_CTL_WAIT_S: &str = "60";

/// The private server of one cluster.
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    /// Its socket and log, in a folder its account can write to.
    run: PathBuf,
    port: u16,
    /// The server's address with the password (no database).
    pub server_url: String,
    running: bool,
}

/// The newest installed PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/V/bin).
pub fn bindir() -> Option<PathBuf> {
    let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    versions
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").is_file())
        .max_by_key(|(v, _)| *v)
        .map(|(_, bin)| bin)
}

/// Whether the lab runs as root (and so runs PostgreSQL as the `postgres` account).
fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program args...` as the account that owns the data, from `/` (the account may not be able to
/// read the lab's working folder).
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).current_dir("/");
        c
    } else {
        Command::new(program)
    }
}

/// Whether the `postgres` account can reach `dir` (as root, the server runs as that account).
pub async fn owner_can_reach(dir: &Path) -> bool {
    if !is_root() {
        return true;
    }
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// The uid and gid of the `postgres` account.
fn postgres_account() -> anyhow::Result<(u32, u32)> {
    let name = c"postgres";
    // SAFETY: getpwnam(3) with a NUL-terminated name; the result is read at once, before any
    // other call that could reuse its static buffer (the lab calls it from one thread).
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("no `postgres` account (the PostgreSQL package creates it)");
    }
    // SAFETY: non-null, as returned by getpwnam.
    let pw = unsafe { &*pw };
    Ok((pw.pw_uid, pw.pw_gid))
}

fn give_to_owner(path: &Path) -> anyhow::Result<()> {
    if is_root() {
        let (uid, gid) = postgres_account()?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown postgres {}", path.display()))?;
    }
    Ok(())
}

async fn run(mut command: Command, what: &str, log: &Path) -> anyhow::Result<()> {
    let out = command.stdin(Stdio::null()).output().await.with_context(|| format!("starting {what}"))?;
    let mut text = out.stdout;
    text.extend_from_slice(&out.stderr);
    std::fs::write(log, &text).ok();
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&text).trim());
    }
    Ok(())
}

impl PrivatePostgres {
    /// The server in `dir/postgres` (made the first time), started on [`HOST`]:`port`, with a
    /// database `holdfast`; its URL is `server_url + "/holdfast"`.
    pub async fn start_in(dir: &Path, port: u16) -> anyhow::Result<PrivatePostgres> {
        let bin = bindir().context(
            "PostgreSQL is not installed (scripts/install-deps.sh installs it); or use --store sqlite",
        )?;
        let data = dir.join("postgres");
        let password_file = dir.join("postgres.password");
        if !data.join("PG_VERSION").is_file() {
            eprintln!("[cluster] initdb: a private PostgreSQL in {}", data.display());
            std::fs::create_dir_all(&data)?;
            let password = crate::cluster::random_hex(18);
            write_private(&password_file, &password)?;
            let pwfile = dir.join("postgres.pwfile");
            write_private(&pwfile, &password)?;
            if is_root() {
                // The postgres account must reach its folder: traverse (not list) the parents.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
                give_to_owner(&data)?;
                give_to_owner(&pwfile)?;
                if !owner_can_reach(&data).await {
                    bail!(
                        "the postgres account cannot reach {}: make its parent folders traversable (chmod o+x)",
                        data.display()
                    );
                }
            }
            let mut initdb = as_owner(&bin.join("initdb"));
            initdb
                .arg("-D")
                .arg(&data)
                .args(["-U", "holdfast", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"])
                .arg(format!("--pwfile={}", pwfile.display()));
            let result = run(initdb, "initdb", &dir.join("postgres-initdb.log")).await;
            let _ = std::fs::remove_file(&pwfile);
            result?;
        }
        let password = std::fs::read_to_string(&password_file)
            .with_context(|| format!("reading {}", password_file.display()))?;
        let run = dir.join("postgres-run");
        std::fs::create_dir_all(&run)?;
        give_to_owner(&run)?;
        let mut pg = PrivatePostgres {
            bin,
            data,
            run,
            port,
            server_url: format!("postgres://holdfast:{}@{HOST}:{port}", password.trim()),
            running: false,
        };
        pg.start().await?;
        let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", pg.server_url))
            .await
            .context("connecting to the private PostgreSQL")?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = 'holdfast'")
            .fetch_optional(&mut admin)
            .await?;
        if exists.is_none() {
            sqlx::raw_sql("CREATE DATABASE holdfast").execute(&mut admin).await?;
        }
        admin.close().await.ok();
        Ok(pg)
    }

    /// The cluster's database.
    pub fn database_url(&self) -> String {
        format!("{}/holdfast", self.server_url)
    }

    /// Its log.
    pub fn log(&self) -> PathBuf {
        self.run.join("postgres.log")
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let mut c = as_owner(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", PG_CTL_WAIT_S, "-o"])
            .arg(format!("-c listen_addresses={HOST} -p {} -k {}", self.port, self.run.display()))
            .arg("start");
        if let Err(e) = run(c, "pg_ctl start", &self.run.join("pg_ctl.out")).await {
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            bail!("PostgreSQL did not start: {e}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        self.running = true;
        Ok(())
    }

    /// A "fast" stop: sessions are cut at once, as when a database fails over (the aggregators'
    /// flushes fail and are retried).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let mut c = as_owner(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(&self.data).args(["-m", "fast", "-w", "-t", PG_CTL_WAIT_S, "stop"]);
        run(c, "pg_ctl stop", &self.run.join("pg_ctl.out")).await?;
        self.running = false;
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    /// A cluster that ends any way but [`PrivatePostgres::stop`] (an error, a panic) must not
    /// leave its server running.
    fn drop(&mut self) {
        if self.running {
            let mut c = if is_root() {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl")).current_dir("/");
                c
            } else {
                std::process::Command::new(self.bin.join("pg_ctl"))
            };
            let _ = c
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
