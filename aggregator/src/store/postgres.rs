//! The PostgreSQL side of [`super::Store`].

use anyhow::Context as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row as _};
use trunk::ledger::SessionKey;

use super::{
    count_from_db, is_unique_violation, key_from_db, redact, DbRow, GatewayExists, GatewayRecord,
    SessionRecord, Written, ADD_TOTALS, PG_CHUNK_ROWS,
};

pub(super) async fn open(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    // Several aggregators may start together: sqlx serialises them with an advisory lock.
    sqlx::migrate!("./migrations/postgres").run(&pool).await.context("applying the Postgres migrations")?;
    Ok(pool)
}

/// One statement for up to [`PG_CHUNK_ROWS`] sessions: the rows arrive as arrays and are unnested
/// in order (the caller sorted them by key). `now()` is the transaction's start: one timestamp
/// for the whole flush. The WHERE clause skips rows that would change nothing (a replay), so they
/// leave no dead tuple behind; they are still locked, in order. The statement answers one row:
/// by how much the stored counts grew (`prev_bytes` holds each row's count before this write)
/// and how many sessions are new, for the totals (migrations/postgres/0002_totals.sql).
const UPSERT: &str = r#"
WITH up AS (
INSERT INTO sessions AS s
    (gateway_id, boot_epoch, session_id, device, opened_at, closed_at, close_reason, bytes, last_byte_at,
     prev_bytes)
SELECT t.g, t.e, t.i, t.d, now(),
       CASE WHEN t.r IS NULL THEN NULL ELSE now() END, t.r, t.b,
       CASE WHEN t.b > 0 THEN now() ELSE NULL END, 0
FROM UNNEST($1::int4[], $2::int8[], $3::int8[], $4::text[], $5::int8[], $6::int2[])
     WITH ORDINALITY AS t(g, e, i, d, b, r, n)
ORDER BY t.n
ON CONFLICT (gateway_id, boot_epoch, session_id) DO UPDATE SET
    bytes        = GREATEST(s.bytes, EXCLUDED.bytes),
    prev_bytes   = s.bytes,
    device       = COALESCE(s.device, EXCLUDED.device),
    closed_at    = COALESCE(s.closed_at, EXCLUDED.closed_at),
    close_reason = CASE WHEN s.closed_at IS NULL THEN EXCLUDED.close_reason ELSE s.close_reason END,
    last_byte_at = CASE WHEN EXCLUDED.bytes > s.bytes THEN EXCLUDED.last_byte_at ELSE s.last_byte_at END
WHERE EXCLUDED.bytes > s.bytes
   OR (s.device IS NULL AND EXCLUDED.device IS NOT NULL)
   OR (s.closed_at IS NULL AND EXCLUDED.closed_at IS NOT NULL)
RETURNING s.bytes - s.prev_bytes AS grew, (s.xmax = 0) AS inserted
)
SELECT LEAST(COALESCE(sum(grew::numeric), 0), 9223372036854775807)::int8 AS grew,
       count(*) FILTER (WHERE inserted) AS inserted
FROM up
"#;

