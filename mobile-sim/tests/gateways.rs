//! `mobile-sim gateways` against a small trunk server built in this test from the real protocol
//! implementation (`trunk::server::Handshake`, `ServerLink`, `trunk::ledger::Ledger`) over plain
//! ws://, committing to an in-memory table on a timer, as the aggregator will to its database.
//! Every session's persisted total must equal what mobile-sim says it sent and had confirmed.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use trunk::frame::{AckEntry, NONCE_LEN, PATH, SUBPROTOCOL};
use trunk::ledger::{Ledger, LedgerSlot, SessionKey};
use trunk::server::{self, Handshake, ServerConfig};

/// A committed row: what the aggregator's database holds for a session.
#[derive(Debug, Default, Clone)]
struct Row {
    device: Option<String>,
    total: u64,
    closed: bool,
}

struct Aggregator {
    start: Instant,
    config: ServerConfig,
    ledger: Ledger<Vec<LedgerSlot>>,
    db: HashMap<SessionKey, Row>,
    routes: HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>,
    next_route: u32,
    /// Gateway name -> (secret, number).
    gateways: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    refused: u64,
}

impl Aggregator {
    fn now(&self) -> trunk::time::Instant {
        trunk::time::Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    /// One commit: the ledger's dirty rows go to the table (keeping the larger total, as
    /// `GREATEST` does), then their acknowledgements go out on the links they came from.
    fn commit(&mut self) {
        let now = self.now();
        let Self { ledger, db, routes, config, .. } = self;
        let mut keys = vec![SessionKey { gateway: 0, boot_epoch: 0, session: 0 }; ledger.ready()];
        let flight = ledger.begin_flush(&mut keys, now);
        for row in ledger.rows(&flight) {
            let r = db.entry(row.key).or_default();
            r.total = r.total.max(row.total);
            if let Some(device) = row.device {
                r.device = Some(String::from_utf8(device.to_vec()).unwrap());
            }
            r.closed |= row.closed.is_some();
        }
        let mut acks: HashMap<u32, Vec<AckEntry>> = HashMap::new();
        ledger.commit_succeeded(flight, |route, _key, entry| acks.entry(route).or_default().push(entry));
        let mut buf = vec![0u8; config.max_message_len];
        for (route, entries) in acks {
            let Some(tx) = routes.get(&route) else { continue };
            let mut iter = entries.into_iter().peekable();
            loop {
                let n = server::write_acks(&mut iter, &mut buf, config);
                if n == 0 {
                    break;
                }
                let _ = tx.send(buf[..n].to_vec());
            }
        }
    }
}

/// Accepts trunk links on `listener` (over TLS with `tls`) and commits every 50 ms.
fn start_aggregator(
    listener: TcpListener,
    gateways: &[(String, Vec<u8>)],
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Arc<Mutex<Aggregator>> {
    let agg = Arc::new(Mutex::new(Aggregator {
        start: Instant::now(),
        config: ServerConfig::default(),
        ledger: Ledger::new(vec![LedgerSlot::EMPTY; 1 << 16], rand::random()),
        db: HashMap::new(),
        routes: HashMap::new(),
        next_route: 1,
        gateways: gateways
            .iter()
            .enumerate()
            .map(|(i, (name, secret))| (name.as_bytes().to_vec(), (secret.clone(), i as u32 + 1)))
            .collect(),
        refused: 0,
    }));
    let committer = agg.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            committer.lock().unwrap().commit();
        }
    });
    let acceptor = agg.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let agg = acceptor.clone();
            match tls.clone() {
                None => drop(tokio::spawn(serve_link(stream, agg))),
                Some(tls) => drop(tokio::spawn(async move {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve_link(stream, agg).await;
                    }
                })),
            }
        }
    });
    agg
}

