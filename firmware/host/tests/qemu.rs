//! The real firmware image (firmware/boards/mps2-an386) booted in QEMU with user-mode networking:
//! Python phones on the host reach it through a hostfwd port, it reaches a real aggregator on
//! Postgres through TLS 1.3 trunks (the guest sees the host's loopback as 10.0.2.2), and the
//! totals in Postgres are exactly what the phones sent; a phone without a device token is refused.

mod support;

use support::qemu::Qemu;
use support::{python_phones, wait_totals, Aggregator, Kind};

#[tokio::test(flavor = "multi_thread")]
async fn phones_through_the_qemu_board_reach_postgres_exactly() {
    let Some(agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let qemu = Qemu::boot(&agg, "qemu-site", None);

    // 16 phones (HOLDFAST_QEMU_PHONES; the board holds 64), 15 bytes and up each (binary, text,
    // fragmented, and a 125-byte ping), each told all of it durable.
    let phones = std::env::var("HOLDFAST_QEMU_PHONES").ok().and_then(|n| n.parse().ok()).unwrap_or(16);
    let sent = python_phones(&agg, &format!("ws://127.0.0.1:{}", qemu.port), "qemu", phones, 15);
    let persisted = wait_totals(&agg, "qemu-", &sent).await;
    assert_eq!(persisted, sent, "Postgres holds exactly what the phones sent through the board");

    // The board checks device tokens with the key in its provisioning block: a phone without
    // one is refused (the bytes it sent with its request are never counted).
    // It has no clock, yet refuses an expired token: it keeps the time the aggregator's
    // authenticated upgrade answer told it (its Date).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let issuer =
        device_token::SigningKey::from_hex(&std::fs::read_to_string(agg.device_key_file()).unwrap()).unwrap();
    let expired = issuer.token(b"qemu-late", now - 60).unwrap();
    for (query, reason) in [
        ("device=qemu-nobody".to_owned(), "a device token is required (?token=)"),
        (format!("device=qemu-late&token={expired}"), "the device token expired"),
    ] {
        let answer = refused(qemu.port, &query);
        assert!(answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{query}: {answer}");
        assert!(answer.ends_with(&format!("{reason}\n")), "{query}: {answer}");
    }
    drop(qemu);
    let after = wait_totals(&agg, "qemu-", &sent).await;
    assert_eq!(after, sent, "nothing was counted for the phone without a token");
}

/// A board has no clock, but once a link has come up it keeps the aggregator's time (#12, M5): an
/// aggregator that comes back with an expired certificate from the pinned CA is refused on every
/// reconnect, and the same aggregator with a valid one is trusted again (the control).
#[tokio::test(flavor = "multi_thread")]
async fn once_it_knows_the_time_a_board_refuses_an_expired_aggregator_certificate() {
    let ca = support::pki::TestCa::new("m5-board");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let serve = |served: support::pki::Served| {
        std::fs::write(&cert, &served.chain_pem).unwrap();
        std::fs::write(&key, &served.key_pem).unwrap();
    };
    serve(ca.server(&["localhost"]));
    let args = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
    let Some(mut agg) = Aggregator::start(Kind::Sqlite, &args).await else { return };
    std::fs::write(agg.ca(), ca.pem()).unwrap(); // what the board pins
    let qemu = Qemu::boot(&agg, "qemu-m5", None); // both links up: the board knows the time
    const UP: &str = "TLS 1.3 and WebSocket up";
    let up_before = qemu.count(UP);

    serve(ca.server_expired(&["localhost"]));
    agg.kill();
    agg.spawn();
    let refused = |n| qemu.count("down: Tls(InvalidCertificate)") >= n;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !refused(2) {
        assert!(std::time::Instant::now() < deadline, "the board never refused the expired certificate");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(qemu.count(UP), up_before, "a link came up to an aggregator with an expired certificate");

    serve(ca.server(&["localhost"]));
    agg.kill();
    agg.spawn();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while qemu.count(UP) < up_before + 2 {
        assert!(std::time::Instant::now() < deadline, "the links never came back with a valid certificate");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// An upgrade to `/ws?QUERY` with a 1-byte message after it (counted, were it let in); the answer.
fn refused(port: u16, query: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let mut request = format!("GET /ws?{query} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").into_bytes();
    request.extend_from_slice(&[0x82, 0x81, 0, 0, 0, 0, 1]);
    s.write_all(&request).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}
