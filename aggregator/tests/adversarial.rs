//! Attacks on the real aggregator (in the test's process), each refused, counted in the metrics,
//! without a byte counted for the attacker and without harm to a healthy client that runs
//! alongside.
//!
//! This file holds the attacks on places and time (per-address bounds, idle phones); the rest of
//! the suite lives next to the feature each attack targets, and docs/SECURITY.md ("The
//! adversarial suite") lists every test by attack.
//!
//! Clients play different machines by connecting from different loopback addresses (any
//! 127.x.y.z is this machine); the aggregator counts loopback by default only when told to
//! (`--address-limit-exempt` with no value).

mod support;

use std::net::IpAddr;
use std::time::Duration;

use futures_util::SinkExt;
use support::clients::{metrics_text, phone_from, tcp_from, wait_durable, websocket_from, TestGateway};
use support::db::Kind;
use support::process::Aggregator;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

/// Whether the server closes `tcp` (EOF or reset) within `within`, without a byte sent to it.
async fn closed_within(tcp: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 512];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// One machine opens connections that never finish their handshake, then phones, up to its
/// bounds: beyond them it is turned away at once (long before the handshake timeout), while a
/// phone from another machine connects and counts as if nothing happened.
#[tokio::test]
async fn one_address_cannot_take_every_place() {
    let args = [
        "--max-connections-per-address",
        "3",
        "--max-handshakes-per-address",
        "2",
        "--handshake-timeout-ms",
        "30000",
        "--address-limit-exempt",
    ];
    let Some(agg) = Aggregator::in_process(Kind::Sqlite, &args).await else { return };
    let (attacker, victim) = (ip("127.0.0.11"), ip("127.0.0.12"));

    // Two silent connections (no TLS hello): the attacker's handshake places are full.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(tcp_from(attacker, agg.addr).await.unwrap());
    }
    let mut third = tcp_from(attacker, agg.addr).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(5)).await,
        "a third handshake from one address is closed at once, not after the 30 s handshake timeout"
    );
    for s in &mut silent {
        assert!(!closed_within(s, Duration::from_millis(200)).await, "the first two are still waiting");
    }

    // Another machine is not affected.
    let mut healthy = phone_from(victim, agg.addr, agg.data_dir(), "healthy").await.unwrap();
    healthy.send(Message::binary(vec![1u8; 3])).await.unwrap();
    assert_eq!(wait_durable(&mut healthy, 3).await, 3);

    // Sessions no longer count as handshakes, but all connections do: three at most.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut admitted = Vec::new();
    for i in 0..3 {
        let device = format!("attacker-{i}");
        admitted.push(phone_from(attacker, agg.addr, agg.data_dir(), &device).await.expect("within bounds"));
    }
    let fourth = phone_from(attacker, agg.addr, agg.data_dir(), "attacker-3").await;
    assert!(fourth.is_err(), "a fourth connection from one address is refused: {:?}", fourth.map(|_| ()));
    // A session that ends gives its place back.
    drop(admitted.pop());
    let mut back = None;
    for _ in 0..50 {
        match phone_from(attacker, agg.addr, agg.data_dir(), "attacker-3").await {
            Ok(ws) => {
                back = Some(ws);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(back.is_some(), "a closed session's place is free again");

    healthy.send(Message::binary(vec![1u8; 2])).await.unwrap();
    assert_eq!(wait_durable(&mut healthy, 5).await, 5);
    // Fetched from 127.0.0.1, a third address with nothing open.
    let metrics = metrics_text(agg.addr, &agg.ca()).await;
    for reason in ["too many handshakes from one address", "too many connections from one address"] {
        assert!(metrics.contains(reason), "metric for {reason:?} missing:\n{metrics}");
    }
    let store = agg.store().await;
    assert!(store.device_totals("attacker-3").await.unwrap().iter().all(|(_, b)| *b == 0));
    assert_eq!(store.device_totals("healthy").await.unwrap(), vec![("healthy".to_owned(), 5)]);
}

/// Finding M2's rest: trunk connections that never authenticate, all from one address, take
/// at most `--max-handshakes-per-address` of the `--max-pending-trunks` places, so a real gateway
/// from elsewhere still gets in (before the per-address bound, they took all four: 503).
#[tokio::test]
async fn a_flood_of_trunk_handshakes_from_one_address_leaves_room_for_gateways() {
    let args = [
        "--max-pending-trunks",
        "4",
        "--max-handshakes-per-address",
        "2",
        "--handshake-timeout-ms",
        "30000",
        "--address-limit-exempt",
    ];
    let Some(agg) = Aggregator::in_process(Kind::Sqlite, &args).await else { return };
    let secret = agg.add_gateway("site-real");
    let flood = ip("127.0.0.21");
    let protocol = Some(trunk::frame::SUBPROTOCOL);
    // The flood: upgraded to /trunk, never a Hello, as many as it can.
    let mut silent = Vec::new();
    for _ in 0..6 {
        if let Ok(ws) = websocket_from(flood, agg.addr, &agg.ca(), "/trunk", protocol).await {
            silent.push(ws);
        }
    }
    assert_eq!(silent.len(), 2, "one address holds two handshakes at most");

    let mut gw = TestGateway::new(agg.addr, &agg.ca(), b"site-real", &secret, 10, 1);
    gw.source = ip("127.0.0.22");
    assert!(gw.connect(0).await, "the real gateway's connection is admitted");
    let id = gw.gw.open(Some(b"gw-device")).unwrap();
    gw.gw.record(id, 4).unwrap();
    gw.pump_until(Duration::from_secs(20), |g| g.durable(id) == Some(4)).await;
    assert_eq!(gw.refusals, 0, "the real gateway was never refused");
    let store = agg.store().await;
    assert_eq!(store.device_totals("gw-device").await.unwrap(), vec![("gw-device".to_owned(), 4)]);
    drop(silent);
}

/// Finding M7: a phone that only pings does not keep its place: idle means no byte counted. A
/// phone that sends bytes as often stays, and all of its bytes are counted.
#[tokio::test]
async fn a_phone_that_only_pings_is_closed_as_idle() {
    let Some(agg) = Aggregator::in_process(Kind::Sqlite, &["--phone-idle-timeout-ms", "1500"]).await else {
        return;
    };
    // The pinger's idle time runs from its upgrade, before the talker connects: counted from
    // before the pinger connects (on a busy machine the talker's handshake alone took 150 ms, and
    // timed from after it the close looked early).
    let connecting = std::time::Instant::now();
    let mut pinger = phone_from(None, agg.addr, agg.data_dir(), "pinger").await.unwrap();
    let mut talker = phone_from(None, agg.addr, agg.data_dir(), "talker").await.unwrap();
    let connected = connecting.elapsed();
    let every = Duration::from_millis(250);
    let pinged =
        testkit::phones::ping_and_talk(&mut pinger, &mut talker, every, Duration::from_secs(6)).await;
    assert!(pinged.closed, "the pinging phone was closed within 6 s (idle timeout 1.5 s): {pinged:?}");
    assert_eq!(pinged.close.map(|f| f.reason.to_string()).as_deref(), Some("idle timeout"));
    let idle = connected + pinged.after;
    assert!(idle >= Duration::from_millis(1400), "not before its idle timeout: {idle:?}");
    let sent = pinged.talked;
    assert_eq!(wait_durable(&mut talker, sent).await, sent, "the talking phone is still served");
    let store = agg.store().await;
    assert_eq!(store.device_totals("talker").await.unwrap(), vec![("talker".to_owned(), sent)]);
}

/// What the server sends `tcp` until it closes it (EOF or reset), if it does within `within`.
async fn answer_before_close(tcp: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    let mut b = [0u8; 512];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&b[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| answer)
}

/// The first flight of a real TLS 1.3 client of this aggregator: its ClientHello record.
fn client_hello(ca: &std::path::Path) -> Vec<u8> {
    let config = lean_tls::pinned::client_config(ca).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

/// The reason's count in `holdfast_refused_total` (0 if absent).
fn refused(metrics: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("holdfast_refused_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Broken TLS at the door, next to a phone in session: garbage, a ClientHello of the wrong
/// type, a ClientHello cut short (the socket then ends), a record header announcing more than
/// TLS 1.3 allows (the socket then stays open). Each is closed at once, long before the 30 s
/// handshake timeout, with a TLS alert where TLS has one to give, and counted as a failed
/// handshake; the phone goes on counting and a new phone still gets in. The oversized record is
/// refused from its header (`lean_tls::MAX_RECORD`), before anything is buffered for it.
#[tokio::test]
async fn broken_client_hellos_are_closed_at_once_and_harm_no_session() {
    let Some(agg) = Aggregator::start(Kind::Sqlite, &["--handshake-timeout-ms", "30000"]).await else {
        return;
    };
    let mut healthy = phone_from(None, agg.addr, agg.data_dir(), "healthy").await.unwrap();
    healthy.send(Message::binary(vec![1u8; 3])).await.unwrap();
    assert_eq!(wait_durable(&mut healthy, 3).await, 3);

    let hello = client_hello(&agg.ca());
    assert_eq!(hello[..1], [0x16], "a handshake record");
    let mut wrong_type = hello.clone();
    wrong_type[5] = 2; // a ServerHello's type where the ClientHello's belongs
    let cases: [(&str, &[u8], bool, bool); 4] = [
        // (what, bytes sent, the socket's sending side ended after them, an alert expected)
        ("not TLS", b"GET /ws HTTP/1.1\r\nHost: localhost\r\n\r\n", false, true),
        ("a ClientHello of the wrong type", &wrong_type, false, true),
        ("a ClientHello cut short", &hello[..hello.len() / 2], true, false),
        ("a record header over TLS 1.3's bound", &[0x16, 0x03, 0x01, 0x42, 0x00, 1, 0, 0], false, false),
    ];
    for (what, bytes, end, alert) in cases {
        let mut tcp = tokio::net::TcpStream::connect(agg.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        if end {
            tcp.shutdown().await.unwrap();
        }
        let answer = answer_before_close(&mut tcp, Duration::from_secs(5)).await;
        let answer = answer.unwrap_or_else(|| panic!("{what}: not closed within 5 s"));
        if alert {
            assert_eq!(answer.first(), Some(&0x15), "{what}: answered with a TLS alert: {answer:x?}");
            assert_eq!(answer.len(), 7, "{what}: the alert alone: {answer:x?}");
        }
    }

    healthy.send(Message::binary(vec![1u8; 2])).await.unwrap();
    assert_eq!(wait_durable(&mut healthy, 5).await, 5, "the phone in session was never disturbed");
    let mut newcomer = phone_from(None, agg.addr, agg.data_dir(), "newcomer").await.unwrap();
    newcomer.send(Message::binary(vec![1u8; 1])).await.unwrap();
    assert_eq!(wait_durable(&mut newcomer, 1).await, 1);
    let metrics = metrics_text(agg.addr, &agg.ca()).await;
    assert_eq!(refused(&metrics, "tls handshake failed"), 4, "{metrics}");
    assert_eq!(refused(&metrics, "handshake timeout"), 0, "{metrics}");
    let store = agg.store().await;
    assert_eq!(store.device_totals("healthy").await.unwrap(), vec![("healthy".to_owned(), 5)]);
}
