//! The PostgreSQL side of [`super::Store`].

use anyhow::Context as _;
use std::str::FromStr as _;

use futures_util::TryStreamExt as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::ConnectOptions as _;
use sqlx::{PgPool, Row as _};

use super::{
    boots_of, count_from_db, redact, split_refused, Compacted, DbRow, Dialect, GatewayRow, Written,
    ADD_TOTALS,
};

pub(super) async fn open(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    // A compaction of a million reports takes seconds by design: only statements slower than
    // that are worth a warning.
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .with_context(|| format!("parsing {}", redact(url)))?
        .log_slow_statements(tracing::log::LevelFilter::Warn, std::time::Duration::from_secs(30));
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    // Several aggregators may start together: sqlx serialises them with an advisory lock.
    sqlx::migrate!("./migrations/postgres").run(&pool).await.context("applying the Postgres migrations")?;
    Ok(pool)
}

/// A flush: one journal row holding the flight's reports as parallel arrays
/// (migrations/postgres/0004_journal.sql). Its commit is what makes them durable.
const APPEND: &str = "INSERT INTO journal \
     (entries, gateway_ids, boot_epochs, session_ids, devices, totals, close_reasons) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// The flights one compaction takes: the oldest, in id order, up to `$1` reports (at least
/// one flight). Every flight waiting is listed, so the caller also learns whether more wait.
const COMPACT_PICK: &str = "SELECT id, entries, upto - entries < $1 AS take FROM \
     (SELECT id, entries, sum(entries) OVER (ORDER BY id) AS upto FROM journal) AS j ORDER BY id";

/// One compaction takes its flights out of the journal: their reports, flight by flight, with
/// when each flight was written (microseconds since the Unix epoch, so that no date type has to
/// cross the wire; `merge` writes them back exactly).
const COMPACT_TAKE: &str = "DELETE FROM journal WHERE id = ANY($1) \
     RETURNING id, (extract(epoch FROM written_at) * 1000000)::int8 AS at_us, \
     gateway_ids, boot_epochs, session_ids, devices, totals, close_reasons";

