//! The database: provisioned gateways and per-session byte counts, in PostgreSQL (several
//! aggregators sharing one database) or SQLite (a single aggregator, a file in its data folder).
//!
//! The schema lives in `migrations/{postgres,sqlite}`; both are embedded in the binary and applied
//! by [`Store::open`]. What [`Store::write_flush`] writes is what the ledger
//! ([`trunk::ledger`]) flushed: one report per session that changed. What is stored is idempotent
//! and monotonic — the stored count only grows (`GREATEST`), the device id and the close are set
//! once — so replays, retries after a failed commit, and two aggregators writing the same session
//! concurrently all leave the same, exact result.
//!
//! SQLite upserts the session rows in the flush's transaction. PostgreSQL appends the flush to a
//! journal (one row, the reports as arrays) and [`Store::compact`] merges the journal into the
//! session rows off the acknowledgement's path; every read of counts (`sessions_now`,
//! `device_totals`) merges the journal in, so both dialects read the same at every instant.
//!
//! Where the code lives: a query that is the same in both dialects is written once, in the
//! [`Store`] method here, and runs on either pool through `on_pool!` (sqlx binds SQLite's `$1`
//! like PostgreSQL's). Where the dialects spell the same query differently, the text comes from
//! `Dialect` (`postgres::SQL`, `sqlite::SQL`) and binding and decoding stay here.
//! `postgres.rs` and `sqlite.rs` keep what really differs: opening, the write path (journal vs
//! upsert), compaction, the statements of a fold, recording gateway boots, and looking gateways
//! up by name (one array query vs one query per name).

mod postgres;
mod sqlite;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use anyhow::Context as _;
use trunk::ledger::SessionKey;

/// What a compaction does between its statements ([`Store::compact`]): the compactor rests
/// there while the flushes have work (`compactor.rs`). The compaction's transaction stays open
/// meanwhile; the flushes only append to the journal, so it holds none of them up.
pub trait GiveWay: Send {
    /// Called between two statements of a compaction.
    fn give_way(&mut self) -> impl std::future::Future<Output = ()> + Send;
}

/// Never gives way: a compaction at full pace.
impl GiveWay for () {
    async fn give_way(&mut self) {}
}

/// A connection pool to the database. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// Runs `$body` on the pool `$store` holds, named `$pool` there: one query written once for both
/// databases (sqlx's query builders are generic over the database; each arm is compiled for its
/// own). For the queries whose SQL, arguments and answer are the same in both dialects (or whose
/// SQL differs only in text, taken from [`Store::sql`]). Numbered parameters (`$1`, `$2`, also
/// repeated) mean the same in both: sqlx binds SQLite's `$N` to the N-th argument.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

/// The statements that the two dialects spell differently for the same question: the same
/// parameters, the same answer. [`postgres::SQL`] and [`sqlite::SQL`] fill it in.
pub(crate) struct Dialect {
    /// The columns of a [`GatewayRow`], timestamps as ISO-8601 text in UTC with milliseconds.
    gateway_columns: &'static str,
    /// `device, bytes` from `device_totals`, for the devices whose id starts with `$1`
    /// (case-sensitive, no wildcards), sorted by device byte by byte.
    device_totals: &'static str,
    /// Marks the fold of boot (`$1` gateway, `$2` boot epoch) finished now.
    finish_boot: &'static str,
}

/// A gateway as both dialects answer it ([`Dialect::gateway_columns`]).
#[derive(sqlx::FromRow)]
pub(crate) struct GatewayRow {
    /// PostgreSQL's int4. SQLite's INTEGER is decoded into i32 with a range check (sqlx 0.8:
    /// an error, not a truncation; see the tests below).
    id: i32,
    name: String,
    secret: Vec<u8>,
    last_seen: Option<String>,
    created: String,
}

impl TryFrom<GatewayRow> for GatewayRecord {
    type Error = anyhow::Error;

    fn try_from(row: GatewayRow) -> anyhow::Result<Self> {
        Ok(GatewayRecord {
            number: u32::try_from(row.id).context("negative gateway id")?,
            name: row.name,
            secret: row.secret,
            last_seen: row.last_seen,
            created: row.created,
        })
    }
}

