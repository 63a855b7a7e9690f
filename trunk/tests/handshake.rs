//! The link handshake and the gateway's behaviour a user of it would notice: who gets in, what a
//! refused gateway is told, sessions beyond capacity, and ids that are never reused in a boot.

use trunk::frame::{self, CloseReason, Frame, RefuseCode};
use trunk::gateway::{Gateway, GatewayConfig, Identity, LinkError, LinkPhase, OpenError, SessionSlot};
use trunk::ledger::{Ledger, LedgerSlot, SessionKey};
use trunk::server::{self, Handshake, HandshakeError, ServerConfig};
use trunk::time::{Duration, Instant};

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

fn gateway(secret: &'static [u8], sessions: usize) -> Gateway<Vec<SessionSlot>> {
    let id = Identity { gateway_id: b"site-1", secret, boot_epoch: 77 };
    Gateway::new(GatewayConfig::default(), id, 2, vec![SessionSlot::FREE; sessions]).unwrap()
}

/// Runs a handshake on link 0 at time 1 ms; returns the server's verdict.
fn handshake(
    gw: &mut Gateway<Vec<SessionSlot>>,
    server_secret: Option<&[u8]>,
) -> Result<server::ServerLink, HandshakeError> {
    trunk::harness::handshake(gw, 0, at(1), server_secret, &ServerConfig::default())
}

#[test]
fn the_right_secret_opens_the_link_and_sessions_flow() {
    let config = ServerConfig::default();
    let mut gw = gateway(b"s3cret", 8);
    let mut link = handshake(&mut gw, Some(b"s3cret")).expect("verified");
    assert_eq!((link.boot_epoch(), link.link_index()), (77, 0));
    assert_eq!(link.gateway(), trunk::harness::GATEWAY_NUMBER);
    let mut buf = [0u8; 1024];
    let n = link.poll_transmit(at(2), &config, &mut buf).unwrap().expect("welcome");
    gw.handle_message(0, &buf[..n], at(3)).unwrap();
    assert_eq!(gw.link_phase(0), LinkPhase::Up);

    let phone = gw.open(Some(b"phone-a")).unwrap();
    gw.record(phone, 3).unwrap();
    let n = gw.poll_transmit(0, at(4), &mut buf).unwrap().expect("open and count");
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 5);
    let got = link.handle_message(&buf[..n], at(5), &config, &mut ledger, 42).unwrap();
    assert_eq!((got.opens, got.counts), (1, 1));
    let mut keys = [SessionKey { gateway: 0, boot_epoch: 0, session: 0 }; 10];
    let flight = ledger.begin_flush(&mut keys, at(5));
    let row = ledger.rows(&flight).next().unwrap();
    assert_eq!(
        (row.key.gateway, row.key.boot_epoch, row.total, row.device),
        (trunk::harness::GATEWAY_NUMBER, 77, 3, Some(&b"phone-a"[..]))
    );
    let mut acks = Vec::new();
    ledger.commit_succeeded(flight, |route, _, e| acks.push((route, e)));
    assert_eq!(acks[0].0, 42);
    let n = server::write_acks(&mut acks.into_iter().map(|(_, e)| e).peekable(), &mut buf, &config);
    assert_eq!(gw.durable(phone), Some(0));
    gw.handle_message(0, &buf[..n], at(6)).unwrap();
    assert_eq!(gw.durable(phone), Some(3));
    assert_eq!(gw.poll_durable(), Some((phone, 3)));
    assert_eq!(gw.poll_durable(), None);
}