/// Writes merged sessions (parallel arrays, one entry per session, sorted by key: rows are locked
/// in key order, so two writers cannot deadlock). The upsert is the write a flush made before
/// the journal: it keeps `GREATEST(stored, reported)`, sets the device and the close once, skips
/// rows it would not change (a replay leaves no dead tuple). Answers by how much stored counts
/// grew (`prev_bytes` holds each row's count before this write) and how many sessions are new.
const COMPACT_UPSERT: &str = r#"
WITH merged AS (
    SELECT g, e, i, d, b, r,
           timestamptz 'epoch' + first_us * interval '1 microsecond' AS first_at,
           timestamptz 'epoch' + last_us * interval '1 microsecond' AS last_at,
           timestamptz 'epoch' + closed_us * interval '1 microsecond' AS closed_at
    FROM unnest($1::int4[], $2::int8[], $3::int8[], $4::text[], $5::int8[], $6::int2[], $7::int8[], $8::int8[],
                $9::int8[])
        AS m(g, e, i, d, b, r, first_us, last_us, closed_us)
), up AS (
    INSERT INTO sessions AS s
        (gateway_id, boot_epoch, session_id, device, opened_at, closed_at, close_reason, bytes, last_byte_at,
         prev_bytes)
    SELECT g, e, i, d, first_at, closed_at, r, b, CASE WHEN b > 0 THEN last_at ELSE NULL END, 0
    FROM merged
    ORDER BY g, e, i
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

/// Most sessions one upsert statement of a compaction writes: the statements of one compaction
/// share its transaction; smaller ones keep each statement's memory in PostgreSQL small.
const COMPACT_UPSERT_ROWS: usize = 50_000;

/// Compactions and folds, across every aggregator on the database, run one at a time under this
/// advisory lock: a fold deletes rows that a compaction might otherwise write again (see
/// [`fold_boot`]). Taken with try-lock: an aggregator that finds another one at it skips the round.
const MAINTENANCE_LOCK: i64 = FOLD_LOCK_BASE - 1;

async fn try_maintenance_lock(tx: &mut sqlx::PgConnection) -> anyhow::Result<bool> {
    let row = sqlx::query("SELECT pg_try_advisory_xact_lock($1)")
        .bind(MAINTENANCE_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    Ok(row.try_get(0)?)
}

/// Advisory locks that keep a flush's writes and the fold of a gateway boot apart: a flush holds
/// the lock of each gateway it writes shared, the fold of a boot holds its gateway's lock
/// exclusively while it marks the boot folded. The key is this base plus the gateway number
/// modulo [`FOLD_LOCK_BUCKETS`], so a flush over a thousand gateways takes at most 64 locks
/// (Postgres's lock table is small: 64 per connection by default).
const FOLD_LOCK_BASE: i64 = 0x686f_6c64_6600_0000; // "holdf" and room for the buckets
const FOLD_LOCK_BUCKETS: u32 = 64;

fn fold_lock(gateway: u32) -> i64 {
    FOLD_LOCK_BASE + i64::from(gateway % FOLD_LOCK_BUCKETS)
}

/// Takes the fold locks of the gateways in `boots` (shared), then answers which of the boots
/// are folded. Two statements: in READ COMMITTED each statement sees what committed before it
/// started, so the check must start after the locks are held (a fold marking a boot meanwhile
/// has then either committed, and is seen, or not begun).
async fn folded_among(tx: &mut sqlx::PgConnection, boots: &[(u32, i64)]) -> anyhow::Result<Vec<(u32, i64)>> {
    let mut locks: Vec<i64> = boots.iter().map(|b| fold_lock(b.0)).collect();
    locks.sort_unstable();
    locks.dedup();
    sqlx::query("SELECT count(pg_advisory_xact_lock_shared(k)) FROM unnest($1::int8[]) AS k")
        .bind(locks)
        .fetch_one(&mut *tx)
        .await?;
    let g: Vec<i32> = boots.iter().map(|b| b.0 as i32).collect();
    let e: Vec<i64> = boots.iter().map(|b| b.1).collect();
    let rows = sqlx::query(
        "SELECT f.gateway_id, f.boot_epoch FROM folded_epochs f \
         JOIN unnest($1::int4[], $2::int8[]) AS b(g, e) ON f.gateway_id = b.g AND f.boot_epoch = b.e",
    )
    .bind(g)
    .bind(e)
    .fetch_all(&mut *tx)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<i32, _>("gateway_id")? as u32, r.try_get::<i64, _>("boot_epoch")?)))
        .collect()
}

/// A flush: checks under the gateways' fold locks which boots are folded (their reports are
/// refused), appends the rest to the journal as one row, and commits. The growth of the stored
/// counts is learnt later, when a compaction merges the row ([`compact`]).
pub(super) async fn write_flush(pool: &PgPool, rows: &[DbRow<'_>]) -> anyhow::Result<Written> {
    let mut tx = pool.begin().await?;
    let mut written = Written::default();
    let boots = boots_of(rows);
    let kept;
    let rows = if boots.is_empty() {
        rows
    } else {
        let folded = folded_among(&mut tx, &boots).await?;
        if folded.is_empty() {
            rows
        } else {
            let (k, refused) = split_refused(rows, &folded);
            written.refused = refused;
            kept = k;
            &kept[..]
        }
    };
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(written);
    }
    let n = rows.len();
    let (mut g, mut e, mut i, mut d, mut b, mut r) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for row in rows {
        // int4 holds the u32 gateway number as the same bit pattern (numbers stay < 2^31).
        g.push(row.gateway as i32);
        e.push(row.boot_epoch);
        i.push(row.session);
        d.push(row.device.as_deref());
        b.push(row.bytes);
        r.push(row.close_reason);
    }
    let entries = i32::try_from(n).context("a flight of more than 2^31 reports")?;
    sqlx::query(APPEND)
        .bind(entries)
        .bind(g)
        .bind(e)
        .bind(i)
        .bind(d)
        .bind(b)
        .bind(r)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(written)
}

