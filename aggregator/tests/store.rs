//! The store against real databases: SQLite in a temporary folder, and PostgreSQL when
//! `DATABASE_URL` is set (`scripts/start-postgres.sh` starts one and prints it). Each Postgres test
//! runs in a database of its own, created for it and dropped afterwards (the role needs CREATEDB).
//! Without `DATABASE_URL` the Postgres tests are skipped, or fail when `CI` is set.

use std::str::FromStr as _;
use std::time::{Duration, Instant};

mod support;

use aggregator::store::{FlushRow, GatewayExists, Store};
use sqlx::Row as _;
use support::db::{admin_url, with_database, PgDatabase};
use trunk::ledger::SessionKey;

// ---------------------------------------------------------------------------------------------
// Databases

struct Db {
    store: Store,
    /// How to open the same database again.
    url: Option<String>,
    dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

async fn sqlite_db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(None, dir.path(), 4).await.unwrap();
    assert_eq!(store.kind(), "sqlite");
    assert!(dir.path().join("holdfast.db").exists());
    Db { store, url: None, dir, _pg: None }
}

async fn postgres_db() -> Option<Db> {
    let admin_url = admin_url()?;
    let pg = PgDatabase::create(&admin_url).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(Some(&pg.url), dir.path(), 4).await.unwrap();
    assert_eq!(store.kind(), "postgres");
    Some(Db { store, url: Some(pg.url.clone()), dir, _pg: Some(pg) })
}

/// Runs `$check(Db)` against SQLite and against Postgres.
macro_rules! both {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$check(super::sqlite_db().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = super::postgres_db().await {
                    super::$check(db).await;
                }
            }
        }
    )*};
}

both!(
    greatest,
    replay_changes_nothing,
    device_coalesce,
    close_once,
    device_totals,
    large_flush,
    gateways,
    concurrent_flushes,
    keys_and_edges,
    reopen,
    summary_is_kept_by_the_flushes,
);

// ---------------------------------------------------------------------------------------------
// Helpers

fn key(gateway: u32, session: u64) -> SessionKey {
    SessionKey { gateway, boot_epoch: 1_700_000_000, session }
}

fn row(key: SessionKey, total: u64) -> FlushRow {
    FlushRow { key, total, device: None, closed: None }
}

fn with_device(mut row: FlushRow, device: &str) -> FlushRow {
    row.device = Some(device.to_owned());
    row
}

fn closed(mut row: FlushRow, reason: u8) -> FlushRow {
    row.closed = Some(reason);
    row
}

async fn bytes(store: &Store, key: SessionKey) -> u64 {
    store.session(key).await.unwrap().expect("the session is stored").bytes
}

/// Every column of a session, as text (timestamps included), and for Postgres the row version
/// (`xmin`), which changes whenever the row is rewritten.
async fn raw(store: &Store, key: SessionKey) -> Vec<Option<String>> {
    match store {
        Store::Postgres(pool) => {
            let row = sqlx::query(
                "SELECT device, opened_at::text, closed_at::text, close_reason::text, bytes::text, \
                 last_byte_at::text, xmin::text FROM sessions \
                 WHERE gateway_id = $1 AND boot_epoch = $2 AND session_id = $3",
            )
            .bind(key.gateway as i32)
            .bind(key.boot_epoch as i64)
            .bind(key.session as i64)
            .fetch_one(pool)
            .await
            .unwrap();
            (0..7).map(|i| row.get::<Option<String>, _>(i)).collect()
        }
        Store::Sqlite(pool) => {
            let row = sqlx::query(
                "SELECT device, opened_at, closed_at, CAST(close_reason AS TEXT), CAST(bytes AS TEXT), \
                 last_byte_at FROM sessions WHERE gateway_id = ?1 AND boot_epoch = ?2 AND session_id = ?3",
            )
            .bind(i64::from(key.gateway))
            .bind(key.boot_epoch as i64)
            .bind(key.session as i64)
            .fetch_one(pool)
            .await
            .unwrap();
            (0..6).map(|i| row.get::<Option<String>, _>(i)).collect()
        }
    }
}

