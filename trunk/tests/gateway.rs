//! Regressions found by the gateway fuzz target (trunk/fuzz), as plain tests: liveness of split
//! flushes, go-away in the middle of one, and a Welcome that allows too little.

use trunk::frame::{Frame, GoAway, GoAwayReason, Welcome};
use trunk::gateway::{Gateway, GatewayConfig, Identity, LinkError, SessionId, SessionSlot};
use trunk::harness::{transmit_all, Pair, BUF};
use trunk::server::{Handshake, ServerConfig};
use trunk::time::{Instant, PollAt};

/// A gateway whose `links` links are all up, at time 0.
fn up_gateway(sessions: usize, links: usize) -> Gateway<Vec<SessionSlot>> {
    let mut pair = Pair::new(GatewayConfig::default(), links, sessions);
    pair.now = Instant::ZERO;
    pair.connect_all();
    pair.gateway
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// Every count entry `link` sends until it has nothing more, at time `now` (ms).
fn drain(gw: &mut Gateway<Vec<SessionSlot>>, link: usize, now: u64) -> Vec<(u64, u64)> {
    let mut buf = vec![0u8; BUF];
    let mut counts = Vec::new();
    transmit_all(gw, link, at(now), &mut buf, |message| {
        for f in trunk::frame::frames(message, trunk::frame::MAX_PAYLOAD_LEN) {
            if let Frame::Counts(c) = f.unwrap() {
                counts.extend(c.iter().map(|e| (e.session, e.total)));
            }
        }
    });
    counts
}

#[test]
fn a_change_made_between_two_messages_of_a_split_flush_is_sent() {
    let mut gw = up_gateway(10_000, 1);
    for _ in 0..10_000 {
        gw.open(Some(&[0x5e; 16])).unwrap();
    }
    let mut buf = vec![0u8; BUF];
    assert!(gw.poll_transmit(0, at(1), &mut buf).unwrap().is_some(), "the opens need more than one message");
    gw.record(SessionId(0), 100).unwrap(); // session 0 was already scanned in the first message
    let mut sent = drain(&mut gw, 0, 1);
    for t in (300..3_000).step_by(300) {
        sent.extend(drain(&mut gw, 0, t));
    }
    assert!(sent.contains(&(0, 100)), "session 0's count was never sent");
}

#[test]
fn go_away_in_the_middle_of_a_split_flush_moves_sessions_without_spinning() {
    let mut gw = up_gateway(10_000, 2);
    for _ in 0..10_000 {
        gw.open(Some(&[0x5e; 16])).unwrap();
    }
    let mut buf = vec![0u8; BUF];
    assert!(gw.poll_transmit(0, at(1), &mut buf).unwrap().is_some());
    let n = Frame::GoAway(GoAway { retry_after_ms: 1_000, reason: GoAwayReason::SHUTDOWN })
        .encode(&mut buf)
        .unwrap();
    gw.handle_message(0, &buf[..n], at(2)).unwrap();
    assert_eq!(gw.poll_transmit(0, at(2), &mut buf).unwrap(), None);
    // Everything link 0 no longer carries goes on link 1.
    let mut opens = 0;
    while let Some(n) = gw.poll_transmit(1, at(3), &mut buf).unwrap() {
        opens += trunk::frame::frames(&buf[..n], 1 << 16).filter(|f| matches!(f, Ok(Frame::Open(_)))).count();
    }
    assert_eq!(opens, 10_000);
    assert!(gw.poll_timeout() > PollAt::At(at(3)), "nothing is due now: the draining link does not spin");
}

#[test]
fn a_welcome_allowing_tiny_messages_is_refused() {
    let id = Identity { gateway_id: b"site-f", secret: b"k", boot_epoch: 1 };
    let mut gw = Gateway::new(GatewayConfig::default(), id, 1, vec![SessionSlot::FREE; 4]).unwrap();
    let mut buf = vec![0u8; 1024];
    gw.connected(0, Instant::ZERO, [0; 16]);
    let n = Handshake::new([1; 16], Instant::ZERO).challenge(&mut buf).unwrap();
    gw.handle_message(0, &buf[..n], Instant::ZERO).unwrap();
    gw.poll_transmit(0, Instant::ZERO, &mut buf).unwrap();
    let n = Frame::Welcome(Welcome { link: 0, ping_interval_ms: 0, max_message_len: 30 })
        .encode(&mut buf)
        .unwrap();
    assert!(matches!(gw.handle_message(0, &buf[..n], at(1)), Err(LinkError::Protocol(_))));
}

#[test]
fn the_hello_travels_alone_even_after_a_ping() {
    let id = Identity { gateway_id: b"site-f", secret: b"k", boot_epoch: 1 };
    let mut gw = Gateway::new(GatewayConfig::default(), id, 1, vec![SessionSlot::FREE; 4]).unwrap();
    let mut buf = vec![0u8; 1024];
    gw.connected(0, Instant::ZERO, [0; 16]);
    let hs = Handshake::new([1; 16], Instant::ZERO);
    let mut n = hs.challenge(&mut buf).unwrap();
    n += Frame::Ping(5).encode(&mut buf[n..]).unwrap();
    gw.handle_message(0, &buf[..n], Instant::ZERO).unwrap();
    let n = gw.poll_transmit(0, Instant::ZERO, &mut buf).unwrap().unwrap();
    assert!(hs.hello(&buf[..n], &ServerConfig::default()).is_ok());
}

/// What a gateway keeps per phone for the trunk (the firmware counts its RAM per phone): the
/// slot's state (with its close reason), flag set and link take the four bytes that the state,
/// flags, link and reason bytes took before they were typed; the two queue links (8 bytes) let a
/// flush and an acknowledgement touch only the sessions that changed.
#[test]
fn a_session_slot_stays_80_bytes() {
    assert_eq!(std::mem::size_of::<SessionSlot>(), 80);
}

/// Acknowledges `entries` on link 0 at time `now` (ms), as the aggregator would.
fn ack(gw: &mut Gateway<Vec<SessionSlot>>, entries: &[(SessionId, u64, bool)], now: u64) {
    let mut buf = vec![0u8; BUF];
    let mut acks = entries
        .iter()
        .map(|&(s, total, closed)| trunk::frame::AckEntry { session: s.0, total, closed })
        .peekable();
    let n = trunk::server::write_acks(&mut acks, &mut buf, &ServerConfig::default());
    gw.handle_message(0, &buf[..n], at(now)).unwrap();
}

/// The gateway keeps the sessions to report and to notify in queues threaded through the slots;
/// a slot freed and reused while still queued must neither break a queue (losing the sessions
/// queued after it) nor tell the new session what the old one had.
#[test]
fn a_slot_freed_and_reused_while_queued_keeps_the_queue() {
    let mut gw = up_gateway(2, 1);
    let a = gw.open(Some(b"phone-a")).unwrap();
    let c = gw.open(Some(b"phone-c")).unwrap();
    gw.record(a, 2).unwrap();
    gw.record(c, 1).unwrap();
    assert_eq!(drain(&mut gw, 0, 1), vec![(a.0, 2), (c.0, 1)]);
    ack(&mut gw, &[(a, 2, false), (c, 1, false)], 2); // queued to be notified: a, then c
    gw.close(a, trunk::frame::CloseReason::NORMAL).unwrap();
    drain(&mut gw, 0, 300);
    ack(&mut gw, &[(a, 2, true)], 301); // a's slot is free, still first in the queue
    let b = gw.open(Some(b"phone-b")).unwrap(); // the only free slot: a's
    assert_ne!(a, b);
    gw.record(b, 5).unwrap();
    assert_eq!(drain(&mut gw, 0, 600), vec![(b.0, 5)], "b's report, from a's slot");
    ack(&mut gw, &[(b, 5, false)], 601);
    assert_eq!(gw.poll_durable(), Some((b, 5)), "b, at a's place in the queue, with b's total");
    assert_eq!(gw.poll_durable(), Some((c, 1)), "c, queued after a's slot");
    assert_eq!(gw.poll_durable(), None);
    gw.record(b, 1).unwrap();
    assert_eq!(drain(&mut gw, 0, 900), vec![(b.0, 6)], "the report queue still works after the reuse");
}