/// What one flush writes for one session (an owned [`trunk::ledger::Row`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushRow {
    pub key: SessionKey,
    /// The largest count reported; the store keeps the larger of this and what it has.
    pub total: u64,
    /// The session's device id, if known; the first one stored stays.
    pub device: Option<String>,
    /// The session ended, with this close reason code ([`trunk::frame::CloseReason`]).
    pub closed: Option<u8>,
}

/// What a committed flush added to the persisted totals: sessions stored for the first time,
/// and bytes by which stored counts grew (a replay adds nothing); and the sessions it did not
/// write because their gateway boot was folded (see [`Store::fold_round`]): they must not be
/// acknowledged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub sessions: u64,
    pub bytes: u64,
    pub refused: Vec<SessionKey>,
}

impl Written {
    /// Whether the flush added anything to the totals.
    fn added(&self) -> bool {
        self.sessions > 0 || self.bytes > 0
    }

    fn add(&mut self, sessions: u64, bytes: u64) {
        self.sessions = self.sessions.saturating_add(sessions);
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// (sessions, bytes) as stored (bigint), saturating.
    fn as_db(&self) -> (i64, i64) {
        (i64::try_from(self.sessions).unwrap_or(i64::MAX), i64::try_from(self.bytes).unwrap_or(i64::MAX))
    }
}

/// Adds a flush's growth to one shard of the totals, saturating (a total never wraps). The same
/// text for both databases: SQLite numbers `$1`..`$3` as PostgreSQL does.
const ADD_TOTALS: &str = "UPDATE totals SET sessions = sessions + $1, \
     bytes = CASE WHEN bytes > 9223372036854775807 - $2 THEN 9223372036854775807 ELSE bytes + $2 END \
     WHERE shard = $3";

/// Shards of the `totals` table: a flush adds to one chosen at random, so concurrent flushes
/// rarely wait for one another's row lock.
const TOTALS_SHARDS: i16 = 16;

/// When finished sessions are folded out of `sessions` into per-device totals
/// (migrations/*/0003_fold.sql explains which sessions may be, and why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldPolicy {
    /// A direct phone's session is folded this long after its close was committed; a gateway
    /// boot, this long after a newer boot of the same gateway was first seen. The margin keeps
    /// recent sessions readable one by one, and gives a superseded boot's last reports (still
    /// in some ledger) time to land before its writes are refused.
    pub after: std::time::Duration,
    /// Most sessions folded per transaction.
    pub batch_rows: usize,
}

/// What one [`Store::compact`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Journal rows (flushes) merged and deleted.
    pub flights: u64,
    /// Reports they held.
    pub entries: u64,
    /// Sessions those reports were about (each written once).
    pub sessions: u64,
    /// What the merge added to the totals: sessions stored for the first time, bytes by which
    /// stored counts grew.
    pub grew: Written,
    /// Flights still waiting (beyond `max_entries`): compact again.
    pub left: u64,
    /// Whether another aggregator was compacting or folding, so this one did nothing.
    pub busy: bool,
}

/// What one [`Store::fold_round`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Folded {
    /// Session rows folded into per-device totals (and deleted).
    pub sessions: u64,
    /// Gateway boots newly marked as superseded (their writes refused from now on).
    pub boots: u64,
    /// Whether a batch was full: more may be waiting.
    pub more: bool,
}

/// Whether a gateway boot may still report ([`Store::boot_seen`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootState {
    /// The boot may carry sessions.
    Current,
    /// A newer boot of the gateway superseded this one and its sessions were folded: refuse it.
    Folded,
}

/// A provisioned gateway.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    /// The gateway's number in session keys (its database id, >= 1).
    pub number: u32,
    pub name: String,
    /// The shared secret it authenticates with (32 random bytes).
    pub secret: Vec<u8>,
    /// When it last connected, ISO-8601 in UTC (`2025-01-31T12:34:56.789Z`).
    pub last_seen: Option<String>,
    /// When it was provisioned, same format.
    pub created: String,
}

impl std::fmt::Debug for GatewayRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keep the secret out of logs.
        f.debug_struct("GatewayRecord")
            .field("number", &self.number)
            .field("name", &self.name)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("last_seen", &self.last_seen)
            .field("created", &self.created)
            .finish()
    }
}

