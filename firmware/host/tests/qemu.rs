//! The real firmware image (firmware/boards/mps2-an386) booted in QEMU with user-mode networking:
//! Python phones on the host reach it through a hostfwd port, it reaches a real aggregator on
//! Postgres through TLS 1.3 trunks (the guest sees the host's loopback as 10.0.2.2), and the
//! totals in Postgres are exactly what the phones sent.

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
    let sent = python_phones(&format!("ws://127.0.0.1:{}", qemu.port), "qemu", phones, 15);
    let persisted = wait_totals(&agg, "qemu-", &sent).await;
    assert_eq!(persisted, sent, "Postgres holds exactly what the phones sent through the board");
    drop(qemu);
}