const OPENED_AT: usize = 1;
const CLOSED_AT: usize = 2;
const LAST_BYTE_AT: usize = 5;

/// Long enough for "now" to move on in both databases (SQLite stores milliseconds).
async fn tick() {
    tokio::time::sleep(Duration::from_millis(25)).await;
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn greatest(db: Db) {
    let s = &db.store;
    let k = key(3, 1);
    s.write_flush(&[row(k, 5)]).await.unwrap();
    assert_eq!(bytes(s, k).await, 5);
    let first = raw(s, k).await;
    assert!(first[LAST_BYTE_AT].is_some(), "bytes arrived: last_byte_at is set");
    assert!(first[OPENED_AT].is_some());

    tick().await;
    s.write_flush(&[row(k, 3)]).await.unwrap();
    assert_eq!(bytes(s, k).await, 5, "a smaller count never lowers the stored one");
    assert_eq!(raw(s, k).await, first, "a smaller count changes nothing");

    tick().await;
    s.write_flush(&[row(k, 8)]).await.unwrap();
    assert_eq!(bytes(s, k).await, 8);
    let third = raw(s, k).await;
    assert_ne!(third[LAST_BYTE_AT], first[LAST_BYTE_AT], "bytes grew: last_byte_at moves");
    assert_eq!(third[OPENED_AT], first[OPENED_AT], "opened_at is set on insert only");

    // A session opened with no bytes yet has no last_byte_at.
    let empty = key(3, 2);
    s.write_flush(&[with_device(row(empty, 0), "dev")]).await.unwrap();
    assert_eq!(raw(s, empty).await[LAST_BYTE_AT], None);
    assert_eq!(s.summary().await.unwrap(), (2, 8));
}

async fn replay_changes_nothing(db: Db) {
    let s = &db.store;
    let flush = vec![
        with_device(row(key(1, 1), 100), "phone-a"),
        closed(with_device(row(key(1, 2), 200), "phone-b"), 1),
        row(key(0, 3), 300),
        closed(row(key(2, 4), 0), 0),
    ];
    s.write_flush(&flush).await.unwrap();
    let mut before = Vec::new();
    for r in &flush {
        before.push(raw(s, r.key).await);
    }
    tick().await;
    s.write_flush(&flush).await.unwrap();
    // In reverse order too: the store sorts.
    let reversed: Vec<FlushRow> = flush.iter().rev().cloned().collect();
    s.write_flush(&reversed).await.unwrap();
    for (r, before) in flush.iter().zip(&before) {
        // For Postgres this includes xmin: the row was not even rewritten.
        assert_eq!(&raw(s, r.key).await, before, "replay changed {:?}", r.key);
    }
    assert_eq!(s.summary().await.unwrap(), (4, 600));
}

async fn device_coalesce(db: Db) {
    let s = &db.store;
    let k = key(4, 9);
    s.write_flush(&[row(k, 10)]).await.unwrap();
    assert_eq!(s.session(k).await.unwrap().unwrap().device, None);
    assert!(s.device_totals("").await.unwrap().is_empty(), "no device, no device total");

    // The device id arrives in a later flush, with no new bytes.
    s.write_flush(&[with_device(row(k, 10), "dev-a")]).await.unwrap();
    assert_eq!(s.session(k).await.unwrap().unwrap().device.as_deref(), Some("dev-a"));
    // A later, different one does not replace it; a flush without one does not clear it.
    s.write_flush(&[with_device(row(k, 12), "dev-b")]).await.unwrap();
    s.write_flush(&[row(k, 13)]).await.unwrap();
    let rec = s.session(k).await.unwrap().unwrap();
    assert_eq!((rec.device.as_deref(), rec.bytes), (Some("dev-a"), 13));
    assert_eq!(s.device_totals("").await.unwrap(), vec![("dev-a".to_owned(), 13)]);
}

async fn close_once(db: Db) {
    let s = &db.store;
    let k = key(5, 1);
    s.write_flush(&[with_device(row(k, 10), "d")]).await.unwrap();
    let open = s.session(k).await.unwrap().unwrap();
    assert!(!open.closed);
    assert_eq!(open.close_reason, None);
    assert_eq!(raw(s, k).await[CLOSED_AT], None);

    tick().await;
    s.write_flush(&[closed(row(k, 20), 2)]).await.unwrap();
    let rec = s.session(k).await.unwrap().unwrap();
    assert!(rec.closed);
    assert_eq!((rec.close_reason, rec.bytes), (Some(2), 20));
    let closed_at = raw(s, k).await[CLOSED_AT].clone();
    assert!(closed_at.is_some());

    // A second close (another reason, a larger count: a late report) keeps the first close.
    tick().await;
    s.write_flush(&[closed(row(k, 25), 4)]).await.unwrap();
    let rec = s.session(k).await.unwrap().unwrap();
    assert_eq!((rec.closed, rec.close_reason, rec.bytes), (true, Some(2), 25));
    assert_eq!(raw(s, k).await[CLOSED_AT], closed_at, "closed_at is set once");
    // A report without a close does not reopen it.
    s.write_flush(&[row(k, 26)]).await.unwrap();
    assert_eq!(s.session(k).await.unwrap().unwrap().close_reason, Some(2));

    // A session whose first write is its close.
    let k2 = key(5, 2);
    s.write_flush(&[closed(row(k2, 7), 3)]).await.unwrap();
    let rec = s.session(k2).await.unwrap().unwrap();
    assert_eq!((rec.closed, rec.close_reason, rec.bytes), (true, Some(3), 7));
    assert!(raw(s, k2).await[CLOSED_AT].is_some());
}

async fn device_totals(db: Db) {
    let s = &db.store;
    s.write_flush(&[
        with_device(row(key(1, 1), 100), "phone-1"),
        with_device(row(key(2, 1), 50), "phone-1"), // same device through another gateway
        with_device(row(key(0, 1), 7), "phone-1"),  // and directly
        with_device(row(key(1, 2), 1000), "phone-10"),
        with_device(row(key(1, 3), 20), "phone-2"),
        with_device(row(key(1, 4), 5), "tablet-1"),
        with_device(row(key(1, 5), 3), "ph%ne"),
        with_device(row(key(1, 6), 4), "Phone-3"),
        row(key(1, 7), 999), // no device: in no total
    ])
    .await
    .unwrap();
    let t = |d: &str, n: u64| (d.to_owned(), n);
    assert_eq!(
        s.device_totals("").await.unwrap(),
        vec![
            t("Phone-3", 4),
            t("ph%ne", 3),
            t("phone-1", 157),
            t("phone-10", 1000),
            t("phone-2", 20),
            t("tablet-1", 5)
        ]
    );
    assert_eq!(
        s.device_totals("phone-").await.unwrap(),
        vec![t("phone-1", 157), t("phone-10", 1000), t("phone-2", 20)]
    );
    assert_eq!(s.device_totals("phone-1").await.unwrap(), vec![t("phone-1", 157), t("phone-10", 1000)]);
    assert_eq!(s.device_totals("Phone").await.unwrap(), vec![t("Phone-3", 4)], "case-sensitive");
    assert_eq!(s.device_totals("ph%").await.unwrap(), vec![t("ph%ne", 3)], "% is no wildcard");
    assert_eq!(s.device_totals("ph_ne").await.unwrap(), vec![], "_ is no wildcard");
    assert_eq!(s.device_totals("x").await.unwrap(), vec![]);

    // The totals follow the sessions: a session's count grows, a new session of the device.
    s.write_flush(&[row(key(1, 1), 150), with_device(row(key(3, 1), 1), "phone-2")]).await.unwrap();
    assert_eq!(s.device_totals("phone-1").await.unwrap(), vec![t("phone-1", 207), t("phone-10", 1000)]);
    assert_eq!(s.device_totals("phone-2").await.unwrap(), vec![t("phone-2", 21)]);
    assert_eq!(s.summary().await.unwrap(), (10, 150 + 50 + 7 + 1000 + 20 + 5 + 3 + 4 + 999 + 1));
}

const LARGE: u64 = 20_000;

fn large_flush_rows(round: u64) -> Vec<FlushRow> {
    (0..LARGE)
        .map(|i| {
            let k = SessionKey { gateway: (i % 16) as u32, boot_epoch: 42, session: i };
            let mut r = row(k, 1_000 * (round + 1) + i);
            if round == 0 {
                r.device = Some(format!("device-{:04}", i % 1000));
            }
            if round == 1 && i % 10 == 0 {
                r.closed = Some(0);
            }
            r
        })
        .collect()
}

async fn large_flush(db: Db) {
    let s = &db.store;
    let mut timings = Vec::new();
    for (what, round) in [("insert", 0), ("update", 1), ("replay", 1)] {
        let rows = large_flush_rows(round);
        let started = Instant::now();
        s.write_flush(&rows).await.unwrap();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        timings.push(format!("{what} {ms:.0} ms"));
    }
    eprintln!("{}: one flush of {LARGE} rows: {}", s.kind(), timings.join(", "));

    let expected: u64 = (0..LARGE).map(|i| 2_000 + i).sum();
    assert_eq!(s.summary().await.unwrap(), (LARGE, expected));
    let totals = s.device_totals("device-").await.unwrap();
    assert_eq!(totals.len(), 1000);
    assert_eq!(totals.iter().map(|t| t.1).sum::<u64>(), expected);
    // device-0007: sessions 7, 1007, ..., 19007.
    assert_eq!(totals[7], ("device-0007".to_owned(), (0..20).map(|j| 2_000 + 7 + 1000 * j).sum()));
    let rec = s.session(SessionKey { gateway: 10, boot_epoch: 42, session: 12_010 }).await.unwrap().unwrap();
    assert_eq!((rec.bytes, rec.device.as_deref(), rec.closed), (14_010, Some("device-0010"), true));
    let rec = s.session(SessionKey { gateway: 11, boot_epoch: 42, session: 12_011 }).await.unwrap().unwrap();
    assert_eq!((rec.bytes, rec.closed), (14_011, false));
}

async fn gateways(db: Db) {
    let s = &db.store;
    assert!(s.gateway_list().await.unwrap().is_empty());
    let a = s.gateway_add("site-a").await.unwrap();
    let b = s.gateway_add("site-b").await.unwrap();
    assert!(a.number >= 1, "0 is reserved for direct phones");
    assert!(b.number > a.number);
    assert_eq!((a.name.as_str(), a.secret.len(), a.last_seen.as_deref()), ("site-a", 32, None));
    assert_ne!(a.secret, b.secret);
    assert_ne!(a.secret, vec![0; 32]);
    assert!(a.created.len() >= 20 && a.created.ends_with('Z'), "ISO-8601 UTC: {}", a.created);
    assert!(!format!("{a:?}").contains(&format!("{:?}", a.secret)), "Debug hides the secret");

    let err = s.gateway_add("site-a").await.unwrap_err();
    assert_eq!(err.downcast_ref::<GatewayExists>(), Some(&GatewayExists("site-a".into())), "{err:#}");
    assert!(err.to_string().contains("already exists"));
    assert!(s.gateway_add("").await.is_err());

    assert_eq!(s.gateway_get("site-a").await.unwrap().as_ref(), Some(&a));
    assert_eq!(s.gateway_get("nope").await.unwrap(), None);
    assert_eq!(s.gateway_list().await.unwrap(), vec![a.clone(), b.clone()]);

    s.gateway_seen(a.number).await.unwrap();
    let seen = s.gateway_get("site-a").await.unwrap().unwrap();
    let first_seen = seen.last_seen.clone().expect("last_seen is set");
    assert!(first_seen.ends_with('Z') && first_seen >= a.created, "{first_seen} vs {}", a.created);
    assert_eq!((seen.number, &seen.secret, &seen.created), (a.number, &a.secret, &a.created));
    tick().await;
    s.gateway_seen(a.number).await.unwrap();
    assert!(s.gateway_get("site-a").await.unwrap().unwrap().last_seen.unwrap() > first_seen);
    s.gateway_seen(9_999).await.unwrap(); // unknown: nothing happens
    assert_eq!(s.gateway_get("site-b").await.unwrap().unwrap().last_seen, None);

    assert!(s.gateway_remove("site-b").await.unwrap());
    assert!(!s.gateway_remove("site-b").await.unwrap());
    assert_eq!(s.gateway_get("site-b").await.unwrap(), None);
    assert_eq!(s.gateway_list().await.unwrap().len(), 1);
    // A removed gateway's number is never handed out again.
    let c = s.gateway_add("site-b").await.unwrap();
    assert!(c.number > b.number, "{} reused?", c.number);
    assert_ne!(c.secret, b.secret);
}

async fn concurrent_flushes(db: Db) {
    const SESSIONS: u64 = 3_000;
    const ROUNDS: u64 = 6;
    let total = |task: u64, round: u64, i: u64| round * 100 + (i * (task + 3)) % 17;
    let mut tasks = Vec::new();
    for task in 0..2u64 {
        let store = db.store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..ROUNDS {
                let mut rows: Vec<FlushRow> = (0..SESSIONS)
                    .map(|i| with_device(row(key(7, i), total(task, round, i)), &format!("d{}", i % 10)))
                    .collect();
                if task == 1 {
                    rows.reverse(); // the opposite order: the store must sort
                }
                store.write_flush(&rows).await.unwrap();
            }
        }));
    }
    let joined = tokio::time::timeout(Duration::from_secs(120), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    assert!(joined.is_ok(), "concurrent flushes did not finish: deadlock?");

    let last = ROUNDS - 1;
    let mut expected_sum = 0;
    for i in 0..SESSIONS {
        let want = total(0, last, i).max(total(1, last, i));
        expected_sum += want;
        if i % 97 == 0 {
            assert_eq!(bytes(&db.store, key(7, i)).await, want, "session {i}");
        }
    }
    assert_eq!(db.store.summary().await.unwrap(), (SESSIONS, expected_sum));
    let totals = db.store.device_totals("d").await.unwrap();
    assert_eq!(totals.len(), 10);
    assert_eq!(totals.iter().map(|t| t.1).sum::<u64>(), expected_sum, "no session counted twice");
}