/// One stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub key: SessionKey,
    pub device: Option<String>,
    pub bytes: u64,
    pub closed: bool,
    pub close_reason: Option<u8>,
}

/// [`Store::gateway_add`] was given a name that is already provisioned. Returned inside the
/// `anyhow::Error`; find it with `err.downcast_ref::<GatewayExists>()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a gateway named {0:?} already exists")]
pub struct GatewayExists(pub String);

/// A flush row ready for the database: integers as stored, device cleaned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DbRow<'a> {
    pub gateway: u32,
    pub boot_epoch: i64,
    pub session: i64,
    pub device: Option<Cow<'a, str>>,
    pub bytes: i64,
    pub close_reason: Option<i16>,
}

/// Sorts `rows` by key (so that every writer locks rows in the same order: two aggregators
/// flushing overlapping sessions cannot deadlock) and merges rows with the same key (a single
/// Postgres statement may not touch a row twice): the larger count, the first device, the first
/// close.
pub(crate) fn prepare(rows: &[FlushRow]) -> Vec<DbRow<'_>> {
    let mut sorted: Vec<&FlushRow> = rows.iter().collect();
    sorted.sort_by_key(|r| r.key);
    let mut out: Vec<DbRow<'_>> = Vec::with_capacity(sorted.len());
    let mut last: Option<SessionKey> = None;
    for row in sorted {
        let bytes = i64::try_from(row.total).unwrap_or(i64::MAX);
        let device = row.device.as_deref().map(clean_device);
        let close_reason = row.closed.map(i16::from);
        if last == Some(row.key) {
            let prev = out.last_mut().expect("a previous row");
            prev.bytes = prev.bytes.max(bytes);
            if prev.device.is_none() {
                prev.device = device;
            }
            if prev.close_reason.is_none() {
                prev.close_reason = close_reason;
            }
            continue;
        }
        last = Some(row.key);
        out.push(DbRow {
            gateway: row.key.gateway,
            boot_epoch: row.key.boot_epoch as i64,
            session: row.key.session as i64,
            device,
            bytes,
            close_reason,
        });
    }
    out
}

