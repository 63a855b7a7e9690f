//! Writes the seed corpus of the `decode` target: one valid encoding of every frame type, and one
//! message of several frames, all produced by trunk's own encoder.
//!
//! `cargo run --manifest-path trunk/fuzz/Cargo.toml --bin gen-seeds [DIR]`
//! (default DIR: `trunk/fuzz/seeds/decode`). The output is deterministic.

use std::path::PathBuf;

use trunk::frame::{
    AckEntry, Challenge, Close, CloseReason, Frame, GoAway, GoAwayReason, Hello, MessageWriter, Open, Refuse,
    RefuseCode, Welcome, DEFAULT_MAX_PAYLOAD_LEN, PROOF_LEN, PROTOCOL_VERSION,
};

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let n = frame.encode(&mut buf).expect("seed frame encodes");
    buf.truncate(n);
    buf
}

fn message(fill: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let mut w = MessageWriter::new(&mut buf, DEFAULT_MAX_PAYLOAD_LEN);
    fill(&mut w);
    let n = w.finish();
    buf.truncate(n);
    buf
}

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds/decode"));
    std::fs::create_dir_all(&dir).expect("create the seed folder");

    let challenge_nonce = [0xc0; 16];
    let mut hello = Hello {
        version: PROTOCOL_VERSION,
        link: 1,
        boot_epoch: 0x0000_0190_0000_0001,
        nonce: [0xa0; 16],
        gateway_id: b"site-1",
        proof: [0; PROOF_LEN],
    };
    hello.proof = trunk::auth::prove(b"secret", &challenge_nonce, &hello);
    let device: &[u8] = &[0x5e; 16];

    let seeds: Vec<(&str, Vec<u8>)> = vec![
        (
            "challenge",
            encode(&Frame::Challenge(Challenge { version: PROTOCOL_VERSION, nonce: challenge_nonce })),
        ),
        ("hello", encode(&Frame::Hello(hello))),
        (
            "welcome",
            encode(&Frame::Welcome(Welcome { link: 1, ping_interval_ms: 15_000, max_message_len: 65_536 })),
        ),
        ("open", encode(&Frame::Open(Open { session: 1_005, device: Some(device) }))),
        ("open-no-device", encode(&Frame::Open(Open { session: 3, device: None }))),
        (
            "counts",
            message(|w| {
                for (session, total) in [(3, 1_200), (4, 5), (1_005, 70_000)] {
                    assert!(w.count(session, total));
                }
            }),
        ),
        ("close", encode(&Frame::Close(Close { session: 4, total: 312, reason: CloseReason::IDLE }))),
        (
            "ack",
            message(|w| {
                assert!(w.ack(AckEntry { session: 3, total: 1_200, closed: false }));
                assert!(w.ack(AckEntry { session: 4, total: 312, closed: true }));
            }),
        ),
        ("ping", encode(&Frame::Ping(7))),
        ("pong", encode(&Frame::Pong(7))),
        ("go-away", encode(&Frame::GoAway(GoAway { retry_after_ms: 5_000, reason: GoAwayReason::SHUTDOWN }))),
        ("refuse", encode(&Frame::Refuse(Refuse { code: RefuseCode::BAD_PROOF, text: b"bad proof" }))),
        (
            "message",
            message(|w| {
                w.frame(&Frame::Open(Open { session: 4, device: Some(device) })).unwrap();
                w.frame(&Frame::Open(Open { session: 1_005, device: None })).unwrap();
                for (session, total) in [(3, 1_200), (4, 5), (1_005, 70_000)] {
                    assert!(w.count(session, total));
                }
                w.frame(&Frame::Close(Close { session: 3, total: 1_200, reason: CloseReason::NORMAL }))
                    .unwrap();
                w.frame(&Frame::Ping(1)).unwrap();
            }),
        ),
    ];
    for (name, bytes) in &seeds {
        let path = dir.join(format!("{name}.bin"));
        std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        println!("{:>5} bytes  {}", bytes.len(), path.display());
    }
}