/// Merges the oldest journal flights, up to `max_entries` reports and about `max_sessions`
/// sessions, into `sessions` in one transaction, adding what they grew to totals shard `shard`.
/// Skips (answers `busy`) while another aggregator compacts or folds. The flights are taken in
/// pieces of about `COMPACT_UPSERT_ROWS` reports, oldest first, and the taking stops once the
/// merge holds `max_sessions` sessions (its memory); the flights not taken wait for the next
/// compaction. Gives way (`pace`) after each piece taken and after each upsert statement.
pub(super) async fn compact(
    pool: &PgPool,
    max_entries: i64,
    max_sessions: usize,
    shard: i16,
    pace: &mut impl super::GiveWay,
) -> anyhow::Result<Compacted> {
    let mut tx = pool.begin().await?;
    if !try_maintenance_lock(&mut tx).await? {
        return Ok(Compacted { busy: true, ..Compacted::default() });
    }
    let waiting = sqlx::query(COMPACT_PICK).bind(max_entries).fetch_all(&mut *tx).await?;
    let mut pieces: Vec<Vec<i64>> = vec![Vec::new()];
    let mut in_piece = 0;
    let mut left = 0;
    for row in &waiting {
        if !row.try_get::<bool, _>("take")? {
            left += 1;
            continue;
        }
        if in_piece >= COMPACT_UPSERT_ROWS as i64 {
            pieces.push(Vec::new());
            in_piece = 0;
        }
        pieces.last_mut().expect("never empty").push(row.try_get("id")?);
        in_piece += i64::from(row.try_get::<i32, _>("entries")?);
    }
    if pieces[0].is_empty() {
        // Ended here, not by dropping it: a dropped transaction is rolled back only when its
        // connection is next used, and until then the maintenance lock stays taken (another
        // connection's fold or compaction would find it busy and skip).
        tx.rollback().await?;
        return Ok(Compacted::default());
    }
    // The merge happens here rather than in SQL (unnest, sort, group: about 4 us a report in
    // PostgreSQL's one process, which is also the flushes' database): the reports come back as
    // the arrays they were appended as, and a hash map folds them per session.
    // Each upsert sorts its rows by key: in memory (about 100 bytes a row; the default work_mem
    // of 4 MB would spill a statement's 50,000 to temporary files).
    sqlx::query("SET LOCAL work_mem = '32MB'").execute(&mut *tx).await?;
    // Folded as they stream in: a compaction's reports are never all in memory at once, only
    // its sessions.
    let mut merge = Merge::default();
    let mut taken = 0;
    for piece in &pieces {
        if merge.sessions.len() >= max_sessions {
            left += piece.len() as u64;
            continue;
        }
        let mut flights = sqlx::query(COMPACT_TAKE).bind(piece).fetch(&mut *tx);
        while let Some(row) = flights.try_next().await? {
            merge.flight(Flight::from_row(&row)?)?;
        }
        drop(flights);
        taken += piece.len() as u64;
        pace.give_way().await;
    }
    let mut done =
        Compacted { flights: taken, entries: merge.entries, left, busy: false, ..Compacted::default() };
    let sessions = merge.into_sorted();
    done.sessions = sessions.len() as u64;
    for chunk in sessions.chunks(COMPACT_UPSERT_ROWS) {
        let columns = MergedColumns::from(chunk);
        let out = sqlx::query(COMPACT_UPSERT)
            .bind(&columns.g)
            .bind(&columns.e)
            .bind(&columns.i)
            .bind(&columns.d)
            .bind(&columns.b)
            .bind(&columns.r)
            .bind(&columns.first_us)
            .bind(&columns.last_us)
            .bind(&columns.closed_us)
            .fetch_one(&mut *tx)
            .await?;
        done.grew.add(count_from_db(out.try_get("inserted")?), count_from_db(out.try_get("grew")?));
        pace.give_way().await;
    }
    if done.grew.added() {
        let (sessions, bytes) = done.grew.as_db();
        sqlx::query(ADD_TOTALS).bind(sessions).bind(bytes).bind(shard).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(done)
}

/// One journal row as a compaction takes it: a flight's reports as parallel arrays.
struct Flight {
    id: i64,
    at_us: i64,
    gateways: Vec<i32>,
    epochs: Vec<i64>,
    sessions: Vec<i64>,
    devices: Vec<Option<String>>,
    totals: Vec<i64>,
    reasons: Vec<Option<i16>>,
}

impl Flight {
    fn from_row(row: &sqlx::postgres::PgRow) -> anyhow::Result<Self> {
        Ok(Flight {
            id: row.try_get("id")?,
            at_us: row.try_get("at_us")?,
            gateways: row.try_get("gateway_ids")?,
            epochs: row.try_get("boot_epochs")?,
            sessions: row.try_get("session_ids")?,
            devices: row.try_get("devices")?,
            totals: row.try_get("totals")?,
            reasons: row.try_get("close_reasons")?,
        })
    }
}

/// Reports of one compaction folded per session, as the journal's readers do it
/// (`sessions_now`, migrations/postgres/0004_journal.sql): the largest count, the first device
/// id and the first close in flight order, and the times of the flights that brought them.
/// Flights may come in any order (a `DELETE ... RETURNING` has none): each session remembers
/// which flight its device and close came from.
#[derive(Default)]
struct Merge {
    sessions: std::collections::HashMap<(i32, i64, i64), Merged>,
    entries: u64,
}

/// One session's reports in one compaction.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Merged {
    device: Option<String>,
    bytes: i64,
    close_reason: Option<i16>,
    first_us: i64,
    last_us: i64,
    closed_us: Option<i64>,
    /// The flights the device and the close came from (`i64::MAX`: none yet).
    device_from: i64,
    closed_from: i64,
}