/// The persisted totals come from what each flush added in its own transaction, not from a
/// scan of `sessions`: replays, smaller counts and closes add nothing; growth and new sessions
/// add exactly themselves; and a change made to `sessions` behind the flushes' back (here, to
/// prove no scan happens) does not show.
async fn summary_is_kept_by_the_flushes(db: Db) {
    let s = &db.store;
    let w = s.write_flush(&[row(key(2, 1), 10), row(key(2, 2), 5)]).await.unwrap();
    assert_eq!((w.sessions, w.bytes), (2, 15));
    let w = s.write_flush(&[row(key(2, 1), 10), row(key(2, 2), 3)]).await.unwrap();
    assert_eq!((w.sessions, w.bytes), (0, 0), "a replay and a smaller count add nothing");
    let w =
        s.write_flush(&[closed(row(key(2, 1), 14), 0), with_device(row(key(2, 3), 0), "d")]).await.unwrap();
    assert_eq!((w.sessions, w.bytes), (1, 4));
    // A total at the edge saturates instead of wrapping or failing the flush.
    let w = s.write_flush(&[row(key(2, 4), u64::MAX)]).await.unwrap();
    assert_eq!(w.sessions, 1);
    assert_eq!(s.summary().await.unwrap(), (4, i64::MAX as u64));
    let w = s.write_flush(&[row(key(2, 5), 1)]).await.unwrap();
    assert_eq!((w.sessions, w.bytes), (1, 1));
    assert_eq!(s.summary().await.unwrap(), (5, i64::MAX as u64), "saturated, and the flush still committed");

    // Behind the flushes' back: the summary does not read the table.
    match s {
        Store::Postgres(pool) => sqlx::query("UPDATE sessions SET bytes = 0").execute(pool).await.map(drop),
        Store::Sqlite(pool) => sqlx::query("UPDATE sessions SET bytes = 0").execute(pool).await.map(drop),
    }
    .unwrap();
    assert_eq!(s.summary().await.unwrap(), (5, i64::MAX as u64));
}