/// A caller's per-gateway quota: reports of sessions it does not admit are skipped (not in the
/// ledger, so never written nor acknowledged), the others are recorded as usual.
#[test]
fn reports_of_sessions_not_admitted_are_skipped() {
    let config = ServerConfig::default();
    let mut gw = gateway(b"s3cret", 8);
    let mut link = handshake(&mut gw, Some(b"s3cret")).expect("verified");
    let mut buf = [0u8; 1024];
    let n = link.poll_transmit(at(2), &config, &mut buf).unwrap().expect("welcome");
    gw.handle_message(0, &buf[..n], at(3)).unwrap();
    let phones: Vec<_> = (0..3).map(|_| gw.open(Some(b"phone")).unwrap()).collect();
    for p in &phones {
        gw.record(*p, 5).unwrap();
    }
    gw.close(phones[2], CloseReason::NORMAL).unwrap();
    let n = gw.poll_transmit(0, at(4), &mut buf).unwrap().expect("opens, counts and a close");
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 5);
    let refused = phones[1].0;
    let mut asked = Vec::new();
    let got = link
        .handle_message_admitting(&buf[..n], at(5), &config, &mut ledger, 42, |s| {
            asked.push(s);
            s != refused
        })
        .unwrap();
    assert!(asked.contains(&refused));
    assert_eq!(got.skipped, asked.iter().filter(|s| **s == refused).count());
    assert!(got.skipped >= 1);
    assert_eq!(ledger.len(), 2, "only the admitted sessions are in the ledger");
    let mut keys = [SessionKey { gateway: 0, boot_epoch: 0, session: 0 }; 10];
    let flight = ledger.begin_flush(&mut keys, at(5));
    assert!(flight.keys().iter().all(|k| k.session != refused));
    ledger.commit_succeeded(flight, |_, _, _| {});
    // Everything admitted: the plain call records all of it.
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 5);
    let got = link.handle_message(&buf[..n], at(6), &config, &mut ledger, 42).unwrap();
    assert_eq!((got.skipped, ledger.len()), (0, 3));
}

#[test]
fn a_wrong_secret_or_unknown_gateway_is_refused_with_a_reason() {
    let mut gw = gateway(b"wrong", 8);
    let err = handshake(&mut gw, Some(b"s3cret")).unwrap_err();
    assert_eq!(err, HandshakeError::BadProof);
    assert_eq!(err.refuse_code(), RefuseCode::BAD_PROOF);
    let mut buf = [0u8; 300];
    let n = server::write_refuse(err.refuse_code(), err.reason(), &mut buf).unwrap();
    match frame::decode(&buf[..n], 1024).unwrap().0 {
        Frame::Refuse(r) => assert_eq!(r.text, b"bad proof"),
        other => panic!("{other:?}"),
    }
    assert_eq!(gw.handle_message(0, &buf[..n], at(3)), Err(LinkError::Refused(RefuseCode::BAD_PROOF)));
    gw.disconnected(0, at(3));
    assert!(gw.reconnect_delay(0, at(3), u32::MAX) > Duration::ZERO, "a refused gateway backs off");

    let mut gw = gateway(b"s3cret", 8);
    assert_eq!(handshake(&mut gw, None).unwrap_err(), HandshakeError::UnknownGateway);
}

#[test]
fn a_garbage_first_message_is_a_protocol_error() {
    let hs = Handshake::new([0; 16], Instant::ZERO);
    let config = ServerConfig::default();
    assert!(matches!(hs.hello(b"GET / HTTP/1.1\r\n", &config), Err(HandshakeError::Decode(_))));
    let mut buf = [0u8; 16];
    let n = Frame::Ping(1).encode(&mut buf).unwrap();
    assert_eq!(hs.hello(&buf[..n], &config), Err(HandshakeError::NotHello));
    assert!(!hs.expired(at(10_000), &config));
    assert!(hs.expired(at(10_001), &config));
    assert_eq!(hs.deadline(&config), at(10_001));
}

/// One round trip between link 0 of `gw` and the aggregator's side at time `now`: what the
/// gateway sends goes into `ledger`, which commits it, and the acknowledgements go back. Returns
/// the acknowledgement message (empty when there was nothing to acknowledge).
fn round_trip(
    gw: &mut Gateway<Vec<SessionSlot>>,
    link: &mut server::ServerLink,
    ledger: &mut Ledger<Vec<LedgerSlot>>,
    now: Instant,
) -> Vec<u8> {
    let config = ServerConfig::default();
    let mut buf = [0u8; 1024];
    while let Some(n) = gw.poll_transmit(0, now, &mut buf).unwrap() {
        link.handle_message(&buf[..n], now, &config, ledger, 0).unwrap();
    }
    let mut keys = [SessionKey { gateway: 0, boot_epoch: 0, session: 0 }; 64];
    let flight = ledger.begin_flush(&mut keys, now);
    let mut acks = Vec::new();
    ledger.commit_succeeded(flight, |_, _, entry| acks.push(entry));
    let mut acks = acks.into_iter().peekable();
    let n = server::write_acks(&mut acks, &mut buf, &config);
    assert!(acks.next().is_none(), "every acknowledgement fits in one message");
    if n > 0 {
        gw.handle_message(0, &buf[..n], now).unwrap();
    }
    buf[..n].to_vec()
}