impl Merge {
    /// Adds one flight's reports.
    fn flight(&mut self, f: Flight) -> anyhow::Result<()> {
        let n = f.gateways.len();
        anyhow::ensure!(
            [f.epochs.len(), f.sessions.len(), f.devices.len(), f.totals.len(), f.reasons.len()]
                .iter()
                .all(|&l| l == n),
            "journal flight {} has arrays of different lengths",
            f.id
        );
        self.entries += n as u64;
        let (id, at) = (f.id, f.at_us);
        let reports =
            f.gateways.into_iter().zip(f.epochs).zip(f.sessions).zip(f.devices).zip(f.totals).zip(f.reasons);
        for (((((g, e), i), device), bytes), reason) in reports {
            let m = self.sessions.entry((g, e, i)).or_insert_with(|| Merged {
                device: None,
                bytes,
                close_reason: None,
                first_us: at,
                last_us: at,
                closed_us: None,
                device_from: i64::MAX,
                closed_from: i64::MAX,
            });
            if device.is_some() && id < m.device_from {
                m.device = device;
                m.device_from = id;
            }
            if reason.is_some() && id < m.closed_from {
                m.close_reason = reason;
                m.closed_us = Some(at);
                m.closed_from = id;
            }
            m.bytes = m.bytes.max(bytes);
            m.first_us = m.first_us.min(at);
            m.last_us = m.last_us.max(at);
        }
        Ok(())
    }

    /// The merged sessions in key order.
    fn into_sorted(self) -> Vec<((i32, i64, i64), Merged)> {
        let mut sessions: Vec<_> = self.sessions.into_iter().collect();
        sessions.sort_unstable_by_key(|(key, _)| *key);
        sessions
    }
}

/// Merged sessions as the upsert's parallel arrays.
#[derive(Default)]
struct MergedColumns<'a> {
    g: Vec<i32>,
    e: Vec<i64>,
    i: Vec<i64>,
    d: Vec<Option<&'a str>>,
    b: Vec<i64>,
    r: Vec<Option<i16>>,
    first_us: Vec<i64>,
    last_us: Vec<i64>,
    closed_us: Vec<Option<i64>>,
}

impl<'a> From<&'a [((i32, i64, i64), Merged)]> for MergedColumns<'a> {
    fn from(sessions: &'a [((i32, i64, i64), Merged)]) -> Self {
        let mut c = MergedColumns::default();
        for ((g, e, i), m) in sessions {
            c.g.push(*g);
            c.e.push(*e);
            c.i.push(*i);
            c.d.push(m.device.as_deref());
            c.b.push(m.bytes);
            c.r.push(m.close_reason);
            c.first_us.push(m.first_us);
            c.last_us.push(m.last_us);
            c.closed_us.push(m.closed_us);
        }
        c
    }
}

