//! Throughput of the trunk codec and of a gateway's flush.
//!
//! `cargo bench -p trunk --bench codec -- --measurement-time 3 --warm-up-time 1`
//! Figures and the machine they came from are in `docs/benchmarks.md`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use trunk::frame::{
    self, Close, CloseReason, Frame, Hello, MessageWriter, Open, DEFAULT_MAX_PAYLOAD_LEN, NONCE_LEN,
    PROOF_LEN, PROTOCOL_VERSION,
};
use trunk::gateway::{Gateway, GatewayConfig, Identity, SessionSlot};
use trunk::harness::{bring_up, transmit_all};
use trunk::ledger::{Ledger, LedgerSlot, SessionKey};
use trunk::server::{Handshake, ServerConfig, ServerLink};
use trunk::time::Instant;

const SECRET: &[u8] = b"bench secret";

/// A byte count a phone might have reached: 1..=500.
fn total(session: u64) -> u64 {
    1 + session.wrapping_mul(7_919) % 500
}

fn counts_message(entries: u64) -> Vec<u8> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut w = MessageWriter::new(&mut buf, DEFAULT_MAX_PAYLOAD_LEN);
    for s in 0..entries {
        assert!(w.count(s, total(s)));
    }
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn counts(c: &mut Criterion) {
    const ENTRIES: u64 = 1_000;
    let mut group = c.benchmark_group("counts_1000");
    group.throughput(Throughput::Elements(ENTRIES));
    let mut buf = vec![0u8; 64 * 1024];
    group.bench_function("encode", |b| {
        b.iter(|| {
            let mut w = MessageWriter::new(&mut buf, DEFAULT_MAX_PAYLOAD_LEN);
            for s in 0..ENTRIES {
                w.count(black_box(s), black_box(total(s)));
            }
            black_box(w.finish())
        })
    });
    let message = counts_message(ENTRIES);
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            let mut n = 0u64;
            for f in frame::frames(black_box(&message), DEFAULT_MAX_PAYLOAD_LEN) {
                if let Ok(Frame::Counts(c)) = f {
                    for e in c.iter() {
                        sum = sum.wrapping_add(e.session ^ e.total);
                        n += 1;
                    }
                }
            }
            assert_eq!(n, ENTRIES);
            black_box(sum)
        })
    });
    group.finish();
}

fn small_frames(c: &mut Criterion) {
    let device = [0x5e; 16];
    let frames = [
        ("ping", Frame::Ping(0x0102_0304_0506_0708)),
        ("open_device16", Frame::Open(Open { session: 1_005, device: Some(&device) })),
        ("close", Frame::Close(Close { session: 1_005, total: 70_000, reason: CloseReason::NORMAL })),
    ];
    let mut group = c.benchmark_group("small_frame");
    group.throughput(Throughput::Elements(1));
    let mut buf = [0u8; 64];
    for (name, f) in &frames {
        group.bench_function(BenchmarkId::new("encode_decode", name), |b| {
            b.iter(|| {
                let n = black_box(f).encode(&mut buf).unwrap();
                let (g, used) = frame::decode(black_box(&buf[..n]), DEFAULT_MAX_PAYLOAD_LEN).unwrap();
                assert_eq!(used, n);
                black_box(g);
            })
        });
    }
    group.finish();
}

/// Sends everything `link` has now; returns (messages, bytes).
fn drain(gw: &mut Gateway<Vec<SessionSlot>>, link: usize, now: Instant, out: &mut [u8]) -> (usize, usize) {
    let mut bytes = 0;
    let messages = transmit_all(gw, link, now, out, |m| bytes += m.len());
    (messages, bytes)
}

fn gateway_flush(c: &mut Criterion) {
    const SESSIONS: usize = 10_000;
    // Flush on every poll and keep the clock still, so no timer (ping, timeout) interferes.
    let config = GatewayConfig { flush_interval: trunk::time::Duration::ZERO, ..GatewayConfig::default() };
    let identity = Identity { gateway_id: b"site-1", secret: SECRET, boot_epoch: 1 };
    let now = Instant::from_secs(1);
    let mut out = vec![0u8; ServerConfig::default().max_message_len];

    let mut group = c.benchmark_group("gateway_flush_10000");
    for changed_every in [3usize, 10_000] {
        let mut gw = Gateway::new(config, identity, 1, vec![SessionSlot::FREE; SESSIONS]).unwrap();
        bring_up(&mut gw, 0, now, SECRET, &ServerConfig::default());
        let ids: Vec<_> = (0..SESSIONS).map(|_| gw.open(Some(&[0x5e; 16])).unwrap()).collect();
        drain(&mut gw, 0, now, &mut out); // the opens
        let changed: Vec<_> = ids.iter().copied().step_by(changed_every).collect();
        group.throughput(Throughput::Elements(changed.len() as u64));
        let mut round = 0u64;
        group.bench_function(BenchmarkId::new("changed", changed.len()), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    for id in &changed {
                        gw.record(*id, 1 + (id.0 + round) % 500).unwrap();
                    }
                    let start = std::time::Instant::now();
                    black_box(drain(&mut gw, 0, now, &mut out));
                    elapsed += start.elapsed();
                }
                elapsed
            })
        });
    }
    group.finish();
}

/// The aggregator's side of the same traffic: one 1,000-entry Counts message into the ledger.
fn server_ingest(c: &mut Criterion) {
    const ENTRIES: u64 = 1_000;
    let config = ServerConfig::default();
    let message = counts_message(ENTRIES);
    // A link authenticated with a Hello made by hand (the gateway's part is not measured here).
    let handshake = Handshake::new([0xc0; NONCE_LEN], Instant::ZERO);
    let mut hello = Hello {
        version: PROTOCOL_VERSION,
        link: 0,
        boot_epoch: 1,
        nonce: [0xa0; NONCE_LEN],
        gateway_id: b"site-1",
        proof: [0; PROOF_LEN],
    };
    hello.proof = trunk::auth::prove(SECRET, &[0xc0; NONCE_LEN], &hello);
    let mut link: ServerLink = handshake.verify(&hello, Some(SECRET), 1, Instant::ZERO).unwrap();
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 4_096], 0x5eed);
    let mut keys = vec![SessionKey { gateway: 0, boot_epoch: 0, session: 0 }; 4_096];

    let mut group = c.benchmark_group("server_ingest");
    group.throughput(Throughput::Elements(ENTRIES));
    group.bench_function("counts_1000_into_ledger", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let start = std::time::Instant::now();
                let r =
                    link.handle_message(black_box(&message), Instant::ZERO, &config, &mut ledger, 7).unwrap();
                elapsed += start.elapsed();
                assert_eq!(r.counts, ENTRIES as usize);
                // Empty the ledger again, outside the measurement.
                let flight = ledger.begin_flush(&mut keys, Instant::ZERO);
                ledger.commit_succeeded(flight, |_, _, _| {});
            }
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, counts, small_frames, gateway_flush, server_ingest);
criterion_main!(benches);
