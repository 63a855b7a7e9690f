//! Prints the worked example of `docs/trunk-protocol.md`: the bytes of a handshake, a message of
//! session reports and its acknowledgement, for fixed inputs, produced by trunk's own gateway,
//! server and ledger.
//!
//! `cargo run -p trunk --example worked_example`
//!
//! It also recomputes the Hello's proof from the transcript as the specification describes it
//! (with the `hmac` and `sha2` crates directly), so the document and the code cannot drift apart.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use trunk::frame::{self, Frame, MessageWriter, Open, DEFAULT_MAX_PAYLOAD_LEN, NONCE_LEN};
use trunk::gateway::{Gateway, GatewayConfig, Identity, LinkPhase, SessionSlot};
use trunk::ledger::{Ledger, LedgerSlot, SessionKey};
use trunk::server::{self, Handshake, ServerConfig};

const GATEWAY_ID: &[u8] = b"site-1";
const SECRET: &[u8] = b"secret";
const BOOT_EPOCH: u64 = 1;
/// The aggregator's challenge nonce: c0 c1 .. cf.
const CHALLENGE_NONCE: [u8; NONCE_LEN] = nonce(0xc0);
/// The gateway's nonce: a0 a1 .. af.
const GATEWAY_NONCE: [u8; NONCE_LEN] = nonce(0xa0);

const fn nonce(first: u8) -> [u8; NONCE_LEN] {
    let mut n = [0; NONCE_LEN];
    let mut i = 0;
    while i < NONCE_LEN {
        n[i] = first + i as u8;
        i += 1;
    }
    n
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

/// Prints a message frame by frame: header, then payload.
fn show(title: &str, message: &[u8]) {
    println!("{title} ({} bytes):", message.len());
    let mut rest = message;
    while !rest.is_empty() {
        let (f, used) = frame::decode(rest, frame::MAX_PAYLOAD_LEN).expect("a valid frame");
        let name = format!("{f:?}");
        let name = name.split(['(', ' ']).next().unwrap_or("");
        println!("  {:<9} {} | {}", name, hex(&rest[..3]), hex(&rest[3..used]));
        rest = &rest[used..];
    }
    println!("  as one line: {}", hex(message));
    println!();
}

fn main() {
    let now = trunk::time::Instant::ZERO;
    let server_config = ServerConfig::default();

    // The gateway, 1 link, 1,000 session slots.
    let identity = Identity { gateway_id: GATEWAY_ID, secret: SECRET, boot_epoch: BOOT_EPOCH };
    let mut gw = Gateway::new(GatewayConfig::default(), identity, 1, vec![SessionSlot::FREE; 1_000]).unwrap();
    gw.connected(0, now, GATEWAY_NONCE);

    // 1. Challenge.
    let handshake = Handshake::new(CHALLENGE_NONCE, now);
    let mut challenge = [0u8; 64];
    let n = handshake.challenge(&mut challenge).unwrap();
    let challenge = &challenge[..n];
    show("Challenge, aggregator -> gateway", challenge);
    gw.handle_message(0, challenge, now).unwrap();

    // 2. Hello, written by the gateway.
    let mut hello_buf = [0u8; 256];
    let n = gw.poll_transmit(0, now, &mut hello_buf).unwrap().expect("a hello");
    let hello_msg = &hello_buf[..n];
    show("Hello, gateway -> aggregator", hello_msg);
    let hello = handshake.hello(hello_msg, &server_config).unwrap();

    // The proof, recomputed from the transcript as docs/trunk-protocol.md states it.
    let mut transcript = Vec::new();
    transcript.extend_from_slice(b"holdfast trunk hello");
    transcript.push(frame::PROTOCOL_VERSION);
    transcript.extend_from_slice(&CHALLENGE_NONCE);
    transcript.extend_from_slice(&GATEWAY_NONCE);
    transcript.push(0); // link
    transcript.extend_from_slice(&BOOT_EPOCH.to_be_bytes());
    transcript.push(GATEWAY_ID.len() as u8);
    transcript.extend_from_slice(GATEWAY_ID);
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(&transcript);
    let proof: [u8; 32] = mac.finalize().into_bytes().into();
    assert_eq!(proof, hello.proof, "the documented transcript gives the gateway's proof");
    println!("HMAC-SHA256 transcript ({} bytes): {}", transcript.len(), hex(&transcript));
    println!("proof = HMAC-SHA256(key = \"secret\", transcript) = {}", hex(&proof));
    println!();

    // 3. Welcome.
    let mut link = handshake.verify(&hello, Some(SECRET), 1, now).expect("the proof verifies");
    let mut welcome = [0u8; 64];
    let n = link.poll_transmit(now, &server_config, &mut welcome).unwrap().expect("a welcome");
    let welcome = &welcome[..n];
    show("Welcome, aggregator -> gateway", welcome);
    gw.handle_message(0, welcome, now).unwrap();
    assert_eq!(gw.link_phase(0), LinkPhase::Up);

    // 4. Session reports: session 3 opened earlier; 4 (a 16-byte device id) and 1005 (no device
    // id; slot 5, generation 1 of a 1,000-slot gateway) open now; all three report totals.
    let device: [u8; 16] =
        [0x6f, 0x1c, 0x2a, 0x3e, 0x9d, 0x40, 0x4b, 0x8a, 0x91, 0x0e, 0x5f, 0x77, 0x12, 0xc4, 0xd3, 0x08];
    let mut reports = [0u8; 256];
    let mut w = MessageWriter::new(&mut reports, DEFAULT_MAX_PAYLOAD_LEN);
    w.frame(&Frame::Open(Open { session: 4, device: Some(&device) })).unwrap();
    w.frame(&Frame::Open(Open { session: 1_005, device: None })).unwrap();
    for (session, total) in [(3, 1_200), (4, 5), (1_005, 70_000)] {
        assert!(w.count(session, total));
    }
    let n = w.finish();
    let reports = &reports[..n];
    show("Opens and Counts, gateway -> aggregator", reports);

    // 5. The aggregator records them, commits, and acknowledges.
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 0x5eed);
    let received = link.handle_message(reports, now, &server_config, &mut ledger, 0).unwrap();
    assert_eq!((received.opens, received.counts), (2, 3));
    let mut keys = [SessionKey { gateway: 0, boot_epoch: 0, session: 0 }; 64];
    let flight = ledger.begin_flush(&mut keys, now);
    let mut acks = Vec::new();
    ledger.commit_succeeded(flight, |_route, _key, entry| acks.push(entry));
    acks.sort_by_key(|e| e.session); // the ledger's order is the order of change; sorted by session here
    let mut ack = [0u8; 256];
    let n = server::write_acks(&mut acks.into_iter().peekable(), &mut ack, &server_config);
    let ack = &ack[..n];
    show("Ack, aggregator -> gateway", ack);
}
