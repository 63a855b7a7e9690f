//! `--workers N`: several processes share the port, so one machine holds more connections than
//! one process may open files.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::SinkExt;
use support::clients::{phone, tls, wait_durable};
use support::db::Kind;
use support::process::Aggregator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// `/api/dashboard` on a new connection: the latest snapshot of whichever worker the kernel
/// handed that connection to (each worker samples only its own connections and names itself in
/// `worker`).
async fn some_workers_snapshot(agg: &Aggregator) -> serde_json::Value {
    let mut s = tls(agg.addr, &agg.ca()).await;
    let request = format!(
        "GET /api/dashboard HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        agg.token()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn two_workers_share_the_port_and_stop_together() {
    let port = {
        // A free port: SO_REUSEPORT needs one fixed port for every worker.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let Some(mut agg) = Aggregator::start_at(Kind::Sqlite, &["--workers", "2"], port).await else { return };
    let children =
        std::fs::read_to_string(format!("/proc/{}/task/{}/children", agg.pid(), agg.pid())).unwrap();
    assert_eq!(children.split_whitespace().count(), 2, "two worker processes");
    let mut phones = Vec::new();
    for i in 0..40 {
        let mut ws = phone(agg.addr, agg.data_dir(), &format!("w-{i:02}")).await;
        ws.send(Message::binary(vec![1u8; 2])).await.unwrap();
        phones.push(ws);
    }
    for ws in &mut phones {
        assert_eq!(wait_durable(ws, 2).await, 2);
    }
    let totals = agg.store().await.device_totals("w-").await.unwrap();
    assert_eq!(totals.len(), 40);
    assert!(totals.iter().all(|(_, b)| *b == 2));

    // Sharing the port means both workers served phones: the kernel spreads new connections over
    // the workers' sockets (40 phones all on one worker: a chance of 2^-39). The phones above
    // cannot tell which worker they reached, so ask each worker: new connections to
    // /api/dashboard reach both, and each answers with its own figures. Together they must
    // account for every phone exactly once, and each for at least one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut latest: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    loop {
        let snap = some_workers_snapshot(&agg).await;
        if let Some(worker) = snap["worker"].as_u64() {
            assert!(worker < 2, "worker {worker} of 2: {snap}");
            latest.insert(worker, snap);
        }
        let figure = |worker: u64, field: &str, name: &str| {
            latest.get(&worker).and_then(|s| s[field][name].as_u64()).unwrap_or(0)
        };
        let (phones_0, phones_1) = (figure(0, "sessions", "direct"), figure(1, "sessions", "direct"));
        let (bytes_0, bytes_1) = (figure(0, "totals", "phone_bytes"), figure(1, "totals", "phone_bytes"));
        if phones_0 >= 1 && phones_1 >= 1 && phones_0 + phones_1 == 40 && bytes_0 + bytes_1 == 80 {
            assert_eq!(
                (bytes_0, bytes_1),
                (2 * phones_0, 2 * phones_1),
                "each phone's 2 bytes on its worker"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "in 30 s, no sign that both workers served phones (each at least one, 40 in all); \
             phones held by worker 0: {phones_0}, worker 1: {phones_1}; \
             bytes: {bytes_0}, {bytes_1}; workers heard from: {:?}",
            latest.keys().collect::<Vec<_>>()
        );
        // A worker samples once a second; its snapshot may predate the last phones.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let status = tokio::task::spawn_blocking(move || agg.terminate()).await.unwrap();
    assert!(status.success(), "{status:?}");
}