/// Timestamps as text, ISO-8601 in UTC with milliseconds (the format SQLite stores).
macro_rules! iso {
    ($col:literal) => {
        concat!("to_char(", $col, " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    };
}

/// PostgreSQL's spelling of the statements the dialects share ([`super::Dialect`]).
pub(super) const SQL: Dialect = Dialect {
    gateway_columns: concat!(
        "id, name, secret, ",
        iso!("last_seen"),
        " AS last_seen, ",
        iso!("created_at"),
        " AS created"
    ),
    // starts_with: no wildcards. Sorted by byte ("C"), as SQLite does, whatever the database's
    // collation.
    device_totals: "SELECT device, bytes FROM device_totals WHERE starts_with(device, $1) \
                    ORDER BY device COLLATE \"C\"",
    finish_boot: "UPDATE folded_epochs SET finished_at = now() WHERE gateway_id = $1 AND boot_epoch = $2",
};

/// The provisioned gateways among `names`, in one query, in no particular order.
pub(super) async fn gateways_named(pool: &PgPool, names: &[&str]) -> anyhow::Result<Vec<GatewayRow>> {
    let sql = format!("SELECT {} FROM gateways WHERE name = ANY($1)", SQL.gateway_columns);
    Ok(sqlx::query_as(&sql).bind(names).fetch_all(pool).await?)
}

/// Records each (gateway, boot) as seen now (the gateway's `last_seen`, the boot's first
/// sighting) and answers, for each, whether the boot was folded: one statement, one commit, for
/// any number of trunk handshakes. Two aggregators recording overlapping batches at once (the
/// links of one gateway land on different aggregators) must wait for each other, never deadlock:
/// - the boots are inserted in key order. In the order of `DISTINCT`'s hash table, which differs
///   between batches of different sizes, two batches could each hold an uncommitted key the
///   other was about to insert: seen in `lab bench trunks` (2026-12-07, a batch of 55
///   handshakes refused as "database unavailable"); the store's test `concurrent_boots` failed
///   so in 3 of 6 runs, and in none of 14 with the order;
/// - the gateway rows are locked in id order, `FOR NO KEY UPDATE` (what the `last_seen` update
///   needs): `FOR UPDATE` would also wait for the key-share locks that the other batch's boot
///   inserts hold on the same gateway rows (their foreign key), a wait in the other direction.
pub(super) async fn boots_seen(pool: &PgPool, boots: &[(u32, u64)]) -> anyhow::Result<Vec<(u32, u64, bool)>> {
    let gateways: Vec<i32> = boots.iter().map(|&(g, _)| g as i32).collect();
    let epochs: Vec<i64> = boots.iter().map(|&(_, e)| e as i64).collect();
    let rows = sqlx::query(
        r#"
WITH input AS (
    SELECT DISTINCT gateway_id, boot_epoch FROM unnest($1::int4[], $2::int8[]) AS t(gateway_id, boot_epoch)
), locked AS (
    SELECT id FROM gateways WHERE id IN (SELECT gateway_id FROM input) ORDER BY id FOR NO KEY UPDATE
), seen AS (
    UPDATE gateways g SET last_seen = now() FROM locked WHERE g.id = locked.id RETURNING 1
), born AS (
    INSERT INTO gateway_boots (gateway_id, boot_epoch)
    SELECT gateway_id, boot_epoch FROM input ORDER BY gateway_id, boot_epoch
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT i.gateway_id, i.boot_epoch,
       EXISTS (SELECT 1 FROM folded_epochs f WHERE f.gateway_id = i.gateway_id AND f.boot_epoch = i.boot_epoch)
           AS folded
FROM input i
"#,
    )
    .bind(&gateways)
    .bind(&epochs)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let gateway: i32 = r.try_get("gateway_id")?;
            let epoch: i64 = r.try_get("boot_epoch")?;
            Ok((gateway as u32, epoch as u64, r.try_get("folded")?))
        })
        .collect()
}

/// Marks as folded every boot that a newer boot of its gateway superseded at least `after_s`
/// seconds ago, each in a transaction holding its gateway's fold lock exclusively (so no flush
/// that has not seen the mark is still writing the boot's rows when the mark commits).
pub(super) async fn mark_superseded(pool: &PgPool, after_s: f64) -> anyhow::Result<u64> {
    let candidates = sqlx::query(
        "SELECT b.gateway_id, b.boot_epoch FROM gateway_boots b \
         WHERE EXISTS (SELECT 1 FROM gateway_boots n WHERE n.gateway_id = b.gateway_id \
                       AND n.first_seen > b.first_seen AND n.first_seen < now() - make_interval(secs => $1)) \
           AND NOT EXISTS (SELECT 1 FROM folded_epochs f \
                           WHERE f.gateway_id = b.gateway_id AND f.boot_epoch = b.boot_epoch)",
    )
    .bind(after_s)
    .fetch_all(pool)
    .await?;
    let mut marked = 0;
    for row in candidates {
        let gateway: i32 = row.try_get("gateway_id")?;
        let epoch: i64 = row.try_get("boot_epoch")?;
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(fold_lock(gateway as u32))
            .execute(&mut *tx)
            .await?;
        // The journal's last flight now: every report of the boot is in a flight up to it
        // (migrations/postgres/0005_fold_journal_upto.sql).
        let done = sqlx::query(
            "INSERT INTO folded_epochs (gateway_id, boot_epoch, journal_upto) \
             VALUES ($1, $2, (SELECT coalesce(max(id), 0) FROM journal)) ON CONFLICT DO NOTHING",
        )
        .bind(gateway)
        .bind(epoch)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        marked += done.rows_affected();
    }
    Ok(marked)
}

/// One statement that deletes the sessions `selection` names (up to `$1` of them, rows another
/// transaction holds are skipped) and adds what they counted to `device_folded`. The rows a
/// DELETE returns are the ones it deleted: two aggregators folding at once fold each row once.
/// Answers how many sessions were folded.
fn fold_sql(selection: &str) -> String {
    format!(
        r#"
WITH gone AS (
    DELETE FROM sessions s
    WHERE (s.gateway_id, s.boot_epoch, s.session_id) IN (
        SELECT gateway_id, boot_epoch, session_id FROM sessions WHERE {selection} LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING s.device, s.bytes, s.last_byte_at
), per_device AS (
    SELECT device, LEAST(sum(bytes::numeric), 9223372036854775807)::int8 AS bytes, count(*) AS sessions,
           max(last_byte_at) AS last_byte_at
    FROM gone WHERE device IS NOT NULL GROUP BY device
), added AS (
    INSERT INTO device_folded AS f (device, bytes, sessions, last_byte_at)
    SELECT device, bytes, sessions, last_byte_at FROM per_device
    ON CONFLICT (device) DO UPDATE SET
        bytes        = CASE WHEN f.bytes > 9223372036854775807 - EXCLUDED.bytes THEN 9223372036854775807
                            ELSE f.bytes + EXCLUDED.bytes END,
        sessions     = f.sessions + EXCLUDED.sessions,
        last_byte_at = GREATEST(f.last_byte_at, EXCLUDED.last_byte_at)
    RETURNING 1
)
SELECT count(*) AS folded FROM gone
"#
    )
}

/// Folds up to `limit` sessions of a folded gateway boot; `None` when it cannot now: another
/// aggregator compacts or folds, or reports of the boot may still wait in the journal. Those
/// reports committed before the boot was marked (a flush that holds the gateway's fold lock
/// checks the mark), so they are in a flight up to the one the mark recorded, and the
/// compactions merge them; were the boot's rows folded first, that compaction would insert them
/// again and count them twice. One index probe: is any flight up to the mark's left? (A boot
/// marked before that was recorded: the journal is searched for its reports.) Holding the
/// maintenance lock, nothing compacts between the check and the fold.
pub(super) async fn fold_boot(
    pool: &PgPool,
    gateway: i32,
    epoch: i64,
    limit: i64,
) -> anyhow::Result<Option<u64>> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| fold_sql("gateway_id = $2 AND boot_epoch = $3"));
    let mut tx = pool.begin().await?;
    if !try_maintenance_lock(&mut tx).await? {
        return Ok(None);
    }
    let pending = sqlx::query(
        "SELECT CASE WHEN f.journal_upto IS NOT NULL \
                     THEN EXISTS (SELECT 1 FROM journal WHERE id <= f.journal_upto) \
                     ELSE EXISTS (SELECT 1 FROM journal_entries WHERE gateway_id = $1 AND boot_epoch = $2) END \
         FROM folded_epochs f WHERE f.gateway_id = $1 AND f.boot_epoch = $2",
    )
    .bind(gateway)
    .bind(epoch)
    .fetch_optional(&mut *tx)
    .await?;
    // No mark (cannot happen: only marked boots are folded), or reports may wait: not now.
    if pending.map(|r| r.try_get::<bool, _>(0)).transpose()?.unwrap_or(true) {
        // Ended explicitly to release the maintenance lock now (see `compact`).
        tx.rollback().await?;
        return Ok(None);
    }
    let row = sqlx::query(sql).bind(limit).bind(gateway).bind(epoch).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(Some(count_from_db(row.try_get("folded")?)))
}

