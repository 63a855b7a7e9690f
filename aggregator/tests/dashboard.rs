//! The dashboard's data and the pages, over HTTP against the real aggregator process: who may read
//! it, what the event stream sends, and that its trunk session count stays exact when a gateway
//! replays its reports on another link. (The pages in a real browser: tests/browser.rs.)

mod support;

use std::time::Duration;

use support::clients::{tls, TestGateway};
use support::db::Kind;
use support::process::Aggregator;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use trunk::frame::CloseReason;
use trunk::gateway::LinkPhase;

/// One HTTP/1.1 exchange on `stream` (`Connection: close`): status, head (lower-case) and body.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    bearer: Option<&str>,
) -> (u16, String, String) {
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

async fn get(agg: &Aggregator, path: &str, bearer: Option<&str>) -> (u16, String, String) {
    exchange(tls(agg.addr, &agg.ca()).await, path, bearer).await
}

async fn snapshot(agg: &Aggregator, token: Option<&str>) -> serde_json::Value {
    let (status, _, body) = get(agg, "/api/dashboard", token).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Now, in Unix milliseconds: the clock the aggregator stamps its snapshots with (`t`), on the
/// same machine.
fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Waits (the sampler takes a snapshot a second) until `check` holds for a snapshot.
async fn wait_snapshot(
    agg: &Aggregator,
    token: Option<&str>,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let snap = snapshot(agg, token).await;
        if check(&snap) {
            return snap;
        }
        assert!(tokio::time::Instant::now() < deadline, "no snapshot with {what} in 30 s; last: {snap}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn pages_are_served_and_the_data_needs_the_token() {
    let Some(agg) =
        Aggregator::in_process(Kind::Sqlite, &["--dashboard-token", "tok-123", "--dashboard-streams", "1"])
            .await
    else {
        return;
    };
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/dashboard", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/style.css", "text/css"),
    ] {
        let (status, head, body) = get(&agg, path, None).await;
        assert_eq!(status, 200, "{path}");
        assert!(head.contains(&format!("content-type: {kind}")), "{path}: {head}");
        assert!(head.contains("content-security-policy: default-src 'self'"), "{path}: {head}");
        assert!(!body.is_empty());
    }
    assert_eq!(get(&agg, "/nope", None).await.0, 404);

    for path in ["/api/dashboard", "/api/dashboard/events", "/api/devices"] {
        let (status, head, _) = get(&agg, path, None).await;
        assert_eq!(status, 401, "{path} without the token");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        assert_eq!(get(&agg, &format!("{path}?token=tok-12"), None).await.0, 401, "{path}, a wrong token");
    }
    assert_eq!(get(&agg, "/api/devices?token=tok-123", None).await.0, 200);
    // A bearer token works as well as ?token=.
    let snap = wait_snapshot(&agg, Some("tok-123"), "a first sample", |s| s["point"].is_object()).await;
    assert_eq!(snap["store"], "sqlite");
    assert_eq!(snap["sessions"]["direct"], 0);

    // The event stream: a retry hint, the history, then snapshots; one stream at a time here.
    let mut stream = tls(agg.addr, &agg.ca()).await;
    stream
        .write_all(b"GET /api/dashboard/events?token=tok-123 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !(seen.contains("event: history") && seen.matches("\ndata: {\"t\":").count() >= 2) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.to_ascii_lowercase().contains("content-type: text/event-stream"), "{seen}");
    assert!(seen.contains("retry: 2000"), "{seen}");
    let (status, _, _) = get(&agg, "/api/dashboard/events?token=tok-123", None).await;
    assert_eq!(status, 503, "--dashboard-streams 1");
    drop(stream);
}

/// Without --dashboard-token the aggregator makes one for the run and prints the dashboard's
/// address with it; the data needs it on every listener, loopback with TLS included (behind a
/// TLS-passthrough proxy a loopback listener serves the world).
#[tokio::test]
async fn without_a_given_token_one_is_made_and_printed_and_required() {
    for extra in [&[][..], &["--plain"][..]] {
        let Some(agg) = Aggregator::in_process(Kind::Sqlite, extra).await else { return };
        assert_eq!(agg.token().len(), 32, "{extra:?}: a token made for the run, printed");
        let request = |path: &str, bearer: Option<String>| {
            let (addr, ca, plain, path) = (agg.addr, agg.ca(), !extra.is_empty(), path.to_owned());
            async move {
                if plain {
                    exchange(tokio::net::TcpStream::connect(addr).await.unwrap(), &path, bearer.as_deref())
                        .await
                } else {
                    exchange(tls(addr, &ca).await, &path, bearer.as_deref()).await
                }
            }
        };
        for path in ["/api/dashboard", "/api/devices"] {
            let (status, _, body) = request(path, None).await;
            assert_eq!(status, 401, "{extra:?} {path}: {body}");
        }
        assert_eq!(request("/api/dashboard", Some(agg.token().to_owned())).await.0, 200, "{extra:?}");
        assert_eq!(request(&format!("/api/devices?token={}", agg.token()), None).await.0, 200, "{extra:?}");
        assert_eq!(request("/", None).await.0, 200, "the phone page itself is public");
    }
}