async fn keys_and_edges(db: Db) {
    let s = &db.store;
    s.write_flush(&[]).await.unwrap();
    assert_eq!(s.summary().await.unwrap(), (0, 0));
    assert_eq!(s.session(key(1, 1)).await.unwrap(), None);

    // u64 keys beyond i64::MAX survive the round trip (same bit pattern), and are distinct.
    let big = SessionKey { gateway: 0, boot_epoch: u64::MAX, session: 1 << 63 };
    let small = SessionKey { gateway: 0, boot_epoch: i64::MAX as u64, session: (1 << 63) - 1 };
    // A count beyond i64::MAX saturates.
    s.write_flush(&[closed(with_device(row(big, u64::MAX), "edge"), 255), row(small, 1)]).await.unwrap();
    let rec = s.session(big).await.unwrap().unwrap();
    assert_eq!(rec.key, big);
    assert_eq!(
        (rec.bytes, rec.close_reason, rec.device.as_deref()),
        (i64::MAX as u64, Some(255), Some("edge"))
    );
    assert_eq!(s.session(small).await.unwrap().unwrap().bytes, 1);

    // The same session twice in one flush: merged (the larger count, the first device and close).
    let k = key(9, 9);
    s.write_flush(&[
        with_device(row(k, 5), "first"),
        closed(with_device(row(k, 9), "second"), 1),
        closed(row(k, 7), 2),
    ])
    .await
    .unwrap();
    let rec = s.session(k).await.unwrap().unwrap();
    assert_eq!((rec.bytes, rec.device.as_deref(), rec.close_reason), (9, Some("first"), Some(1)));

    // A device id with a NUL (PostgreSQL text cannot hold it) does not poison the flush.
    let nul = key(9, 10);
    s.write_flush(&[with_device(row(nul, 1), "a\0b")]).await.unwrap();
    assert_eq!(s.session(nul).await.unwrap().unwrap().device.as_deref(), Some("a\u{fffd}b"));

    s.ping().await.unwrap();
}

