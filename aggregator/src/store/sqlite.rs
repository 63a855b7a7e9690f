//! The SQLite side of [`super::Store`].

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row as _, SqlitePool};

use super::{boots_of, count_from_db, split_refused, DbRow, Dialect, GatewayRow, Written, ADD_TOTALS};

/// How long a writer waits for another's transaction before giving up (`SQLITE_BUSY`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// The current time as stored: ISO-8601 in UTC with milliseconds.
macro_rules! now {
    () => {
        "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    };
}

pub(super) fn options_from_url(url: &str) -> anyhow::Result<SqliteConnectOptions> {
    SqliteConnectOptions::from_str(url).with_context(|| format!("parsing the SQLite URL {url:?}"))
}

pub(super) fn options_for_file(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new().filename(path)
}

pub(super) async fn open(options: SqliteConnectOptions, max_connections: u32) -> anyhow::Result<SqlitePool> {
    let file = options.get_filename().display().to_string();
    let path = options.get_filename();
    if !path.as_os_str().is_empty() && path != Path::new(":memory:") && !path.exists() {
        // A new file only its owner may read (it holds the gateways' secrets); SQLite gives its
        // -wal and -shm files the same mode.
        create_private(path).with_context(|| format!("creating the SQLite database {file}"))?;
    }
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: the WAL is synced at every commit, so a commit that returned survives a power cut.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .with_context(|| format!("opening the SQLite database {file}"))?;
    sqlx::migrate!("./migrations/sqlite").run(&pool).await.context("applying the SQLite migrations")?;
    Ok(pool)
}

fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map(drop)
}

/// The upsert of `rows` sessions in one statement. The parameters are anonymous (`?`, bound in
/// order: 8 per session, count and close reason twice): sqlx asks SQLite for the name of each
/// numbered parameter (`?NNN`), a linear scan, which makes binding a large statement quadratic. In the DO UPDATE part
/// a bare column is the stored value, `excluded.` the written one; every SET sees the values from
/// before the update. Rows that would change nothing (a replay) are not rewritten. Each written
/// row answers by how much its count grew and whether it is new (a new row's `prev_bytes` is
/// -1, SQLite having no other way to tell), for the totals (migrations/sqlite/0002_totals.sql).
fn upsert_sql(rows: usize) -> String {
    let now = now!();
    let mut sql = String::from(
        "INSERT INTO sessions (gateway_id, boot_epoch, session_id, device, opened_at, closed_at, \
         close_reason, bytes, last_byte_at, prev_bytes) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(",\n");
        }
        // gateway, boot_epoch, session, device, close_reason (twice), bytes (twice)
        sql.push_str(&format!(
            "(?, ?, ?, ?, {now}, CASE WHEN ? IS NULL THEN NULL ELSE {now} END, ?, ?, \
             CASE WHEN ? > 0 THEN {now} ELSE NULL END, -1)"
        ));
    }
    sql.push_str(
        "\nON CONFLICT (gateway_id, boot_epoch, session_id) DO UPDATE SET
            bytes        = max(bytes, excluded.bytes),
            prev_bytes   = bytes,
            device       = coalesce(device, excluded.device),
            closed_at    = coalesce(closed_at, excluded.closed_at),
            close_reason = CASE WHEN closed_at IS NULL THEN excluded.close_reason ELSE close_reason END,
            last_byte_at = CASE WHEN excluded.bytes > bytes THEN excluded.last_byte_at ELSE last_byte_at END
        WHERE excluded.bytes > bytes
           OR (device IS NULL AND excluded.device IS NOT NULL)
           OR (closed_at IS NULL AND excluded.closed_at IS NOT NULL)
        RETURNING bytes - max(prev_bytes, 0) AS grew, prev_bytes < 0 AS inserted",
    );
    sql
}

/// Sessions per statement: a flush is written as statements of this many sessions, then the rest
/// in decreasing powers of two, so a connection prepares (and caches) at most 7 different
/// statements. Larger statements measured slower (SQLite's bind and parse costs grow faster than
/// linearly); one statement per session costs a round trip to sqlx's SQLite thread each.
const MAX_ROWS_PER_STATEMENT: usize = 64;