/// Folds up to `limit` direct sessions closed at least `after_s` ago (0 while another aggregator
/// compacts or folds). A direct session's reports are written by one aggregator, one flight at a
/// time, so every report of it is in a flight older than the one that closed it; a compaction
/// takes flights oldest first, so once the close is in `sessions`, no report of it waits.
pub(super) async fn fold_direct(pool: &PgPool, after_s: f64, limit: i64) -> anyhow::Result<u64> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        fold_sql("gateway_id = 0 AND closed_at IS NOT NULL AND closed_at < now() - make_interval(secs => $2)")
    });
    let mut tx = pool.begin().await?;
    if !try_maintenance_lock(&mut tx).await? {
        return Ok(0);
    }
    let row = sqlx::query(sql).bind(limit).bind(after_s).fetch_one(&mut *tx).await?;
    tx.commit().await?;
    Ok(count_from_db(row.try_get("folded")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    /// A flight of reports (gateway 1, boot 9): (session, device, count, close reason).
    fn flight(id: i64, at_us: i64, reports: &[(i64, Option<&str>, i64, Option<i16>)]) -> Flight {
        Flight {
            id,
            at_us,
            gateways: vec![1; reports.len()],
            epochs: vec![9; reports.len()],
            sessions: reports.iter().map(|r| r.0).collect(),
            devices: reports.iter().map(|r| r.1.map(str::to_owned)).collect(),
            totals: reports.iter().map(|r| r.2).collect(),
            reasons: reports.iter().map(|r| r.3).collect(),
        }
    }

    /// A session's reports across flights, out of order as replays make them: the largest
    /// count, the first device and the first close (by flight) win, whatever came later, and
    /// in whichever order the flights are read.
    #[test]
    fn a_merge_keeps_the_largest_count_and_the_first_device_and_close() {
        let flights = || {
            [
                // Session 7 opens (device "a") with 5 bytes; session 8 with 1.
                flight(1, 10, &[(7, Some("a"), 5, None), (8, None, 1, None)]),
                // A replay of session 7 naming another device, an older count, closed (reason 2).
                flight(2, 20, &[(7, Some("b"), 3, Some(2))]),
                // Session 7's count 9, closed again (reason 4); session 8 names "c".
                flight(3, 30, &[(7, None, 9, Some(4)), (8, Some("c"), 1, None)]),
            ]
        };
        let seven = Merged {
            device: s("a"),
            bytes: 9,
            close_reason: Some(2),
            first_us: 10,
            last_us: 30,
            closed_us: Some(20),
            device_from: 1,
            closed_from: 2,
        };
        let eight = Merged {
            device: s("c"),
            bytes: 1,
            close_reason: None,
            first_us: 10,
            last_us: 30,
            closed_us: None,
            device_from: 3,
            closed_from: i64::MAX,
        };
        let want = vec![((1, 9, 7), seven), ((1, 9, 8), eight)];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut merge = Merge::default();
            let mut all = flights().map(Some);
            for k in order {
                merge.flight(all[k].take().unwrap()).unwrap();
            }
            assert_eq!(merge.entries, 5);
            assert_eq!(merge.into_sorted(), want, "flights read in the order {order:?}");
        }
    }

    #[test]
    fn a_flight_whose_arrays_differ_in_length_is_an_error() {
        let mut merge = Merge::default();
        let mut f = flight(1, 1, &[(7, None, 1, None)]);
        f.gateways.push(1);
        assert!(merge.flight(f).is_err());
    }

    #[test]
    fn merged_sessions_come_sorted_by_key() {
        let mut merge = Merge::default();
        let mut f =
            flight(1, 1, &[(1, None, 1, None), (1, None, 1, None), (9, None, 1, None), (3, None, 1, None)]);
        f.gateways = vec![2, 1, 1, -1];
        f.epochs = vec![0, 5, 4, 0];
        merge.flight(f).unwrap();
        let keys: Vec<_> = merge.into_sorted().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec![(-1, 0, 3), (1, 4, 9), (1, 5, 1), (2, 0, 1)]);
    }
}