// The handshake callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn serve_link<S>(stream: S, agg: Arc<Mutex<Aggregator>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        assert_eq!(request.uri().path(), PATH, "gateways connect to /trunk");
        let offered = request.headers().get("Sec-WebSocket-Protocol").and_then(|v| v.to_str().ok());
        assert_eq!(offered, Some(SUBPROTOCOL), "gateways ask for the trunk.v1 subprotocol");
        response.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(SUBPROTOCOL));
        Ok(response)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };
    let (mut sink, mut stream) = ws.split();
    let mut buf = vec![0u8; 64 * 1024];
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    let (config, now) = {
        let a = agg.lock().unwrap();
        (a.config, a.now())
    };
    let handshake = Handshake::new(nonce, now);
    let n = handshake.challenge(&mut buf).unwrap();
    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
        return;
    }
    let Some(Ok(Message::Binary(first))) = stream.next().await else { return };
    let hello = handshake.hello(&first, &config).expect("the first message is a hello");
    let verified = {
        let a = agg.lock().unwrap();
        let known = a.gateways.get(hello.gateway_id).cloned();
        let secret = known.as_ref().map(|(s, _)| s.as_slice());
        let number = known.as_ref().map_or(0, |(_, n)| *n);
        handshake.verify(&hello, secret, number, a.now())
    };
    let mut link = match verified {
        Ok(link) => link,
        Err(e) => {
            agg.lock().unwrap().refused += 1;
            let n = server::write_refuse(e.refuse_code(), e.reason(), &mut buf).unwrap();
            let _ = sink.send(Message::binary(buf[..n].to_vec())).await;
            let _ = sink.close().await;
            return;
        }
    };
    let (tx, mut acks) = mpsc::unbounded_channel::<Vec<u8>>();
    let route = {
        let mut a = agg.lock().unwrap();
        let route = a.next_route;
        a.next_route += 1;
        a.routes.insert(route, tx);
        route
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        // The link's own messages (welcome, pongs).
        let own = {
            let now = agg.lock().unwrap().now();
            link.poll_transmit(now, &config, &mut buf).expect("the gateway keeps its link alive")
        };
        if let Some(n) = own {
            if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                break;
            }
            continue;
        }
        tokio::select! {
            message = stream.next() => match message {
                Some(Ok(Message::Binary(data))) => {
                    let mut a = agg.lock().unwrap();
                    let now = a.now();
                    let Aggregator { ledger, config, .. } = &mut *a;
                    link.handle_message(&data, now, config, ledger, route).expect("the gateway speaks the protocol");
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            Some(message) = acks.recv() => {
                if sink.send(Message::binary(message)).await.is_err() {
                    break;
                }
            }
            _ = tick.tick() => {}
        }
    }
    agg.lock().unwrap().routes.remove(&route);
}

fn gateways(count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count).map(|i| (format!("gw-{i:02}"), (0..32).map(|_| rand::random::<u8>()).collect())).collect()
}