/// The upsert statement for 2^k rows, built once.
fn upsert(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL
        .get_or_init(|| (0..=MAX_ROWS_PER_STATEMENT.trailing_zeros()).map(|k| upsert_sql(1 << k)).collect());
    debug_assert!(rows.is_power_of_two() && rows <= MAX_ROWS_PER_STATEMENT);
    &all[rows.trailing_zeros() as usize]
}

pub(super) async fn write_flush(
    pool: &SqlitePool,
    rows: &[DbRow<'_>],
    shard: i16,
) -> anyhow::Result<Written> {
    // IMMEDIATE: take the write lock up front (waiting up to BUSY_TIMEOUT for another writer),
    // rather than failing on upgrade from a read lock midway.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut written = Written::default();
    // Rows of folded gateway boots are refused. SQLite has one writer: no fold can run between
    // this check and the writes below.
    let kept;
    let mut rest = rows;
    let boots = boots_of(rows);
    if !boots.is_empty() {
        let mut folded = Vec::new();
        for &(gateway, epoch) in &boots {
            let hit = sqlx::query("SELECT 1 FROM folded_epochs WHERE gateway_id = ?1 AND boot_epoch = ?2")
                .bind(i64::from(gateway))
                .bind(epoch)
                .fetch_optional(&mut *tx)
                .await?;
            if hit.is_some() {
                folded.push((gateway, epoch));
            }
        }
        if !folded.is_empty() {
            let (k, refused) = split_refused(rows, &folded);
            written.refused = refused;
            kept = k;
            rest = &kept[..];
        }
    }
    while !rest.is_empty() {
        let n = if rest.len() >= MAX_ROWS_PER_STATEMENT {
            MAX_ROWS_PER_STATEMENT
        } else {
            1 << (usize::BITS - 1 - rest.len().leading_zeros())
        };
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut query = sqlx::query(upsert(n));
        for row in chunk {
            query = query
                .bind(i64::from(row.gateway))
                .bind(row.boot_epoch)
                .bind(row.session)
                .bind(row.device.as_deref())
                .bind(row.close_reason)
                .bind(row.close_reason)
                .bind(row.bytes)
                .bind(row.bytes);
        }
        for out in query.fetch_all(&mut *tx).await? {
            let inserted: bool = out.try_get("inserted")?;
            written.add(u64::from(inserted), count_from_db(out.try_get("grew")?));
        }
    }
    if written.added() {
        let (sessions, bytes) = written.as_db();
        sqlx::query(ADD_TOTALS).bind(sessions).bind(bytes).bind(shard).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// SQLite's spelling of the statements the dialects share ([`super::Dialect`]).
pub(super) const SQL: Dialect = Dialect {
    // Timestamps are stored as ISO-8601 text already.
    gateway_columns: "id, name, secret, last_seen, created_at AS created",
    // Not LIKE: it is case-insensitive in SQLite and treats % and _ as wildcards. SQLite's
    // default collation (BINARY) sorts by byte.
    device_totals: "SELECT device, bytes FROM device_totals WHERE substr(device, 1, length($1)) = $1 \
                    ORDER BY device",
    finish_boot: concat!(
        "UPDATE folded_epochs SET finished_at = ",
        now!(),
        " WHERE gateway_id = $1 AND boot_epoch = $2"
    ),
};

/// The provisioned gateways among `names`, in no particular order (one query per name, on
/// one connection: SQLite answers in microseconds).
pub(super) async fn gateways_named(pool: &SqlitePool, names: &[&str]) -> anyhow::Result<Vec<GatewayRow>> {
    let sql = format!("SELECT {} FROM gateways WHERE name = $1", SQL.gateway_columns);
    let mut conn = pool.acquire().await?;
    let mut found = Vec::new();
    for name in names {
        if let Some(row) = sqlx::query_as(&sql).bind(name).fetch_optional(&mut *conn).await? {
            found.push(row);
        }
    }
    Ok(found)
}

/// Records each (gateway, boot) as seen now and answers whether each boot was folded, in one
/// transaction (one commit however many).
pub(super) async fn boots_seen(
    pool: &SqlitePool,
    boots: &[(u32, u64)],
) -> anyhow::Result<Vec<(u32, u64, bool)>> {
    let mut tx = pool.begin().await?;
    let mut answers = Vec::with_capacity(boots.len());
    for &(gateway, epoch) in boots {
        sqlx::query(concat!("UPDATE gateways SET last_seen = ", now!(), " WHERE id = ?1"))
            .bind(i64::from(gateway))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO gateway_boots (gateway_id, boot_epoch) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )
        .bind(i64::from(gateway))
        .bind(epoch as i64)
        .execute(&mut *tx)
        .await?;
        let hit = sqlx::query("SELECT 1 FROM folded_epochs WHERE gateway_id = ?1 AND boot_epoch = ?2")
            .bind(i64::from(gateway))
            .bind(epoch as i64)
            .fetch_optional(&mut *tx)
            .await?;
        answers.push((gateway, epoch, hit.is_some()));
    }
    tx.commit().await?;
    Ok(answers)
}

/// `now` minus `after_s` seconds, as stored, for comparisons with stored timestamps.
fn seconds_ago(after_s: f64) -> String {
    format!("-{after_s:.3} seconds")
}

/// Marks the boots superseded for `after_s` seconds as folded (one writer: no flush can be
/// writing them meanwhile, see [`write_flush`]).
pub(super) async fn mark_superseded(pool: &SqlitePool, after_s: f64) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "INSERT INTO folded_epochs (gateway_id, boot_epoch) \
         SELECT b.gateway_id, b.boot_epoch FROM gateway_boots b \
         WHERE EXISTS (SELECT 1 FROM gateway_boots n WHERE n.gateway_id = b.gateway_id \
                       AND n.first_seen > b.first_seen \
                       AND n.first_seen < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)) \
         ON CONFLICT DO NOTHING",
    )
    .bind(seconds_ago(after_s))
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Folds the sessions `selection` names (parameters ?2 and ?3; at most ?1 of them, in key order)
/// in one write transaction: their counts are added to `device_folded`, then the same rows (the
/// same selection, same order, same snapshot) are deleted. Answers how many.
async fn fold(
    pool: &SqlitePool,
    selection: &str,
    limit: i64,
    p2: i64,
    p3: Option<i64>,
) -> anyhow::Result<u64> {
    let chosen = format!(
        "SELECT gateway_id, boot_epoch, session_id, device, bytes, last_byte_at FROM sessions \
         WHERE {selection} ORDER BY gateway_id, boot_epoch, session_id LIMIT ?1"
    );
    let add = format!(
        "INSERT INTO device_folded (device, bytes, sessions, last_byte_at) \
         SELECT device, sum(bytes), count(*), max(last_byte_at) FROM ({chosen}) WHERE device IS NOT NULL \
         GROUP BY device \
         ON CONFLICT (device) DO UPDATE SET \
             bytes = CASE WHEN device_folded.bytes > 9223372036854775807 - excluded.bytes \
                          THEN 9223372036854775807 ELSE device_folded.bytes + excluded.bytes END, \
             sessions = device_folded.sessions + excluded.sessions, \
             last_byte_at = CASE WHEN excluded.last_byte_at IS NULL \
                                  OR device_folded.last_byte_at > excluded.last_byte_at \
                                 THEN device_folded.last_byte_at ELSE excluded.last_byte_at END"
    );
    let delete = format!(
        "DELETE FROM sessions WHERE (gateway_id, boot_epoch, session_id) IN \
         (SELECT gateway_id, boot_epoch, session_id FROM ({chosen}))"
    );
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query(&add).bind(limit).bind(p2).bind(p3).execute(&mut *tx).await?;
    let gone = sqlx::query(&delete).bind(limit).bind(p2).bind(p3).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(gone.rows_affected())
}

pub(super) async fn fold_boot(
    pool: &SqlitePool,
    gateway: i32,
    epoch: i64,
    limit: i64,
) -> anyhow::Result<u64> {
    fold(pool, "gateway_id = ?2 AND boot_epoch = ?3", limit, i64::from(gateway), Some(epoch)).await
}

pub(super) async fn fold_direct(pool: &SqlitePool, after_s: f64, limit: i64) -> anyhow::Result<u64> {
    fold(
        pool,
        // ?2: milliseconds; ?3 is not used (NULL).
        "gateway_id = 0 AND closed_at IS NOT NULL \
         AND closed_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || (?2 / 1000.0) || ' seconds') \
         AND ?3 IS NULL",
        limit,
        (after_s * 1000.0) as i64,
        None,
    )
    .await
}
