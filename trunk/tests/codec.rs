//! Properties of the frame codec: every frame survives a roundtrip byte-exactly, and no input,
//! random or a mutation of a valid message, makes the decoder panic or read out of bounds.

use proptest::collection::vec;
use proptest::prelude::*;
use trunk::frame::{
    self, AckEntry, Challenge, Close, CloseReason, CountEntry, DecodeError, Frame, GoAway, GoAwayReason,
    Hello, MessageWriter, Open, Refuse, RefuseCode, Welcome, MAX_DEVICE_ID_LEN, MAX_GATEWAY_ID_LEN,
    MAX_PAYLOAD_LEN, PROTOCOL_VERSION,
};

/// A single (non-batch) frame, owning its variable parts.
#[derive(Debug, Clone)]
enum Single {
    Challenge([u8; 16]),
    Hello { link: u8, epoch: u64, nonce: [u8; 16], id: Vec<u8>, proof: [u8; 32] },
    Welcome { link: u8, ping: u64, max: u64 },
    Open { session: u64, device: Option<Vec<u8>> },
    Close { session: u64, total: u64, reason: u8 },
    Ping(u64),
    Pong(u64),
    GoAway { retry: u64, reason: u8 },
    Refuse { code: u8, text: Vec<u8> },
}

impl Single {
    fn frame(&self) -> Frame<'_> {
        match self {
            Single::Challenge(nonce) => {
                Frame::Challenge(Challenge { version: PROTOCOL_VERSION, nonce: *nonce })
            }
            Single::Hello { link, epoch, nonce, id, proof } => Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                link: *link,
                boot_epoch: *epoch,
                nonce: *nonce,
                gateway_id: id,
                proof: *proof,
            }),
            Single::Welcome { link, ping, max } => {
                Frame::Welcome(Welcome { link: *link, ping_interval_ms: *ping, max_message_len: *max })
            }
            Single::Open { session, device } => {
                Frame::Open(Open { session: *session, device: device.as_deref() })
            }
            Single::Close { session, total, reason } => {
                Frame::Close(Close { session: *session, total: *total, reason: CloseReason(*reason) })
            }
            Single::Ping(n) => Frame::Ping(*n),
            Single::Pong(n) => Frame::Pong(*n),
            Single::GoAway { retry, reason } => {
                Frame::GoAway(GoAway { retry_after_ms: *retry, reason: GoAwayReason(*reason) })
            }
            Single::Refuse { code, text } => Frame::Refuse(Refuse { code: RefuseCode(*code), text }),
        }
    }
}

fn single() -> impl Strategy<Value = Single> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(Single::Challenge),
        (
            any::<u8>(),
            any::<u64>(),
            any::<[u8; 16]>(),
            vec(any::<u8>(), 1..=MAX_GATEWAY_ID_LEN),
            any::<[u8; 32]>()
        )
            .prop_map(|(link, epoch, nonce, id, proof)| Single::Hello {
                link,
                epoch,
                nonce,
                id,
                proof
            }),
        (any::<u8>(), any::<u64>(), any::<u64>()).prop_map(|(link, ping, max)| Single::Welcome {
            link,
            ping,
            max
        }),
        (any::<u64>(), proptest::option::of(vec(any::<u8>(), 1..=MAX_DEVICE_ID_LEN)))
            .prop_map(|(session, device)| Single::Open { session, device }),
        (any::<u64>(), any::<u64>(), any::<u8>()).prop_map(|(session, total, reason)| Single::Close {
            session,
            total,
            reason
        }),
        any::<u64>().prop_map(Single::Ping),
        any::<u64>().prop_map(Single::Pong),
        (any::<u64>(), any::<u8>()).prop_map(|(retry, reason)| Single::GoAway { retry, reason }),
        (any::<u8>(), vec(any::<u8>(), 0..=255)).prop_map(|(code, text)| Single::Refuse { code, text }),
    ]
}

/// Counts that look like phones' (small) and like anything at all (large), mixed.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1_000, any::<u64>()]
}