/// The gateway boots (gateway, boot epoch as stored) that `rows` (sorted by key) write, each once.
/// Direct phones (gateway 0) are left out: their sessions are never refused (see
/// migrations/postgres/0003_fold.sql).
pub(crate) fn boots_of(rows: &[DbRow<'_>]) -> Vec<(u32, i64)> {
    let mut boots: Vec<(u32, i64)> = Vec::new();
    for row in rows.iter().filter(|r| r.gateway != trunk::ledger::DIRECT) {
        if boots.last() != Some(&(row.gateway, row.boot_epoch)) {
            boots.push((row.gateway, row.boot_epoch));
        }
    }
    boots
}

/// Splits `rows` into those to write and the keys of those whose boot is in `folded`.
pub(crate) fn split_refused<'a>(
    rows: &[DbRow<'a>],
    folded: &[(u32, i64)],
) -> (Vec<DbRow<'a>>, Vec<SessionKey>) {
    let (refused, kept): (Vec<DbRow<'a>>, Vec<DbRow<'a>>) =
        rows.iter().cloned().partition(|r| folded.contains(&(r.gateway, r.boot_epoch)));
    let keys = refused.iter().map(|r| key_from_db(i64::from(r.gateway), r.boot_epoch, r.session)).collect();
    (kept, keys)
}

/// PostgreSQL text cannot hold NUL: one such device id would fail every flush that carries it
/// (forever, since a failed flush is retried). Replace it, in both databases alike.
fn clean_device(device: &str) -> Cow<'_, str> {
    if device.contains('\0') {
        Cow::Owned(device.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(device)
    }
}

/// The stored form of a u64 key part or count, back to u64 (keys: same bit pattern).
pub(crate) fn key_from_db(gateway: i64, boot_epoch: i64, session: i64) -> SessionKey {
    SessionKey { gateway: gateway as u32, boot_epoch: boot_epoch as u64, session: session as u64 }
}

/// A stored count (never negative: the schema checks it) as u64.
pub(crate) fn count_from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Whether `e` is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// 32 random bytes from the thread's CSPRNG (ChaCha, seeded from the OS).
pub(crate) fn new_secret() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

impl Store {
    /// Opens the database and applies the embedded migrations.
    ///
    /// `url`: `postgres://…` (or `postgresql://…`) for PostgreSQL, `sqlite://path` (or
    /// `sqlite:path`) for SQLite; `None`: the SQLite file `data_dir/holdfast.db` (created with
    /// `data_dir` if missing). SQLite runs in WAL mode with `synchronous=FULL`, so a commit is
    /// durable when it returns. `max_connections` sizes the pool.
    pub async fn open(url: Option<&str>, data_dir: &Path, max_connections: u32) -> anyhow::Result<Store> {
        let max_connections = max_connections.max(1);
        match url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                postgres::open(url, max_connections).await.map(Store::Postgres)
            }
            Some(url) if url.starts_with("sqlite:") => {
                sqlite::open(sqlite::options_from_url(url)?, max_connections).await.map(Store::Sqlite)
            }
            Some(url) => anyhow::bail!(
                "unsupported database URL {:?}: expected postgres://… or sqlite://…",
                redact(url)
            ),
            None => {
                std::fs::create_dir_all(data_dir)
                    .with_context(|| format!("creating data folder {}", data_dir.display()))?;
                let path = data_dir.join("holdfast.db");
                sqlite::open(sqlite::options_for_file(&path), max_connections).await.map(Store::Sqlite)
            }
        }
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// This database's spelling of the statements that differ only in text.
    fn sql(&self) -> &'static Dialect {
        match self {
            Store::Postgres(_) => &postgres::SQL,
            Store::Sqlite(_) => &sqlite::SQL,
        }
    }

    /// Writes one flush in one transaction; when it returns, the flush is durable. Per session,
    /// what is stored becomes: insert, or update keeping the larger count, the first device id
    /// and the first close (`closed_at` = now, `close_reason`); `last_byte_at` = now when the
    /// count grew, `opened_at` = now on insert. A row that would change nothing (a replay) is
    /// not rewritten; rows are written in key order. Rows of a folded gateway boot are not
    /// written: they come back in [`Written::refused`].
    ///
    /// SQLite writes `sessions` at once and adds what the flush grew to the `totals` (see
    /// [`Store::summary`]) in the same transaction. PostgreSQL appends the flush to its journal
    /// (migrations/postgres/0004_journal.sql): every read of counts sees it at once, and
    /// [`Store::compact`] later writes `sessions` and the totals as above, so there the growth
    /// is reported by the compaction and the returned [`Written`] has only `refused`.
    pub async fn write_flush(&self, rows: &[FlushRow]) -> anyhow::Result<Written> {
        if rows.is_empty() {
            return Ok(Written::default());
        }
        let rows = prepare(rows);
        let shard = rand::random_range(0..TOTALS_SHARDS);
        match self {
            Store::Postgres(pool) => postgres::write_flush(pool, &rows).await,
            Store::Sqlite(pool) => sqlite::write_flush(pool, &rows, shard).await,
        }
        .with_context(|| format!("writing a flush of {} sessions", rows.len()))
    }

    /// Merges the oldest flushes waiting in the PostgreSQL journal, up to `max_entries` reports
    /// and about `max_sessions` sessions (the merge's memory), into `sessions` and the totals, in
    /// one transaction (see [`Store::write_flush`]). The reports are merged per session in this
    /// process as they stream in: a session reported in several of them is written once. SQLite
    /// has no journal: nothing to do.
    ///
    /// `pace` is asked to give way between the compaction's statements (after each piece of
    /// about 50,000 reports taken, and after each upsert of up to 50,000 sessions), so that the
    /// caller can give the database back to the flushes in the middle of a large compaction
    /// (see [`GiveWay`]).
    pub async fn compact(
        &self,
        max_entries: usize,
        max_sessions: usize,
        pace: &mut impl GiveWay,
    ) -> anyhow::Result<Compacted> {
        match self {
            Store::Postgres(pool) => {
                let max = i64::try_from(max_entries.max(1)).unwrap_or(i64::MAX);
                let shard = rand::random_range(0..TOTALS_SHARDS);
                postgres::compact(pool, max, max_sessions.max(1), shard, pace)
                    .await
                    .context("compacting the journal")
            }
            Store::Sqlite(_) => Ok(Compacted::default()),
        }
    }

    /// Records that gateway `gateway` is running boot `boot_epoch` (a trunk of it was accepted):
    /// the gateway was seen now. Says whether that boot may report: a boot that was superseded
    /// and folded may not. One boot of [`Store::boots_seen`].
    pub async fn boot_seen(&self, gateway: u32, boot_epoch: u64) -> anyhow::Result<BootState> {
        let states = self.boots_seen(&[(gateway, boot_epoch)]).await?;
        states.first().copied().context("no answer for the boot")
    }

    /// [`Store::boot_seen`] for many boots at once (the trunk handshakes that arrive together:
    /// see `hello_desk.rs`), in one transaction; the answers in the order asked.
    pub async fn boots_seen(&self, boots: &[(u32, u64)]) -> anyhow::Result<Vec<BootState>> {
        let answers = match self {
            Store::Postgres(pool) => postgres::boots_seen(pool, boots).await,
            Store::Sqlite(pool) => sqlite::boots_seen(pool, boots).await,
        }
        .context("recording gateway boots")?;
        let folded: HashMap<(u32, u64), bool> = answers.into_iter().map(|(g, e, f)| ((g, e), f)).collect();
        boots
            .iter()
            .map(|b| match folded.get(b) {
                Some(true) => Ok(BootState::Folded),
                Some(false) => Ok(BootState::Current),
                None => Err(anyhow::anyhow!("the database did not answer for gateway {} boot {}", b.0, b.1)),
            })
            .collect()
    }

    /// One round of folding (the compactor calls it periodically): marks the gateway boots
    /// superseded for `policy.after` as folded, then folds up to `policy.batch_rows` sessions
    /// of folded boots and up to as many direct sessions closed for `policy.after`, each batch
    /// in its own transaction. A folded session's bytes and count move to `device_folded` in
    /// the transaction that deletes its row: `device_totals` stays exact at every instant.
    pub async fn fold_round(&self, policy: &FoldPolicy) -> anyhow::Result<Folded> {
        let limit = i64::try_from(policy.batch_rows.max(1)).unwrap_or(i64::MAX);
        let after_s = policy.after.as_secs_f64();
        let boots = match self {
            Store::Postgres(pool) => postgres::mark_superseded(pool, after_s).await,
            Store::Sqlite(pool) => sqlite::mark_superseded(pool, after_s).await,
        }
        .context("marking superseded boots")?;
        let mut done = Folded { boots, ..Folded::default() };
        let unfinished: Vec<(i32, i64)> = on_pool!(self, |pool| {
            sqlx::query_as("SELECT gateway_id, boot_epoch FROM folded_epochs WHERE finished_at IS NULL")
                .fetch_all(pool)
                .await
        })?;
        for (gateway, epoch) in unfinished {
            // None: not now (PostgreSQL: reports of the boot wait in the journal, or another
            // aggregator is at it); a later round folds it.
            let folded = match self {
                Store::Postgres(pool) => postgres::fold_boot(pool, gateway, epoch, limit).await,
                Store::Sqlite(pool) => sqlite::fold_boot(pool, gateway, epoch, limit).await.map(Some),
            }
            .context("folding a boot")?;
            let Some(n) = folded else { continue };
            done.sessions += n;
            if n == 0 {
                let finish = self.sql().finish_boot;
                on_pool!(self, |pool| {
                    sqlx::query(finish).bind(gateway).bind(epoch).execute(pool).await.map(drop)
                })?;
            } else if n >= limit as u64 {
                done.more = true;
            }
        }
        let n = match self {
            Store::Postgres(pool) => postgres::fold_direct(pool, after_s, limit).await,
            Store::Sqlite(pool) => sqlite::fold_direct(pool, after_s, limit).await,
        }
        .context("folding direct sessions")?;
        done.sessions += n;
        done.more |= n >= limit as u64;
        Ok(done)
    }

    /// Provisions a gateway with a random 32-byte secret. Fails with [`GatewayExists`] if the
    /// name is taken (and on an empty name).
    pub async fn gateway_add(&self, name: &str) -> anyhow::Result<GatewayRecord> {
        anyhow::ensure!(!name.is_empty(), "a gateway name must not be empty");
        let secret = new_secret();
        let sql = format!(
            "INSERT INTO gateways (name, secret) VALUES ($1, $2) RETURNING {}",
            self.sql().gateway_columns
        );
        let added = on_pool!(self, |pool| {
            sqlx::query_as::<_, GatewayRow>(&sql).bind(name).bind(secret).fetch_one(pool).await
        });
        match added {
            Ok(row) => row.try_into(),
            Err(e) if is_unique_violation(&e) => Err(GatewayExists(name.to_owned()).into()),
            Err(e) => Err(anyhow::Error::new(e).context(format!("adding gateway {name:?}"))),
        }
    }

    /// The gateway named `name`, if provisioned.
    pub async fn gateway_get(&self, name: &str) -> anyhow::Result<Option<GatewayRecord>> {
        Ok(self.gateways_get(&[name]).await?.pop().flatten())
    }

    /// The gateways named `names`, each if provisioned, in the order asked, in one query (the
    /// trunk handshakes that arrive together: see `hello_desk.rs`).
    pub async fn gateways_get(&self, names: &[&str]) -> anyhow::Result<Vec<Option<GatewayRecord>>> {
        let found = match self {
            Store::Postgres(pool) => postgres::gateways_named(pool, names).await,
            Store::Sqlite(pool) => sqlite::gateways_named(pool, names).await,
        }?;
        let mut by_name = HashMap::new();
        for row in found {
            let gateway = GatewayRecord::try_from(row)?;
            by_name.insert(gateway.name.clone(), gateway);
        }
        Ok(names.iter().map(|n| by_name.get(*n).cloned()).collect())
    }

    /// All provisioned gateways, by number.
    pub async fn gateway_list(&self) -> anyhow::Result<Vec<GatewayRecord>> {
        let sql = format!("SELECT {} FROM gateways ORDER BY id", self.sql().gateway_columns);
        let rows = on_pool!(self, |pool| sqlx::query_as::<_, GatewayRow>(&sql).fetch_all(pool).await)?;
        rows.into_iter().map(GatewayRecord::try_from).collect()
    }

    /// Removes the gateway named `name`; whether it existed. Its sessions stay (and its number
    /// is never reused).
    pub async fn gateway_remove(&self, name: &str) -> anyhow::Result<bool> {
        let sql = "DELETE FROM gateways WHERE name = $1";
        let done = on_pool!(self, |pool| sqlx::query(sql).bind(name).execute(pool).await?.rows_affected());
        Ok(done > 0)
    }

    /// Per-device totals (sum of bytes over the sessions of the device) for the devices whose id
    /// starts with `prefix` (case-sensitive, no wildcards; `""` = all), sorted by device.
    pub async fn device_totals(&self, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
        let sql = self.sql().device_totals;
        let rows: Vec<(String, i64)> =
            on_pool!(self, |pool| sqlx::query_as(sql).bind(prefix).fetch_all(pool).await)?;
        Ok(rows.into_iter().map(|(device, bytes)| (device, count_from_db(bytes))).collect())
    }

    /// One stored session, as readers see it (`sessions_now`: in PostgreSQL its row merged with
    /// its reports still in the journal; in SQLite the row). Closed when it has a close reason
    /// (both dialects set the close and its reason together, once).
    pub async fn session(&self, key: SessionKey) -> anyhow::Result<Option<SessionRecord>> {
        let sql = "SELECT device, bytes, close_reason FROM sessions_now \
                   WHERE gateway_id = $1 AND boot_epoch = $2 AND session_id = $3";
        // Gateway numbers stay < 2^31 (PostgreSQL stores them as int4): the same value in both.
        let row: Option<(Option<String>, i64, Option<i16>)> = on_pool!(self, |pool| {
            sqlx::query_as(sql)
                .bind(i64::from(key.gateway))
                .bind(key.boot_epoch as i64)
                .bind(key.session as i64)
                .fetch_optional(pool)
                .await
        })?;
        let Some((device, bytes, reason)) = row else { return Ok(None) };
        let close_reason = reason.map(u8::try_from).transpose().context("close reason out of range")?;
        Ok(Some(SessionRecord {
            key,
            device,
            bytes: count_from_db(bytes),
            closed: close_reason.is_some(),
            close_reason,
        }))
    }

    /// (sessions stored, sum of their bytes), from the totals every flush keeps up to date in its
    /// own transaction: a read of 16 rows, not of the sessions table. Summed here, saturating
    /// (SQLite's sum() fails on overflow and its total() rounds).
    pub async fn summary(&self) -> anyhow::Result<(u64, u64)> {
        let sql = "SELECT sessions, bytes FROM totals";
        let shards: Vec<(i64, i64)> = on_pool!(self, |pool| sqlx::query_as(sql).fetch_all(pool).await)?;
        let mut total = (0u64, 0u64);
        for (sessions, bytes) in shards {
            total.0 = total.0.saturating_add(count_from_db(sessions));
            total.1 = total.1.saturating_add(count_from_db(bytes));
        }
        Ok((total.0, total.1.min(i64::MAX as u64)))
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> anyhow::Result<()> {
        on_pool!(self, |pool| sqlx::query("SELECT 1").execute(pool).await.map(drop)).context("database ping")
    }

    /// Closes the pool: waits for connections in use to be returned, then closes them all (for
    /// SQLite this checkpoints the WAL). Call once at shutdown, after the last flush.
    pub async fn close(&self) {
        on_pool!(self, |pool| pool.close().await)
    }
}

