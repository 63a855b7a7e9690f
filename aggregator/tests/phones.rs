//! Direct phones against the real aggregator (in the test's process; the SIGTERM test starts the
//! binary), on the embedded SQLite store and on a real Postgres: bytes persisted exactly, the
//! phone told what is durable, bad input refused clearly without disturbing anyone else.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::clients::{phone, tls, wait_durable, websocket};
use support::db::Kind;
use support::process::device_token;
use support::process::Aggregator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn phone_bytes_are_persisted_and_confirmed(kind: Kind) {
    let Some(agg) = Aggregator::in_process(kind, &[]).await else { return };
    let mut ws = phone(agg.addr, agg.data_dir(), "phone-1").await;
    for _ in 0..50 {
        ws.send(Message::binary(vec![7u8])).await.unwrap();
    }
    ws.send(Message::text("0123456789")).await.unwrap();
    assert_eq!(wait_durable(&mut ws, 60).await, 60, "the phone is told exactly what it sent");
    let totals = agg.store().await.device_totals("phone-").await.unwrap();
    assert_eq!(totals, vec![("phone-1".to_owned(), 60)]);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn phone_bytes_are_persisted_and_confirmed_sqlite() {
    phone_bytes_are_persisted_and_confirmed(Kind::Sqlite).await;
}

#[tokio::test]
async fn phone_bytes_are_persisted_and_confirmed_postgres() {
    phone_bytes_are_persisted_and_confirmed(Kind::Postgres).await;
}

/// Phones that come, send and leave, again and again: their finished sessions are folded out of
/// the sessions table (the compactor, `--fold-after-s`), which ends up empty, while every
/// device's total stays exact across the folds.
async fn finished_sessions_are_folded(kind: Kind) {
    let args = ["--fold-after-s", "1", "--fold-interval-ms", "100", "--flush-interval-ms", "50"];
    let Some(agg) = Aggregator::in_process(kind, &args).await else { return };
    for round in 0..3 {
        // The round's five phones at once: each its own session of its device.
        let (addr, dir) = (agg.addr, agg.data_dir());
        futures_util::future::join_all((0..5u64).map(|i| async move {
            let mut ws = phone(addr, dir, &format!("fold-{i}")).await;
            ws.send(Message::binary(vec![1u8; i as usize + 1])).await.unwrap();
            assert_eq!(wait_durable(&mut ws, i + 1).await, i + 1);
            ws.close(None).await.unwrap();
        }))
        .await;
        let store = agg.store().await;
        let totals = store.device_totals("fold-").await.unwrap();
        let want: Vec<(String, u64)> = (0..5).map(|i| (format!("fold-{i}"), (round + 1) * (i + 1))).collect();
        assert_eq!(totals, want, "round {round}");
    }
    let store = agg.store().await;
    let rows = || async {
        // sessions_now: in PostgreSQL also the reports still in the journal (a session not yet
        // merged into its row is not folded either: counting `sessions` alone passed at once).
        let sql = "SELECT count(*) FROM sessions_now";
        match &store {
            aggregator::store::Store::Postgres(pool) => {
                sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await
            }
            aggregator::store::Store::Sqlite(pool) => sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await,
        }
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rows().await > 0 {
        assert!(std::time::Instant::now() < deadline, "{} session rows never folded", rows().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let want: Vec<(String, u64)> = (0..5).map(|i| (format!("fold-{i}"), 3 * (i + 1))).collect();
    assert_eq!(store.device_totals("fold-").await.unwrap(), want, "exact after folding");
    let metrics = support::clients::metrics_text(agg.addr, &agg.ca()).await;
    assert!(metrics.contains("holdfast_folded_sessions_total 15"), "{metrics}");
}

#[tokio::test]
async fn finished_sessions_are_folded_sqlite() {
    finished_sessions_are_folded(Kind::Sqlite).await;
}

#[tokio::test]
async fn finished_sessions_are_folded_postgres() {
    finished_sessions_are_folded(Kind::Postgres).await;
}

/// The first run of a new user: no flags but a port, nothing installed, in an empty folder.
#[tokio::test]
async fn with_no_configuration_it_runs_on_sqlite_and_a_self_made_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    let addr = loop {
        let mut line = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line).await.unwrap();
        out.push_str(&line);
        if let Some(rest) = line.strip_prefix("listening on https://") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        assert!(!line.is_empty(), "aggregator exited: {out}");
    };
    let data = dir.path().canonicalize().unwrap().join("holdfast-data");
    assert!(out.contains(&data.join("ca.pem").display().to_string()), "the CA path is printed: {out}");
    assert!(data.join("holdfast.db").exists());
    let mut ws = phone(addr, &data, "first-run").await;
    ws.send(Message::binary(vec![1u8; 3])).await.unwrap();
    assert_eq!(wait_durable(&mut ws, 3).await, 3);
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer_and_harms_no_other_session() {
    let Some(agg) =
        Aggregator::in_process(Kind::Sqlite, &["--handshake-timeout-ms", "500", "--max-phone-message", "64"])
            .await
    else {
        return;
    };
    // A healthy phone that lives through all of it.
    let mut healthy = phone(agg.addr, agg.data_dir(), "healthy").await;
    healthy.send(Message::binary(vec![1u8])).await.unwrap();

    // Oversized message: close 1009.
    let mut big = phone(agg.addr, agg.data_dir(), "big").await;
    big.send(Message::binary(vec![0u8; 65])).await.unwrap();
    let close = loop {
        match big.next().await {
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Size);

    // A trunk without the subprotocol: 400 with the reason.
    let err = websocket(agg.addr, &agg.ca(), "/trunk", None).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => {
            assert_eq!(r.status(), 400);
            let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("trunk.v1"), "{body}");
        }
        other => panic!("{other:?}"),
    }

    // A plain GET on /ws: 426, not a hang.
    let mut s = tls(agg.addr, &agg.ca()).await;
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = vec![0u8; 256];
    let n = s.read(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 426"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );

    // A device id that is too long: 400.
    let err =
        websocket(agg.addr, &agg.ca(), &format!("/ws?device={}", "x".repeat(40)), None).await.unwrap_err();
    assert!(matches!(err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 400));

    // A slow handshake (TCP, then silence), and garbage instead of TLS: both closed by the server.
    let mut slow = tokio::net::TcpStream::connect(agg.addr).await.unwrap();
    let mut garbage = tokio::net::TcpStream::connect(agg.addr).await.unwrap();
    garbage.write_all(b"\x16\x03\x01\x00\x05hello world, not tls").await.unwrap();
    for s in [&mut slow, &mut garbage] {
        let mut b = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server closes a silent or garbage connection");
    }

    // The healthy phone never noticed.
    healthy.send(Message::binary(vec![1u8; 2])).await.unwrap();
    assert_eq!(wait_durable(&mut healthy, 3).await, 3);

    let metrics = support::clients::metrics_text(agg.addr, &agg.ca()).await;
    for reason in ["message too large", "websocket subprotocol trunk.v1 required", "handshake timeout"] {
        assert!(metrics.contains(reason), "metric for {reason:?} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn sigterm_closes_phones_with_1001_flushes_and_exits_zero() {
    let Some(mut agg) = Aggregator::start(Kind::Sqlite, &["--shutdown-grace-ms", "1000"]).await else {
        return;
    };
    let mut ws = phone(agg.addr, agg.data_dir(), "leaving").await;
    ws.send(Message::binary(vec![1u8; 4])).await.unwrap();
    // Let the bytes reach the server, not necessarily the database.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = agg.terminate();
        (s, agg)
    });
    let close = loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    let (status, agg) = status.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    let totals = agg.store().await.device_totals("leaving").await.unwrap();
    assert_eq!(totals, vec![("leaving".to_owned(), 4)], "the final flush wrote what the phone sent");
}

#[tokio::test]
async fn beyond_the_admission_limit_a_phone_gets_503() {
    let Some(agg) = Aggregator::in_process(Kind::Sqlite, &["--max-phones", "1"]).await else { return };
    let mut first = phone(agg.addr, agg.data_dir(), "first").await;
    let second = format!("/ws?device=second&token={}", device_token(agg.data_dir(), "second"));
    let err = websocket(agg.addr, &agg.ca(), &second, None).await.unwrap_err();
    assert!(matches!(err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 503));
    // The admitted phone is served as usual.
    first.send(Message::binary(vec![1u8; 5])).await.unwrap();
    assert_eq!(wait_durable(&mut first, 5).await, 5);
}

/// A phone proves which device it is: without a token, with another device's, with a forged or
/// an expired one it is refused with 401 and a reason, before it takes a place; with its own it
/// counts. Tokens issued by `aggregator device token` work; `--phone-auth off` believes phones.
#[tokio::test]
async fn a_phone_needs_a_token_for_its_own_device() {
    let Some(agg) = Aggregator::in_process(Kind::Sqlite, &[]).await else { return };
    let refused = |path: String| {
        let (addr, ca) = (agg.addr, agg.ca());
        async move {
            match websocket(addr, &ca, &path, None).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                    let body = String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
                    (r.status().as_u16(), body)
                }
                other => panic!("{path}: expected a refusal, got {other:?}"),
            }
        }
    };
    let theirs = device_token(agg.data_dir(), "theirs");
    let (status, body) = refused("/ws?device=mine".into()).await;
    assert_eq!((status, body.trim()), (401, "a device token is required (?token=)"));
    let (status, body) = refused(format!("/ws?device=mine&token={theirs}")).await;
    assert_eq!((status, body.trim()), (401, "the device token is not valid for this device"));
    let (status, _) = refused(format!("/ws?token={theirs}")).await;
    assert_eq!(status, 401, "no device id");
    // Signed by another key (a gateway's, say): refused.
    let forged = device_token::SigningKey::generate().token(b"mine", u64::MAX / 2).unwrap();
    let (status, _) = refused(format!("/ws?device=mine&token={forged}")).await;
    assert_eq!(status, 401);
    // Expired.
    let key = std::fs::read_to_string(agg.data_dir().join("device-token.key")).unwrap();
    let expired = device_token::SigningKey::from_hex(&key).unwrap().token(b"mine", 1_000_000_000).unwrap();
    let (status, body) = refused(format!("/ws?device=mine&token={expired}")).await;
    assert_eq!((status, body.trim()), (401, "the device token expired"));

    // Issued by the command line, for the same data folder: accepted, and counted.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .arg("--data-dir")
        .arg(agg.data_dir())
        .args(["device", "token", "mine"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    let token = line.trim().strip_prefix("mine ").expect("DEVICE TOKEN");
    let mut ws =
        websocket(agg.addr, &agg.ca(), &format!("/ws?device=mine&token={token}"), None).await.unwrap();
    ws.send(Message::binary(vec![1u8; 4])).await.unwrap();
    assert_eq!(wait_durable(&mut ws, 4).await, 4);
    let metrics = support::clients::metrics_text(agg.addr, &agg.ca()).await;
    assert!(metrics.contains("the device token is not valid for this device"), "refusals are counted");
    assert_eq!(agg.store().await.device_totals("mine").await.unwrap(), vec![("mine".to_owned(), 4)]);

    let Some(open) = Aggregator::in_process(Kind::Sqlite, &["--phone-auth", "off"]).await else { return };
    let mut ws = websocket(open.addr, &open.ca(), "/ws?device=anyone", None).await.expect("believed");
    ws.send(Message::binary(vec![1u8; 2])).await.unwrap();
    assert_eq!(wait_durable(&mut ws, 2).await, 2);
}

/// A raw HTTPS request (`METHOD /api/enrol` with these header lines); the status and the body.
async fn https(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    method: &str,
    headers: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tls(addr, ca).await;
    let request = format!(
        "{method} /api/enrol HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n{headers}\r\n"
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.ok();
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// `--enrolment-code`: whoever shows the code gets a new device of their own and its token, which
/// a phone then uses; never an existing device (each answer names a fresh random one). A wrong
/// or missing code gets 401 and is counted; without the setting the endpoint is not there.
#[tokio::test]
async fn the_enrolment_code_gets_a_phone_a_new_device_of_its_own() {
    const CODE: &str = "enrol-0123456789abcdef";
    let Some(agg) = Aggregator::in_process(Kind::Sqlite, &["--enrolment-code", CODE]).await else { return };
    let (ca, addr) = (agg.ca(), agg.addr);
    assert_eq!(https(addr, &ca, "POST", "").await, (401, "wrong enrolment code\n".into()));
    let wrong = https(addr, &ca, "POST", "Authorization: Bearer enrol-0123456789abcdeX\r\n").await;
    assert_eq!(wrong, (401, "wrong enrolment code\n".into()));
    assert_eq!(https(addr, &ca, "GET", &format!("Authorization: Bearer {CODE}\r\n")).await.0, 405);
    let mut devices = Vec::new();
    for _ in 0..2 {
        let (status, body) = https(addr, &ca, "POST", &format!("Authorization: Bearer {CODE}\r\n")).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let (device, token) =
            (v["device"].as_str().unwrap().to_owned(), v["token"].as_str().unwrap().to_owned());
        assert!(device.starts_with("web-") && device.len() == 28, "{device}");
        assert!(v["expires"].as_u64().unwrap() > 1_800_000_000);
        let mut ws = websocket(addr, &ca, &format!("/ws?device={device}&token={token}"), None).await.unwrap();
        ws.send(Message::binary(vec![1u8; 3])).await.unwrap();
        assert_eq!(wait_durable(&mut ws, 3).await, 3);
        devices.push(device);
    }
    assert_ne!(devices[0], devices[1], "every enrolment is a new device");
    let metrics = support::clients::metrics_text(addr, &ca).await;
    assert!(metrics.contains("bad enrolment code"), "refusals are counted");

    // Paced: --enrolments-per-minute 3 answers three requests (right or wrong code) at once, then
    // 429 with the reason (and Retry-After), for the right code too.
    let args = ["--enrolment-code", CODE, "--enrolments-per-minute", "3"];
    let Some(paced) = Aggregator::in_process(Kind::Sqlite, &args).await else { return };
    let bearer = format!("Authorization: Bearer {CODE}\r\n");
    assert_eq!(https(paced.addr, &paced.ca(), "POST", "").await.0, 401);
    for _ in 0..2 {
        assert_eq!(https(paced.addr, &paced.ca(), "POST", &bearer).await.0, 200);
    }
    let (status, body) = https(paced.addr, &paced.ca(), "POST", &bearer).await;
    assert_eq!((status, body.as_str()), (429, "too many enrolments (--enrolments-per-minute)\n"));
    let metrics = support::clients::metrics_text(paced.addr, &paced.ca()).await;
    assert!(metrics.contains("enrolment rate"), "counted:\n{metrics}");

    // Off unless set; and a code too short to guard anything is refused at start.
    let Some(off) = Aggregator::in_process(Kind::Sqlite, &[]).await else { return };
    let (status, body) =
        https(off.addr, &off.ca(), "POST", &format!("Authorization: Bearer {CODE}\r\n")).await;
    assert_eq!((status, body.as_str()), (404, "enrolment is off (--enrolment-code)\n"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aggregator"))
        .arg("--data-dir")
        .arg(off.data_dir())
        .args(["--enrolment-code", "short", "--listen", "127.0.0.1:0"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 characters"));
}