#[test]
fn a_full_gateway_refuses_new_phones_and_never_reuses_an_id() {
    let config = ServerConfig::default();
    let mut gw = gateway(b"s", 2);
    let mut link = handshake(&mut gw, Some(b"s")).expect("verified");
    let mut buf = [0u8; 1024];
    let n = link.poll_transmit(at(2), &config, &mut buf).unwrap().expect("welcome");
    gw.handle_message(0, &buf[..n], at(2)).unwrap();
    assert_eq!(gw.link_phase(0), LinkPhase::Up);
    let mut ledger = Ledger::new(vec![LedgerSlot::EMPTY; 64], 5);

    let a = gw.open(None).unwrap();
    let b = gw.open(None).unwrap();
    assert_eq!(gw.open(None), Err(OpenError::Full));
    assert_eq!(gw.open(Some(&[b'x'; 33])), Err(OpenError::DeviceId));
    gw.close(a, CloseReason::NORMAL).unwrap();
    // Still full: the close is not yet durable.
    assert_eq!(gw.open(None), Err(OpenError::Full));
    assert!(gw.record(a, 1).is_err(), "a closed session takes no more bytes");

    // Ids are what the aggregator keys a session's bytes by (with the gateway and its boot
    // epoch), so an id given twice in one boot would add a new phone's bytes to an old one's row.
    // Every session is closed and acknowledged, its slot given to a new phone, 100 times over
    // the 2 slots: no id may come back.
    let mut ids = std::collections::HashSet::from([a, b]);
    assert_eq!(ids.len(), 2, "{a} and {b}");
    let mut live = vec![b];
    let mut now = at(3);
    let mut first_acks = None;
    for round in 0..100 {
        for id in live.drain(..) {
            gw.record(id, 1).unwrap();
            gw.close(id, CloseReason::NORMAL).unwrap();
        }
        // A flush interval later: the closes are reported, committed and acknowledged.
        now += GatewayConfig::default().flush_interval + Duration::from_millis(1);
        let acks = round_trip(&mut gw, &mut link, &mut ledger, now);
        first_acks.get_or_insert(acks);
        // The slots are free again: the gateway is not full, and new phones reuse the slots.
        while let Ok(id) = gw.open(None) {
            assert!(ids.insert(id), "round {round}: id {id} given again in the same boot");
            live.push(id);
        }
        assert_eq!(live.len(), 2, "round {round}: both slots were freed and given out again");
    }
    assert_eq!(ids.len(), 2 + 2 * 100);

    // What unique ids are for: an acknowledgement that arrives late (a duplicate of the first
    // round's, which closed the first sessions) touches none of the sessions now in their slots.
    let stale = first_acks.expect("the first round's acknowledgements");
    assert!(!stale.is_empty());
    gw.handle_message(0, &stale, now + Duration::from_millis(1)).expect("a late duplicate is ignored");
    for id in &live {
        assert_eq!((gw.total(*id), gw.durable(*id)), (Some(0), Some(0)), "session {id}");
        gw.record(*id, 1).expect("still open");
    }
}

#[test]
fn a_silent_link_times_out() {
    let mut gw = gateway(b"s", 2);
    gw.connected(1, Instant::ZERO, [0; 16]);
    let mut buf = [0u8; 512];
    assert_eq!(gw.poll_transmit(1, at(5_000), &mut buf), Ok(None));
    assert_eq!(gw.poll_transmit(1, at(10_001), &mut buf), Err(LinkError::TimedOut));
}
