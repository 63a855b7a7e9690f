//! What a flush costs on the wire, per session reported, and what a session costs in memory.
//!
//! `cargo run --release -p trunk --example wire_overhead`
//!
//! A gateway with 10,000 phone sessions (16-byte device ids) on one link, brought up with a real
//! handshake; after the first flush (the opens), some sessions receive bytes and the next flush is
//! measured: WebSocket message bytes (trunk frames, no WebSocket or TLS framing) divided by the
//! sessions it reports. Totals are deterministic pseudo-random numbers in the stated range.

use trunk::frame::{self, Frame, NONCE_LEN};
use trunk::gateway::{Gateway, GatewayConfig, Identity, LinkPhase, SessionSlot};
use trunk::ledger::LedgerSlot;
use trunk::server::{Handshake, ServerConfig};

const SECRET: &[u8] = b"secret";
const SESSIONS: usize = 10_000;

fn bring_up(gw: &mut Gateway<Vec<SessionSlot>>, now: u64) {
    let config = ServerConfig::default();
    let mut buf = vec![0u8; 1024];
    gw.connected(0, now, [0xa0; NONCE_LEN]);
    let handshake = Handshake::new([0xc0; NONCE_LEN], now);
    let n = handshake.challenge(&mut buf).unwrap();
    gw.handle_message(0, &buf[..n], now).unwrap();
    let n = gw.poll_transmit(0, now, &mut buf).unwrap().expect("a hello");
    let hello = handshake.hello(&buf[..n], &config).unwrap();
    let mut server = handshake.verify(&hello, Some(SECRET), 1, now).unwrap();
    let mut out = vec![0u8; 1024];
    let n = server.poll_transmit(now, &config, &mut out).unwrap().expect("a welcome");
    gw.handle_message(0, &out[..n], now).unwrap();
    assert_eq!(gw.link_phase(0), LinkPhase::Up);
}

#[derive(Default)]
struct Flush {
    messages: usize,
    frames: usize,
    bytes: usize,
    reported: usize,
}

/// Sends everything the link has now, counting messages, frames, bytes and sessions reported.
fn flush(gw: &mut Gateway<Vec<SessionSlot>>, now: u64) -> Flush {
    let mut out = vec![0u8; ServerConfig::default().max_message_len];
    let mut f = Flush::default();
    while let Some(n) = gw.poll_transmit(0, now, &mut out).unwrap() {
        f.messages += 1;
        f.bytes += n;
        for frame in frame::frames(&out[..n], frame::MAX_PAYLOAD_LEN) {
            f.frames += 1;
            match frame.unwrap() {
                Frame::Counts(c) => f.reported += c.iter().count(),
                Frame::Open(_) | Frame::Close(_) => f.reported += 1,
                _ => {}
            }
        }
    }
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
    let now = 1_000;
    let config = GatewayConfig { flush_interval_ms: 0, ..GatewayConfig::default() };
    let identity = Identity { gateway_id: b"site-1", secret: SECRET, boot_epoch: 1 };

    println!("| flush                                              | sessions | messages | frames |     bytes | bytes/sess |");
    println!("|----------------------------------------------------|---------:|---------:|-------:|----------:|-----------:|");
    let mut first = true;
    for (range, lo, hi) in [("1..500 B", 1, 500), ("1 KB..1 MB", 1_000, 1_000_000)] {
        for changed in [1_000usize, 10_000] {
            let mut gw = Gateway::new(config, identity, 1, vec![SessionSlot::FREE; SESSIONS]).unwrap();
            bring_up(&mut gw, now);
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