pub(super) async fn write_flush(pool: &PgPool, rows: &[DbRow<'_>], shard: i16) -> anyhow::Result<Written> {
    let mut tx = pool.begin().await?;
    let mut written = Written::default();
    for chunk in rows.chunks(PG_CHUNK_ROWS) {
        let n = chunk.len();
        let (mut g, mut e, mut i, mut d, mut b, mut r) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for row in chunk {
            // int4 holds the u32 gateway number as the same bit pattern (numbers stay < 2^31).
            g.push(row.gateway as i32);
            e.push(row.boot_epoch);
            i.push(row.session);
            d.push(row.device.as_deref());
            b.push(row.bytes);
            r.push(row.close_reason);
        }
        let out =
            sqlx::query(UPSERT).bind(g).bind(e).bind(i).bind(d).bind(b).bind(r).fetch_one(&mut *tx).await?;
        written.add(count_from_db(out.try_get("inserted")?), count_from_db(out.try_get("grew")?));
    }
    if written != Written::default() {
        let (sessions, bytes) = written.as_db();
        sqlx::query(ADD_TOTALS).bind(sessions).bind(bytes).bind(shard).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(written)
}

/// Timestamps as text, ISO-8601 in UTC with milliseconds (the format SQLite stores).
macro_rules! iso {
    ($col:literal) => {
        concat!("to_char(", $col, " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    };
}

const GATEWAY_COLUMNS: &str =
    concat!("id, name, secret, ", iso!("last_seen"), " AS last_seen, ", iso!("created_at"), " AS created");

fn gateway_from_row(row: &sqlx::postgres::PgRow) -> anyhow::Result<GatewayRecord> {
    let id: i32 = row.try_get("id")?;
    Ok(GatewayRecord {
        number: u32::try_from(id).context("negative gateway id")?,
        name: row.try_get("name")?,
        secret: row.try_get("secret")?,
        last_seen: row.try_get("last_seen")?,
        created: row.try_get("created")?,
    })
}

pub(super) async fn gateway_add(pool: &PgPool, name: &str, secret: Vec<u8>) -> anyhow::Result<GatewayRecord> {
    let sql = format!("INSERT INTO gateways (name, secret) VALUES ($1, $2) RETURNING {GATEWAY_COLUMNS}");
    match sqlx::query(&sql).bind(name).bind(secret).fetch_one(pool).await {
        Ok(row) => gateway_from_row(&row),
        Err(e) if is_unique_violation(&e) => Err(GatewayExists(name.to_owned()).into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("adding gateway {name:?}"))),
    }
}

pub(super) async fn gateway_get(pool: &PgPool, name: &str) -> anyhow::Result<Option<GatewayRecord>> {
    let sql = format!("SELECT {GATEWAY_COLUMNS} FROM gateways WHERE name = $1");
    let row = sqlx::query(&sql).bind(name).fetch_optional(pool).await?;
    row.as_ref().map(gateway_from_row).transpose()
}

pub(super) async fn gateway_list(pool: &PgPool) -> anyhow::Result<Vec<GatewayRecord>> {
    let sql = format!("SELECT {GATEWAY_COLUMNS} FROM gateways ORDER BY id");
    let rows = sqlx::query(&sql).fetch_all(pool).await?;
    rows.iter().map(gateway_from_row).collect()
}

pub(super) async fn gateway_remove(pool: &PgPool, name: &str) -> anyhow::Result<bool> {
    let done = sqlx::query("DELETE FROM gateways WHERE name = $1").bind(name).execute(pool).await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn gateway_seen(pool: &PgPool, number: u32) -> anyhow::Result<()> {
    sqlx::query("UPDATE gateways SET last_seen = now() WHERE id = $1")
        .bind(number as i32)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn device_totals(pool: &PgPool, prefix: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let rows = sqlx::query(
        "SELECT device, bytes FROM device_totals WHERE starts_with(device, $1) ORDER BY device COLLATE \"C\"",
    )
    .bind(prefix)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get::<String, _>("device")?, count_from_db(row.try_get("bytes")?))))
        .collect()
}

pub(super) async fn session(pool: &PgPool, key: SessionKey) -> anyhow::Result<Option<SessionRecord>> {
    let row = sqlx::query(
        "SELECT gateway_id, boot_epoch, session_id, device, bytes, closed_at IS NOT NULL AS closed, \
         close_reason FROM sessions WHERE gateway_id = $1 AND boot_epoch = $2 AND session_id = $3",
    )
    .bind(key.gateway as i32)
    .bind(key.boot_epoch as i64)
    .bind(key.session as i64)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let gateway: i32 = row.try_get("gateway_id")?;
    let reason: Option<i16> = row.try_get("close_reason")?;
    Ok(Some(SessionRecord {
        key: key_from_db(i64::from(gateway as u32), row.try_get("boot_epoch")?, row.try_get("session_id")?),
        device: row.try_get("device")?,
        bytes: count_from_db(row.try_get("bytes")?),
        closed: row.try_get("closed")?,
        close_reason: reason.map(|r| r as u8),
    }))
}

/// The totals' shards, summed: 16 rows, however large `sessions` grows.
pub(super) async fn summary(pool: &PgPool) -> anyhow::Result<(u64, u64)> {
    let row = sqlx::query(
        "SELECT COALESCE(sum(sessions), 0)::int8 AS n, \
         LEAST(COALESCE(sum(bytes::numeric), 0), 9223372036854775807)::int8 AS bytes FROM totals",
    )
    .fetch_one(pool)
    .await?;
    Ok((count_from_db(row.try_get("n")?), count_from_db(row.try_get("bytes")?)))
}