/// `url` without its password, for error messages.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(gateway: u32, session: u64) -> SessionKey {
        SessionKey { gateway, boot_epoch: 7, session }
    }

    #[test]
    fn prepare_sorts_and_merges() {
        let rows = vec![
            FlushRow { key: key(2, 1), total: 5, device: None, closed: None },
            FlushRow { key: key(1, 9), total: 3, device: Some("a".into()), closed: Some(2) },
            FlushRow { key: key(2, 1), total: 9, device: Some("b\0c".into()), closed: Some(4) },
            FlushRow { key: key(1, 9), total: 1, device: Some("z".into()), closed: Some(0) },
            FlushRow { key: key(0, u64::MAX), total: u64::MAX, device: None, closed: None },
        ];
        let out = prepare(&rows);
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].gateway, out[0].session, out[0].bytes), (0, -1, i64::MAX));
        assert_eq!(out[1].gateway, 1);
        assert_eq!((out[1].bytes, out[1].device.as_deref(), out[1].close_reason), (3, Some("a"), Some(2)));
        assert_eq!(out[2].gateway, 2);
        assert_eq!(
            (out[2].bytes, out[2].device.as_deref(), out[2].close_reason),
            (9, Some("b\u{fffd}c"), Some(4))
        );
    }

    /// What the queries written once for both dialects ([`on_pool!`]) rely on in SQLite: `$N` is
    /// the N-th argument, wherever and however often it stands, as in PostgreSQL; and an INTEGER
    /// too large for the Rust type it is decoded into is an error, not a truncation.
    #[tokio::test]
    async fn sqlite_numbers_parameters_and_checks_integer_ranges() {
        let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
        let (b, a, again): (i64, i64, i64) =
            sqlx::query_as("SELECT $2, $1, $1").bind(1_i64).bind(2_i64).fetch_one(&pool).await.unwrap();
        assert_eq!((b, a, again), (2, 1, 1));
        let fits: (i32, i16) = sqlx::query_as("SELECT 2147483647, -32768").fetch_one(&pool).await.unwrap();
        assert_eq!(fits, (i32::MAX, i16::MIN));
        assert!(sqlx::query_as::<_, (i32,)>("SELECT 2147483648").fetch_one(&pool).await.is_err());
        assert!(sqlx::query_as::<_, (i16,)>("SELECT 32768").fetch_one(&pool).await.is_err());
    }

    #[test]
    fn a_negative_gateway_id_is_an_error() {
        let row =
            |id| GatewayRow { id, name: "g".into(), secret: vec![], last_seen: None, created: "c".into() };
        assert_eq!(GatewayRecord::try_from(row(7)).unwrap().number, 7);
        assert!(GatewayRecord::try_from(row(-1)).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("mysql://h/db"), "mysql://h/db");
    }
}
