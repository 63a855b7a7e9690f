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
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", qemu.port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /ws?device=qemu-nobody HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x82\x81\0\0\0\0\x01").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{answer}");
    assert!(answer.ends_with("a device token is required (?token=)\n"), "{answer}");
    drop(qemu);
    let after = wait_totals(&agg, "qemu-", &sent).await;
    assert_eq!(after, sent, "nothing was counted for the phone without a token");
}