#[tokio::test]
async fn a_browser_idle_connection_is_not_a_refusal() {
    let Some(agg) = Aggregator::in_process(Kind::Sqlite, &["--handshake-timeout-ms", "300"]).await else {
        return;
    };
    // A request on a kept-alive connection, then silence until the server closes it.
    let mut s = tls(agg.addr, &agg.ca()).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await.unwrap().ok();
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
    // A connection that never sends a request is still refused (slow or idle handshake).
    let mut silent = tls(agg.addr, &agg.ca()).await;
    let mut b = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), silent.read(&mut b)).await.unwrap().ok();
    let snap = wait_snapshot(&agg, Some(agg.token()), "the silent connection refused", |s| {
        s["refused"]["total"] == 1
    })
    .await;
    assert_eq!(snap["refused"]["by_reason"], serde_json::json!({"handshake timeout": 1}));
}

#[tokio::test]
async fn trunk_sessions_are_counted_once_through_replays_on_another_link() {
    // Commits once a second: the opens below are sent and their link cut long before one.
    let Some(agg) = Aggregator::in_process(Kind::Sqlite, &["--flush-interval-ms", "1000"]).await else {
        return;
    };
    let secret = agg.add_gateway("site-a");
    let mut gw = TestGateway::new(agg.addr, &agg.ca(), b"site-a", &secret, 200, 2);
    assert!(gw.connect(0).await);
    gw.pump_until(Duration::from_secs(30), |g| g.link_phase(0) == LinkPhase::Up).await;
    let ids: Vec<_> = (0..200).map(|i| gw.gw.open(Some(format!("d-{i}").as_bytes())).unwrap()).collect();
    for id in &ids {
        gw.gw.record(*id, 2).unwrap();
    }
    // One step sends the opens and counts on link 0; then it is cut, unacknowledged, and link 1
    // replays them all.
    gw.pump(Duration::from_millis(1), false).await;
    gw.drop_link(0);
    assert!(gw.connect(1).await);
    gw.pump_until(Duration::from_secs(30), |g| ids.iter().all(|id| g.durable(*id) == Some(2))).await;

    // The test is worth something only if opens were in fact replayed: first prove that, then
    // read a snapshot the sampler took after the proof. A snapshot taken earlier could predate
    // the replays (link 0's opens alone already make 200 sessions) and pass with replays
    // counted twice.
    let (_, _, metrics) = get(&agg, "/metrics", None).await;
    let received: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("holdfast_trunk_sessions_opened_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the opens counter");
    assert!(received > 200, "opens received, replays included: {received}");
    // Every session is durable, so every replay was handled (the aggregator acknowledges a
    // message's reports only after the same task has passed them to the dashboard's state):
    // a sample taken from now on includes them all.
    let replayed_by = unix_ms();
    let snap = wait_snapshot(&agg, Some(agg.token()), "200 trunk sessions, sampled after the replays", |s| {
        s["t"].as_u64().is_some_and(|t| t > replayed_by) && s["sessions"]["trunk"] == 200
    })
    .await;
    let g = &snap["gateways"][0];
    assert_eq!(g["name"], "site-a");
    assert_eq!(g["sessions"], 200);
    assert_eq!(g["opened"], 200, "replayed opens count once");
    assert_eq!(snap["gateways_total"], 1);

    for id in &ids[..50] {
        gw.gw.close(*id, CloseReason::NORMAL).unwrap();
    }
    gw.pump_until(Duration::from_secs(30), |g| g.live_sessions() == 150).await;
    let snap =
        wait_snapshot(&agg, Some(agg.token()), "150 trunk sessions", |s| s["sessions"]["trunk"] == 150).await;
    assert_eq!(snap["gateways"][0]["closed"], 50);
    assert_eq!(snap["sessions"]["gateways_up"], 1);
}
