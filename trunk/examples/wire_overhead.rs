//! What a flush costs on the wire, per session reported, and what a session costs in memory.
//!
//! `cargo run --release -p trunk --example wire_overhead`
//!
//! A gateway with 10,000 phone sessions (16-byte device ids) on one link, brought up with a real
//! handshake; after the first flush (the opens), some sessions receive bytes and the next flush is
//! measured: WebSocket message bytes (trunk frames, no WebSocket or TLS framing) divided by the
//! sessions it reports. Totals are deterministic pseudo-random numbers in the stated range.

use trunk::frame::{self, Frame};
use trunk::gateway::{Gateway, GatewayConfig, Identity, SessionSlot};
use trunk::harness::{bring_up, transmit_all};
use trunk::ledger::LedgerSlot;
use trunk::server::ServerConfig;
use trunk::time::{Duration, Instant};

const SECRET: &[u8] = b"secret";
const SESSIONS: usize = 10_000;

#[derive(Default)]
struct Flush {
    messages: usize,
    frames: usize,
    bytes: usize,
    reported: usize,
}

/// Sends everything the link has now, counting messages, frames, bytes and sessions reported.
fn flush(gw: &mut Gateway<Vec<SessionSlot>>, now: Instant) -> Flush {
    let mut out = vec![0u8; ServerConfig::default().max_message_len];
    let mut f = Flush::default();
    f.messages = transmit_all(gw, 0, now, &mut out, |message| {
        f.bytes += message.len();
        for frame in frame::frames(message, frame::MAX_PAYLOAD_LEN) {
            f.frames += 1;
            match frame.unwrap() {
                Frame::Counts(c) => f.reported += c.iter().count(),
                Frame::Open(_) | Frame::Close(_) => f.reported += 1,
                _ => {}
            }
        }
    });
    f
}

/// A deterministic pseudo-random number in `lo..=hi`, spread log-uniformly.
fn spread(i: u64, lo: u64, hi: u64) -> u64 {
    let x = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
    let v = (lo as f64) * ((hi as f64) / (lo as f64)).powf(x);
    (v as u64).clamp(lo, hi)
}

fn row(label: &str, f: &Flush) {
    println!(
        "| {label:<50} | {:>8} | {:>8} | {:>6} | {:>9} | {:>10.2} |",
        f.reported,
        f.messages,
        f.frames,
        f.bytes,
        f.bytes as f64 / f.reported as f64
    );
}

fn main() {
    let now = Instant::from_secs(1);
    let config = GatewayConfig { flush_interval: Duration::ZERO, ..GatewayConfig::default() };
    let identity = Identity { gateway_id: b"site-1", secret: SECRET, boot_epoch: 1 };

    println!("| flush                                              | sessions | messages | frames |     bytes | bytes/sess |");
    println!("|----------------------------------------------------|---------:|---------:|-------:|----------:|-----------:|");
    let mut first = true;
    for (range, lo, hi) in [("1..500 B", 1, 500), ("1 KB..1 MB", 1_000, 1_000_000)] {
        for changed in [1_000usize, 10_000] {
            let mut gw = Gateway::new(config, identity, 1, vec![SessionSlot::FREE; SESSIONS]).unwrap();
            bring_up(&mut gw, 0, now, SECRET, &ServerConfig::default());
            let ids: Vec<_> = (0..SESSIONS).map(|_| gw.open(Some(&[0x5e; 16])).unwrap()).collect();
            let opens = flush(&mut gw, now);
            if first {
                row("opens, 16-byte device ids, no bytes yet", &opens);
                first = false;
            }
            let step = SESSIONS / changed;
            for id in ids.iter().step_by(step) {
                gw.record(*id, spread(id.0, lo, hi)).unwrap();
            }
            let f = flush(&mut gw, now);
            assert_eq!(f.reported, changed);
            row(&format!("counts: {changed} of {SESSIONS} changed, totals {range}"), &f);
        }
    }
    println!();
    println!("size_of::<SessionSlot>() = {} bytes (gateway, per phone)", size_of::<SessionSlot>());
    println!(
        "size_of::<LedgerSlot>()  = {} bytes (aggregator, per changed session)",
        size_of::<LedgerSlot>()
    );
}