async fn reopen(db: Db) {
    db.store.write_flush(&[with_device(row(key(1, 1), 42), "kept")]).await.unwrap();
    let g = db.store.gateway_add("kept").await.unwrap();
    db.store.close().await;
    // Opening again applies no migration twice and finds the data.
    let again = match &db.url {
        Some(url) => Store::open(Some(url), db.dir.path(), 2).await.unwrap(),
        None => {
            // The same file, through an explicit URL this time.
            let url = format!("sqlite://{}", db.dir.path().join("holdfast.db").display());
            let by_url = Store::open(Some(&url), std::path::Path::new("/nonexistent"), 2).await.unwrap();
            assert_eq!(by_url.session(key(1, 1)).await.unwrap().unwrap().bytes, 42);
            by_url.close().await;
            Store::open(None, db.dir.path(), 2).await.unwrap()
        }
    };
    assert_eq!(again.session(key(1, 1)).await.unwrap().unwrap().bytes, 42);
    assert_eq!(again.gateway_get("kept").await.unwrap(), Some(g));
    if let Store::Sqlite(pool) = &again {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(pool).await.unwrap();
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(pool).await.unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2), "WAL with synchronous=FULL");
    }
    again.close().await;
}

#[tokio::test]
async fn open_rejects_unknown_urls() {
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open(Some("mysql://u:secret@h/db"), dir.path(), 1).await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("unsupported") && !msg.contains("secret"), "{msg}");
}

#[test]
fn with_database_replaces_the_name() {
    assert_eq!(with_database("postgres://u:p@h:5432/holdfast", "x"), "postgres://u:p@h:5432/x");
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    // The tests' database names are plain identifiers.
    assert!(sqlx::postgres::PgConnectOptions::from_str(&with_database(
        "postgres://h/a",
        "holdfast_test_00ff"
    ))
    .is_ok());
}