proptest! {
    #[test]
    fn every_single_frame_roundtrips_byte_exactly(f in single()) {
        let frame = f.frame();
        let mut buf = [0u8; 512];
        let n = frame.encode(&mut buf).unwrap();
        let (decoded, used) = frame::decode(&buf[..n], MAX_PAYLOAD_LEN).unwrap();
        prop_assert_eq!(used, n);
        prop_assert_eq!(decoded, frame);
        let mut again = [0u8; 512];
        prop_assert_eq!(decoded.encode(&mut again), Ok(n));
        prop_assert_eq!(&again[..n], &buf[..n]);
        // Every proper prefix is incomplete, never a different frame.
        for cut in 0..n {
            prop_assert!(
                matches!(frame::decode(&buf[..cut], MAX_PAYLOAD_LEN), Err(DecodeError::Incomplete { .. })),
                "prefix of {} bytes decoded", cut
            );
        }
    }

    #[test]
    fn count_and_ack_batches_roundtrip(
        counts in vec((number(), number()), 1..600),
        acks in vec((number(), number(), any::<bool>()), 1..600),
        max_payload in 32usize..4096,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut w = MessageWriter::new(&mut buf, max_payload);
        for &(s, t) in &counts {
            prop_assert!(w.count(s, t));
        }
        for &(session, total, closed) in &acks {
            let entry = AckEntry { session, total, closed };
            prop_assert!(w.ack(entry));
        }
        let n = w.finish();
        let mut got_counts = Vec::new();
        let mut got_acks = Vec::new();
        for f in frame::frames(&buf[..n], max_payload) {
            match f.unwrap() {
                Frame::Counts(c) => got_counts.extend(c.iter().map(|CountEntry { session, total }| (session, total))),
                Frame::Ack(a) => got_acks.extend(a.iter().map(|e| (e.session, e.total, e.closed))),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        prop_assert_eq!(got_counts, counts);
        prop_assert_eq!(got_acks, acks);
    }

    #[test]
    fn a_full_buffer_refuses_instead_of_overflowing(entries in vec((number(), number()), 1..200), size in 0usize..200) {
        let mut buf = vec![0u8; size];
        let mut w = MessageWriter::new(&mut buf, MAX_PAYLOAD_LEN);
        let mut written = Vec::new();
        for &(s, t) in &entries {
            if !w.count(s, t) {
                break;
            }
            written.push((s, t));
        }
        let n = w.finish();
        prop_assert!(n <= size);
        let decoded: Vec<_> = frame::frames(&buf[..n], MAX_PAYLOAD_LEN)
            .flat_map(|f| match f.unwrap() { Frame::Counts(c) => c.iter().map(|e| (e.session, e.total)).collect::<Vec<_>>(), _ => vec![] })
            .collect();
        prop_assert_eq!(decoded, written);
    }

    #[test]
    fn random_bytes_never_panic(data in vec(any::<u8>(), 0..2048), max in 0usize..70_000) {
        for f in frame::frames(&data, max) {
            if let Ok(Frame::Counts(c)) = f { c.iter().count(); }
            if let Ok(Frame::Ack(a)) = f { a.iter().count(); }
        }
        let _ = frame::decode(&data, max);
    }

    #[test]
    fn mutated_messages_never_panic_and_stay_canonical(
        frames in vec(single(), 1..8),
        counts in vec((number(), number()), 0..50),
        mutations in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        let mut w = MessageWriter::new(&mut buf, MAX_PAYLOAD_LEN);
        for f in &frames {
            w.frame(&f.frame()).unwrap();
        }
        for &(s, t) in &counts {
            w.count(s, t);
        }
        let n = w.finish();
        let mut msg = buf[..n].to_vec();
        for (at, byte, op) in mutations {
            let i = at.index(msg.len().max(1));
            match op {
                0 if i < msg.len() => msg[i] = byte,
                1 => msg.insert(i.min(msg.len()), byte),
                _ if i < msg.len() => { msg.remove(i); }
                _ => {}
            }
        }
        let mut offset = 0;
        for f in frame::frames(&msg, MAX_PAYLOAD_LEN) {
            let Ok(f) = f else { break };
            // Whatever decodes re-encodes to exactly the bytes it came from.
            let mut out = vec![0u8; 70_000];
            let len = f.encode(&mut out).unwrap();
            prop_assert_eq!(&out[..len], &msg[offset..offset + len]);
            offset += len;
        }
    }
}

#[test]
fn typed_errors() {
    assert_eq!(frame::decode(&[], 100), Err(DecodeError::Incomplete { needed: 3 }));
    assert_eq!(frame::decode(&[0x30, 0x00, 0x08, 1], 100), Err(DecodeError::Incomplete { needed: 7 }));
    assert_eq!(frame::decode(&[0x30, 0x10, 0x00], 100), Err(DecodeError::TooLarge { len: 4096, max: 100 }));
    assert_eq!(frame::decode(&[0x7f, 0x00, 0x00], 100), Err(DecodeError::UnknownType(0x7f)));
    let mut challenge = [0u8; 20];
    challenge[..4].copy_from_slice(&[0x01, 0x00, 0x11, 0x02]);
    assert_eq!(frame::decode(&challenge[..20], 100), Err(DecodeError::UnknownVersion(2)));
    assert_eq!(frame::decode(&[0x11, 0x00, 0x00], 100), Err(DecodeError::Malformed("empty counts")));
    assert_eq!(frame::decode(&[0x11, 0x00, 0x01, 0x05], 100), Err(DecodeError::Malformed("counts total")));
    assert_eq!(
        frame::decode(&[0x11, 0x00, 0x03, 0x05, 0x80, 0x00], 100),
        Err(DecodeError::Malformed("counts total"))
    );
    assert_eq!(
        frame::decode(&[0x30, 0x00, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0], 100),
        Err(DecodeError::Malformed("trailing bytes in payload"))
    );
    assert_eq!(
        frame::decode(&[0x20, 0x00, 0x03, 0x01, 0x01, 0x80], 100),
        Err(DecodeError::Malformed("ack flags"))
    );
    let mut open = vec![0x10, 0x00, 35, 0x01, 33];
    open.extend([b'd'; 33]);
    assert_eq!(frame::decode(&open, 100), Err(DecodeError::Malformed("device id length")));
}