fn gateways_file(dir: &std::path::Path, gateways: &[(String, Vec<u8>)]) -> std::path::PathBuf {
    let path = dir.join("gateways.txt");
    let mut text = String::from("# NAME HEXSECRET, as printed by `aggregator gateway add`\n");
    for (name, secret) in gateways {
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        text.push_str(&format!("{name} {hex}\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

async fn run_gateways(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_mobile-sim"))
        .arg("gateways")
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .expect("mobile-sim runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_gateways_of_500_sessions_persist_exact_totals() {
    const GATEWAYS: usize = 20;
    const SESSIONS: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let provisioned = gateways(GATEWAYS);
    let file = gateways_file(dir.path(), &provisioned);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let agg = start_aggregator(listener, &provisioned, None);
    let csv = dir.path().join("devices.csv");
    let output = run_gateways(&[
        "--target",
        &format!("ws://127.0.0.1:{port}"),
        "--gateways-file",
        file.to_str().unwrap(),
        "--sessions-per-gateway",
        &SESSIONS.to_string(),
        "--links",
        "2",
        "--flush-interval",
        "50ms",
        "--min-interval",
        "100ms",
        "--max-interval",
        "600ms",
        "--duration",
        "4s",
        "--device-prefix",
        "t-",
        "--json",
        "--per-device",
        csv.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "exit status {:?}", output.status);
    let r = common::report(&output);
    assert_eq!(r["mode"], "gateways");
    assert_eq!(r["devices"], (GATEWAYS * SESSIONS) as u64);
    assert_eq!(r["gateways"], GATEWAYS as u64);
    assert_eq!(r["connections"]["established"], (GATEWAYS * 2) as u64, "two links per gateway, none lost");
    assert_eq!(r["errors"].as_object().unwrap().len(), 0, "errors: {}", r["errors"]);
    let sent = r["bytes"]["sent"].as_u64().unwrap();
    assert!(sent > (GATEWAYS * SESSIONS * 3) as u64, "sessions sent only {sent} bytes");
    assert_eq!(r["bytes"]["durable"], sent);
    assert_eq!(r["bytes"]["unconfirmed"], 0);

    // Give the last commit a moment (acknowledged closes were committed before they were
    // acknowledged, so this only settles the test's own bookkeeping).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = agg.lock().unwrap();
    let mut persisted: HashMap<String, (u64, bool)> = HashMap::new();
    for row in a.db.values() {
        let device = row.device.clone().expect("every session opened with its device id");
        let e = persisted.entry(device).or_default();
        e.0 += row.total;
        e.1 |= row.closed;
    }
    assert_eq!(a.db.len(), GATEWAYS * SESSIONS, "one session per device");
    let ours = common::read_per_device(&csv);
    assert_eq!(ours.len(), GATEWAYS * SESSIONS);
    assert!(ours.contains_key("t-gw-00-0") && ours.contains_key("t-gw-19-499"));
    let mut wrong = Vec::new();
    for (device, &(sent, durable)) in &ours {
        let (total, closed) = persisted.get(device).copied().unwrap_or_default();
        if total != sent || durable != sent || !closed {
            wrong.push(format!("{device}: sent {sent} durable {durable} persisted {total} closed {closed}"));
        }
    }
    assert!(wrong.is_empty(), "{} sessions differ, e.g. {:?}", wrong.len(), &wrong[..wrong.len().min(5)]);
    assert_eq!(a.refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_the_wrong_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let provisioned = gateways(1);
    let mut wrong = provisioned.clone();
    wrong[0].1[0] ^= 0xff;
    let file = gateways_file(dir.path(), &wrong);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let agg = start_aggregator(listener, &provisioned, None);
    let output = run_gateways(&[
        "--target",
        &format!("ws://127.0.0.1:{port}/trunk"),
        "--gateways-file",
        file.to_str().unwrap(),
        "--sessions-per-gateway",
        "10",
        "--min-interval",
        "10ms",
        "--max-interval",
        "50ms",
        "--duration",
        "1500ms",
        "--drain-timeout",
        "500ms",
        "--json",
    ])
    .await;
    assert_eq!(output.status.code(), Some(1), "a run whose every trunk is refused must fail");
    let r = common::report(&output);
    let rules: Vec<&str> =
        r["failures"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["all-connected", "failed-connections"], "report: {r}");
    assert!(r["errors"]["trunk refused"].as_u64().unwrap() >= 1, "errors: {}", r["errors"]);
    assert!(r["error_examples"]["trunk refused"].as_str().unwrap().contains("code 2"), "bad proof");
    assert_eq!(r["bytes"]["durable"], 0);
    assert!(r["bytes"]["sent"].as_u64().unwrap() > 0);
    assert!(agg.lock().unwrap().refused >= 1);
    assert!(agg.lock().unwrap().db.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_over_tls_with_the_pinned_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = testkit::pki::TestCa::new("trunk");
    let ca_file = dir.path().join("trunk-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (_, config) = ca.rustls_configs(&["localhost", "127.0.0.1"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let provisioned = gateways(5);
    let file = gateways_file(dir.path(), &provisioned);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let agg = start_aggregator(listener, &provisioned, Some(acceptor));
    let csv = dir.path().join("devices.csv");
    let output = run_gateways(&[
        "--target",
        &format!("wss://localhost:{port}/trunk"),
        "--ca",
        ca_file.to_str().unwrap(),
        "--gateways-file",
        file.to_str().unwrap(),
        "--sessions-per-gateway",
        "100",
        "--links",
        "3",
        "--rate",
        "1000",
        "--flush-interval",
        "50ms",
        "-M",
        "4",
        "--min-interval",
        "50ms",
        "--max-interval",
        "200ms",
        "--json",
        "--per-device",
        csv.to_str().unwrap(),
    ])
    .await;
    assert!(output.status.success(), "exit status {:?}", output.status);
    let r = common::report(&output);
    assert_eq!(r["end"], "messages");
    assert_eq!(r["connections"]["established"], 15);
    assert_eq!(r["bytes"]["sent"], 5 * 100 * 4);
    assert_eq!(r["bytes"]["durable"], 5 * 100 * 4);
    let a = agg.lock().unwrap();
    assert_eq!(a.db.len(), 500);
    assert!(a.db.values().all(|row| row.total == 4 && row.closed));
    let ours = common::read_per_device(&csv);
    assert!(ours.values().all(|&(sent, durable)| sent == 4 && durable == 4));
}
