//! The bodies of the fuzz targets, shared by `fuzz_targets/*.rs` (libFuzzer, nightly) and by
//! `tests/replay.rs` (a stable, deterministic replay of the seeds and of pseudo-random inputs,
//! the fallback of `scripts/fuzz.sh` when cargo-fuzz or nightly is missing).
//!
//! Both bodies panic on any broken property, which is what libFuzzer reports as a crash.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use trunk::frame::{
    self, AckEntry, Challenge, Close, CloseReason, DecodeError, EncodeError, Frame, GoAway, GoAwayReason,
    Hello, MessageWriter, Open, Refuse, RefuseCode, Welcome, HEADER_LEN, MAX_PAYLOAD_LEN, NONCE_LEN,
    PROOF_LEN,
};
use trunk::gateway::{
    Gateway, GatewayConfig, Identity, LinkError, LinkPhase, SessionId, SessionSlot, MAX_LINKS,
    MIN_TRANSMIT_BUFFER,
};
use trunk::time::{Duration, Instant, PollAt};

/// Whether to print every step of a gateway run to stderr (`TRUNK_FUZZ_TRACE=1`), for reading a
/// crash: `TRUNK_FUZZ_TRACE=1 cargo +nightly fuzz run gateway fuzz/artifacts/gateway/crash-...`.
fn tracing() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("TRUNK_FUZZ_TRACE").is_ok_and(|v| v == "1"))
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            eprintln!($($arg)*);
        }
    };
}

// ----- decode -----

/// Decodes `data` as one WebSocket message, and checks every frame it yields:
/// - [`frame::frames`] and repeated [`frame::decode`] agree, frame by frame and error by error;
/// - every decoded frame re-encodes to exactly the bytes it came from (the encoding is canonical),
///   and encoding into a buffer one byte short fails cleanly;
/// - the entries of a Counts or Ack frame, written again with [`MessageWriter`], give the same
///   bytes;
/// - a smaller payload bound accepts a prefix of what the largest bound accepts.
pub fn decode(data: &[u8]) {
    let mut offset = 0;
    let mut iter = frame::frames(data, MAX_PAYLOAD_LEN);
    loop {
        let expected = (offset < data.len()).then(|| frame::decode(&data[offset..], MAX_PAYLOAD_LEN));
        match (expected, iter.next()) {
            (None, None) => break,
            (Some(Ok((f, used))), Some(Ok(g))) => {
                assert_eq!(f, g, "frames() and decode() disagree at offset {offset}");
                assert!(used >= HEADER_LEN && offset + used <= data.len());
                check_frame(&f, &data[offset..offset + used]);
                offset += used;
            }
            (Some(Err(e)), Some(Err(g))) => {
                assert_eq!(e, g, "frames() and decode() disagree at offset {offset}");
                check_error(&e, &data[offset..]);
                assert!(iter.next().is_none(), "frames() goes on after an error");
                break;
            }
            (e, g) => panic!("frames() and decode() disagree at offset {offset}: {e:?} vs {g:?}"),
        }
    }

    // The default bound: the same frame, or TooLarge when the payload is over it.
    let small = frame::decode(data, frame::DEFAULT_MAX_PAYLOAD_LEN);
    let large = frame::decode(data, MAX_PAYLOAD_LEN);
    match (&small, &large) {
        (Ok(s), Ok(l)) => assert_eq!(s, l),
        (Err(DecodeError::TooLarge { len, max }), _) => {
            assert_eq!(*max, frame::DEFAULT_MAX_PAYLOAD_LEN);
            assert!(*len > *max);
        }
        (Err(s), Err(l)) => assert_eq!(s, l),
        (s, l) => panic!("bounds disagree: {s:?} vs {l:?}"),
    }
}

fn check_error(e: &DecodeError, rest: &[u8]) {
    let _ = e.to_string();
    match *e {
        DecodeError::Incomplete { needed } => {
            assert!(needed > 0);
            assert!(rest.len() + needed <= HEADER_LEN + MAX_PAYLOAD_LEN);
        }
        DecodeError::TooLarge { len, max } => assert!(len > max),
        DecodeError::UnknownType(t) => assert_eq!(t, rest[0]),
        DecodeError::UnknownVersion(v) => assert_ne!(v, frame::PROTOCOL_VERSION),
        DecodeError::Malformed(what) => assert!(!what.is_empty()),
        // The error type is #[non_exhaustive]: a kind added later must get its own check here.
        other => panic!("a decode error this check does not know: {other:?}"),
    }
}

fn check_frame(f: &Frame<'_>, bytes: &[u8]) {
    assert_eq!(f.kind(), bytes[0]);
    let mut out = vec![0u8; bytes.len()];
    let n = f.encode(&mut out).unwrap_or_else(|e| panic!("decoded {f:?} but cannot encode it: {e}"));
    assert_eq!(n, bytes.len(), "re-encoding {f:?} changed its length");
    assert_eq!(out, bytes, "re-encoding {f:?} changed its bytes");
    assert_eq!(
        f.encode(&mut out[..bytes.len() - 1]),
        Err(EncodeError::BufferTooSmall),
        "encoding {f:?} into a short buffer"
    );

    match f {
        Frame::Counts(c) => {
            assert_eq!(c.as_bytes(), &bytes[HEADER_LEN..]);
            let mut again = vec![0u8; bytes.len()];
            let mut w = MessageWriter::new(&mut again, MAX_PAYLOAD_LEN);
            let mut entries = 0;
            for e in c.iter() {
                assert!(w.count(e.session, e.total), "count entry {e:?} does not fit again");
                entries += 1;
            }
            assert!(entries > 0);
            assert_eq!(w.finish(), bytes.len());
            assert_eq!(again, bytes, "Counts entries written again differ");
        }
        Frame::Ack(a) => {
            assert_eq!(a.as_bytes(), &bytes[HEADER_LEN..]);
            let mut again = vec![0u8; bytes.len()];
            let mut w = MessageWriter::new(&mut again, MAX_PAYLOAD_LEN);
            let mut entries = 0;
            for e in a.iter() {
                assert!(w.ack(e), "ack entry {e:?} does not fit again");
                entries += 1;
            }
            assert!(entries > 0);
            assert_eq!(w.finish(), bytes.len());
            assert_eq!(again, bytes, "Ack entries written again differ");
        }
        Frame::Hello(h) => {
            // Exercise the verifier on whatever arrived; it must not accept a zero proof for
            // a made-up secret unless the proof really is that MAC.
            let ok = trunk::auth::verify(b"secret", &[0; NONCE_LEN], h);
            assert_eq!(ok, trunk::auth::prove(b"secret", &[0; NONCE_LEN], h) == h.proof);
        }
        Frame::Open(o) => assert!(o.device.is_none_or(|d| !d.is_empty())),
        _ => {}
    }
}

// ----- gateway -----

/// Drives a [`Gateway`] with phone events, link events, aggregator messages (valid frames
/// modelled on a real aggregator, arbitrary frames, raw bytes) and clock steps chosen by `data`.
///
/// Besides "never panics", it checks what the gateway sends: every message decodes, holds only
/// frames a gateway may send, fits the buffer, and every count or close it reports is exactly the
/// number of bytes recorded for that session so far.
pub fn gateway(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = run_gateway(&mut u);
}

/// What the harness knows, to check the gateway against.
#[derive(Default)]
struct Model {
    now: Instant,
    /// Every session id handed out, live or not.
    ids: Vec<SessionId>,
    /// Bytes recorded per session (only successful `record`s).
    recorded: HashMap<u64, u64>,
    /// The last total the gateway reported per session, on any link, and whether that report
    /// was a close.
    reported: HashMap<u64, (u64, bool)>,
    /// The last ping number the gateway sent on each link.
    pings: [Option<u64>; MAX_LINKS],
    /// The max message length of the last Welcome each link received.
    max_message: [Option<u64>; MAX_LINKS],
    /// Sessions whose close the gateway accepted.
    closing: HashSet<u64>,
    /// Sessions acknowledged beyond what the gateway had reported (a lying aggregator): their
    /// replays may rightly be skipped, so liveness is not checked for them.
    overacked: HashSet<u64>,
}

fn run_gateway(u: &mut Unstructured<'_>) -> Result<()> {
    let config = GatewayConfig {
        flush_interval: Duration::from_millis(u.int_in_range(0..=2_000)?),
        ping_interval: Duration::from_millis(u.int_in_range(1..=60_000)?),
        link_timeout: Duration::from_millis(u.int_in_range(1..=120_000)?),
        handshake_timeout: Duration::from_millis(u.int_in_range(1..=30_000)?),
        max_payload_len: match u.int_in_range(0..=4)? {
            0 => u.int_in_range(0..=MAX_PAYLOAD_LEN + 10)?,
            1 => 64,
            2 => 1_000,
            3 => MAX_PAYLOAD_LEN,
            _ => frame::DEFAULT_MAX_PAYLOAD_LEN,
        },
    };
    let id_len = u.int_in_range(1..=frame::MAX_GATEWAY_ID_LEN)?;
    let gateway_id = u.bytes(id_len)?.to_vec();
    let secret_len = u.int_in_range(1..=64)?;
    let secret = u.bytes(secret_len)?.to_vec();
    let boot_epoch = u.arbitrary()?;
    let links = u.int_in_range(1..=MAX_LINKS)?;
    let capacity = u.int_in_range(1..=48)?;
    let identity = Identity { gateway_id: &gateway_id, secret: &secret, boot_epoch };
    let mut gw = Gateway::new(config, identity, links, vec![SessionSlot::FREE; capacity])
        .expect("a valid configuration is refused");
    assert_eq!(gw.capacity(), capacity);
    assert_eq!(gw.link_count(), links);

    let mut m = Model { now: Instant::from_millis(u.int_in_range(0..=1 << 40)?), ..Model::default() };
    let mut out = vec![0u8; 70_000];
    let mut steps = 0;
    while !u.is_empty() && steps < 2_000 {
        steps += 1;
        // A link index: mostly valid, sometimes out of range.
        let link =
            if u.ratio(1, 16)? { u.int_in_range(links..=255)? } else { u.int_in_range(0..=links - 1)? };
        match u.int_in_range(0..=11)? {
            0 => {
                trace!("t={} connected({link})", m.now);
                gw.connected(link, m.now, u.arbitrary()?);
            }
            1 => {
                trace!("t={} disconnected({link})", m.now);
                gw.disconnected(link, m.now);
            }
            2 | 3 => {
                let message = aggregator_message(u, &mut m, link, &gw)?;
                // The bound the gateway will honour is the one in the Welcome it reads.
                for f in frame::frames(&message, MAX_PAYLOAD_LEN) {
                    match f {
                        Ok(Frame::Welcome(w)) => {
                            if let Some(slot) = m.max_message.get_mut(link) {
                                *slot = Some(w.max_message_len);
                            }
                        }
                        Ok(Frame::Ack(a)) => {
                            for e in a.iter() {
                                if m.reported.get(&e.session).is_none_or(|r| e.total > r.0) {
                                    m.overacked.insert(e.session);
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                let result = gw.handle_message(link, &message, m.now);
                trace!(
                    "t={} handle_message({link}, {:?}) = {result:?}",
                    m.now,
                    frame::frames(&message, MAX_PAYLOAD_LEN).collect::<Vec<_>>()
                );
                if result.is_err() {
                    gw.disconnected(link, m.now);
                }
            }
            4 => {
                let device = if u.arbitrary()? {
                    let n = u.int_in_range(0..=frame::MAX_DEVICE_ID_LEN + 1)?;
                    Some(u.bytes(n)?.to_vec())
                } else {
                    None
                };
                let live = gw.live_sessions();
                let result = gw.open(device.as_deref());
                trace!("t={} open({device:02x?}) = {result:?}", m.now);
                if let Ok(id) = result {
                    assert!(live < capacity);
                    assert!(!m.recorded.contains_key(&id.0), "session id {id} handed out twice");
                    assert_eq!(gw.total(id), Some(0));
                    m.recorded.insert(id.0, 0);
                    m.ids.push(id);
                }
            }
            5 => {
                let id = pick(u, &m)?;
                let bytes = u64::from(u.arbitrary::<u32>()?);
                let result = gw.record(id, bytes);
                trace!("t={} record({id}, {bytes}) = {result:?}", m.now);
                if let Ok(total) = result {
                    let r = m.recorded.get_mut(&id.0).expect("record on an unknown id succeeded");
                    *r += bytes;
                    assert_eq!(total, *r);
                }
            }
            6 => {
                let id = pick(u, &m)?;
                let result = gw.close(id, CloseReason(u.arbitrary()?));
                trace!("t={} close({id}) = {result:?}", m.now);
                if result.is_ok() {
                    m.closing.insert(id.0);
                }
            }
            7 | 8 => {
                let len = match u.int_in_range(0..=31)? {
                    0 => u.int_in_range(0..=MIN_TRANSMIT_BUFFER - 1)?,
                    1..=12 => u.int_in_range(MIN_TRANSMIT_BUFFER..=2 * MIN_TRANSMIT_BUFFER)?,
                    _ => u.int_in_range(MIN_TRANSMIT_BUFFER..=out.len())?,
                };
                // Mostly until there is nothing left, as a caller must; sometimes one message
                // only, as when a caller waits for the socket before it polls again.
                let polls = if u.ratio(1, 4)? { 1 } else { 64 };
                transmit_n(&mut gw, &mut m, link, &mut out[..len], config, polls);
            }
            9 => {
                let step: u64 = match u.int_in_range(0..=3)? {
                    0 => u.int_in_range(0..=50)?,
                    1 => u.int_in_range(0..=1_000)?,
                    2 => u.int_in_range(0..=20_000)?,
                    _ => u.int_in_range(0..=200_000)?,
                };
                m.now += Duration::from_millis(step);
                trace!("t={} (+{step})", m.now);
            }
            10 => {
                for _ in 0..=capacity {
                    let Some((id, durable)) = gw.poll_durable() else { break };
                    trace!("t={} poll_durable() = {id} {durable}", m.now);
                    let recorded = *m.recorded.get(&id.0).expect("durable news of an unknown id");
                    assert!(durable <= recorded, "session {id}: durable {durable} > recorded {recorded}");
                }
            }
            _ => {
                let _ = gw.reconnect_delay(link, m.now, u.arbitrary()?);
            }
        }
        let _ = gw.poll_timeout();
        assert!(gw.live_sessions() <= capacity);
    }
    // Whatever state it ended in, the gateway can still be polled on every link.
    for link in 0..links {
        transmit(&mut gw, &mut m, link, &mut out[..MIN_TRANSMIT_BUFFER * 4], config);
    }
    for id in &m.ids {
        if let (Some(total), Some(durable)) = (gw.total(*id), gw.durable(*id)) {
            assert_eq!(total, m.recorded[&id.0], "session {id}: total differs from what was recorded");
            assert!(durable <= total, "session {id}: durable {durable} > total {total}");
        }
    }
    if liveness() {
        check_liveness(&mut gw, &mut m, links, &mut out, config);
    }
    Ok(())
}

/// Whether to check liveness at the end of every gateway run (on unless `TRUNK_FUZZ_LIVENESS=0`):
/// after a flush interval with every link kept alive, every live session that has something to
/// report has reported exactly its recorded total, and the gateway does not ask to be polled in
/// the past (a busy loop). See `docs/benchmarks.md`, fuzzing, for what it found.
fn liveness() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("TRUNK_FUZZ_LIVENESS").map_or(true, |v| v != "0"))
}

fn check_liveness(
    gw: &mut Gateway<Vec<SessionSlot>>,
    m: &mut Model,
    links: usize,
    out: &mut [u8],
    config: GatewayConfig,
) {
    trace!("liveness check");
    let mut pong = [0u8; 16];
    let n = Frame::Pong(0).encode(&mut pong).expect("a pong encodes");
    for _ in 0..2 {
        m.now += config.flush_interval + Duration::from_millis(1);
        for link in 0..links {
            if matches!(gw.link_phase(link), LinkPhase::Up | LinkPhase::Draining) {
                gw.handle_message(link, &pong[..n], m.now).expect("a pong is always welcome");
            }
        }
        for link in 0..links {
            transmit(gw, m, link, out, config);
        }
    }
    let up: Vec<usize> = (0..links).filter(|&l| gw.link_phase(l) == LinkPhase::Up).collect();
    // Only links whose messages can hold any frame a gateway sends. Below that a gateway cannot
    // make progress, and then asks to be polled at once, forever; so does a link that was told
    // to go away in the middle of a flush. Both are reported in docs/benchmarks.md (fuzzing) and
    // not checked here, so that the fuzzer looks for other failures.
    if up.iter().any(|&l| m.max_message[l].is_none_or(|x| x < 256)) {
        return;
    }
    let draining = (0..links).any(|l| gw.link_phase(l) == LinkPhase::Draining);
    if !draining {
        match gw.poll_timeout() {
            PollAt::Now => panic!("poll_timeout() is now ({}), yet nothing is sent", m.now),
            PollAt::At(t) => {
                assert!(t >= m.now, "poll_timeout() is {t}, before now ({}), yet nothing is sent", m.now)
            }
            PollAt::Never => {}
        }
    }
    if up.is_empty() {
        return;
    }
    for id in &m.ids {
        let Some(total) = gw.total(*id) else { continue };
        let closing = m.closing.contains(&id.0);
        if (total == 0 && !closing) || m.overacked.contains(&id.0) {
            continue;
        }
        let reported = m.reported.get(&id.0).copied();
        assert!(
            reported.is_some_and(|(t, c)| t == total && (c || !closing)),
            "session {id} (total {total}, closing {closing}) last reported {reported:?}, \
             with links {up:?} up"
        );
    }
}

/// A session id: mostly one handed out (live or not), sometimes any number.
fn pick(u: &mut Unstructured<'_>, m: &Model) -> Result<SessionId> {
    if m.ids.is_empty() || u.ratio(1, 32)? {
        return Ok(SessionId(u.arbitrary()?));
    }
    Ok(m.ids[u.choose_index(m.ids.len())?])
}

/// Polls `link` until it has nothing more to send (a bounded number of times), checking each
/// message; an error disconnects the link, as a caller must.
fn transmit(
    gw: &mut Gateway<Vec<SessionSlot>>,
    m: &mut Model,
    link: usize,
    out: &mut [u8],
    config: GatewayConfig,
) {
    transmit_n(gw, m, link, out, config, 64);
}

/// Like [`transmit`], at most `polls` times.
fn transmit_n(
    gw: &mut Gateway<Vec<SessionSlot>>,
    m: &mut Model,
    link: usize,
    out: &mut [u8],
    config: GatewayConfig,
    polls: usize,
) {
    for _ in 0..polls {
        let result = gw.poll_transmit(link, m.now, out);
        trace!(
            "t={} poll_transmit({link}, [{}]) = {result:?} {:?}",
            m.now,
            out.len(),
            match result {
                Ok(Some(n)) => frame::frames(&out[..n], MAX_PAYLOAD_LEN).collect::<Vec<_>>(),
                _ => Vec::new(),
            }
        );
        match result {
            Ok(None) => break,
            Ok(Some(n)) => {
                assert!(n > 0 && n <= out.len(), "poll_transmit returned {n} for a buffer of {}", out.len());
                if let Some(Some(max)) = m.max_message.get(link) {
                    // After Welcome the gateway honours the aggregator's message bound.
                    if gw.link_phase(link) == LinkPhase::Up {
                        assert!(n as u64 <= *max, "message of {n} bytes over the welcome's {max}");
                    }
                }
                check_gateway_message(m, link, &out[..n], config);
            }
            Err(e) => {
                if let LinkError::BufferTooSmall = e {
                    // Only a short buffer, or a tiny message bound from a Welcome.
                    assert!(
                        out.len() < MIN_TRANSMIT_BUFFER
                            || m.max_message.get(link).is_some_and(|x| x.is_some())
                    );
                }
                gw.disconnected(link, m.now);
                break;
            }
        }
    }
}

fn check_gateway_message(m: &mut Model, link: usize, message: &[u8], config: GatewayConfig) {
    let batch_bound = config.max_payload_len.clamp(21, MAX_PAYLOAD_LEN);
    let mut rest = message;
    while !rest.is_empty() {
        let (f, used) = frame::decode(rest, MAX_PAYLOAD_LEN)
            .unwrap_or_else(|e| panic!("the gateway sent an undecodable message ({e}): {message:02x?}"));
        check_frame(&f, &rest[..used]);
        let payload = used - HEADER_LEN;
        match f {
            Frame::Hello(h) => {
                assert_eq!(usize::from(h.link), link);
            }
            Frame::Open(o) => {
                assert!(m.recorded.contains_key(&o.session), "open of session {} never opened", o.session);
            }
            Frame::Counts(c) => {
                assert!(payload <= batch_bound, "counts payload {payload} over {batch_bound}");
                for e in c.iter() {
                    report(m, e.session, e.total, false);
                }
            }
            Frame::Close(c) => report(m, c.session, c.total, true),
            Frame::Ping(n) => m.pings[link] = Some(n),
            Frame::Pong(_) => {}
            other => panic!("a gateway sent {other:?}"),
        }
        rest = &rest[used..];
    }
}

fn report(m: &mut Model, session: u64, total: u64, close: bool) {
    let recorded = *m.recorded.get(&session).unwrap_or_else(|| panic!("report of unknown session {session}"));
    assert_eq!(total, recorded, "session {session} reported {total} bytes, {recorded} were recorded");
    m.reported.insert(session, (total, close));
}

/// One message as if from the aggregator on `link`: mostly well-formed frames, some of them
/// what a real aggregator would send at this point (challenge, welcome, acks of what was
/// reported), some anything at all, and now and then raw bytes.
fn aggregator_message(
    u: &mut Unstructured<'_>,
    m: &mut Model,
    link: usize,
    gw: &Gateway<Vec<SessionSlot>>,
) -> Result<Vec<u8>> {
    if u.ratio(1, 16)? {
        let n = u.int_in_range(0..=64)?;
        return Ok(u.bytes(n)?.to_vec());
    }
    let mut buf = vec![0u8; 4_096];
    let mut w = MessageWriter::new(&mut buf, MAX_PAYLOAD_LEN);
    let frames = u.int_in_range(1..=3)?;
    for _ in 0..frames {
        let text;
        let f = match u.int_in_range(0..=11)? {
            0 => Frame::Challenge(Challenge { version: frame::PROTOCOL_VERSION, nonce: u.arbitrary()? }),
            1 => {
                let max_message_len = match u.int_in_range(0..=4)? {
                    0 => u.arbitrary()?,
                    1 => u.int_in_range(0..=300)?,
                    2 => 1_024,
                    _ => 64 * 1024,
                };
                let to = if u.ratio(1, 8)? { u.arbitrary()? } else { link as u8 };
                Frame::Welcome(Welcome { link: to, ping_interval_ms: u.arbitrary()?, max_message_len })
            }
            2 | 3 => {
                // Acknowledge what the gateway reported, as a faithful aggregator would (or not
                // quite: a total off by one, a close flag that was not earned).
                let mut sessions: Vec<(u64, (u64, bool))> =
                    m.reported.iter().map(|(k, v)| (*k, *v)).collect();
                sessions.sort_unstable();
                let n = u.int_in_range(0..=sessions.len().min(64))?;
                let mut any = false;
                for _ in 0..n {
                    let (session, (mut total, mut closed)) = sessions[u.choose_index(sessions.len())?];
                    if u.ratio(1, 16)? {
                        total = total.wrapping_add(u.int_in_range(0..=2)?).wrapping_sub(1);
                    }
                    if u.ratio(1, 16)? {
                        closed = !closed;
                    }
                    any |= w.ack(AckEntry { session, total, closed });
                }
                if !any {
                    w.ack(AckEntry {
                        session: u.arbitrary()?,
                        total: u.arbitrary()?,
                        closed: u.arbitrary()?,
                    });
                }
                continue;
            }
            4 => {
                let n = u.int_in_range(1..=8)?;
                for _ in 0..n {
                    let session = if u.arbitrary()? { u.int_in_range(0..=200)? } else { u.arbitrary()? };
                    w.ack(AckEntry { session, total: u.arbitrary()?, closed: u.arbitrary()? });
                }
                continue;
            }
            5 => Frame::Ping(u.arbitrary()?),
            6 => Frame::Pong(if u.ratio(3, 4)? {
                m.pings.get(link).copied().flatten().unwrap_or(0)
            } else {
                u.arbitrary()?
            }),
            7 => Frame::GoAway(GoAway {
                retry_after_ms: if u.arbitrary()? { u.int_in_range(0..=60_000)? } else { u.arbitrary()? },
                reason: GoAwayReason(u.arbitrary()?),
            }),
            8 => {
                let len = u.int_in_range(0..=32)?;
                text = u.bytes(len)?.to_vec();
                Frame::Refuse(Refuse { code: RefuseCode(u.arbitrary()?), text: &text })
            }
            9 => {
                // A frame only a gateway may send.
                match u.int_in_range(0..=3)? {
                    0 => Frame::Open(Open { session: u.arbitrary()?, device: None }),
                    1 => Frame::Close(Close {
                        session: u.arbitrary()?,
                        total: u.arbitrary()?,
                        reason: CloseReason(0),
                    }),
                    2 => {
                        w.count(u.arbitrary()?, u.arbitrary()?);
                        continue;
                    }
                    _ => Frame::Hello(Hello {
                        version: frame::PROTOCOL_VERSION,
                        link: link as u8,
                        boot_epoch: gw.boot_epoch(),
                        nonce: [0; NONCE_LEN],
                        gateway_id: b"x",
                        proof: [0; PROOF_LEN],
                    }),
                }
            }
            10 => {
                // Acks of live sessions with any total up to what was recorded.
                let id = pick(u, m)?;
                let recorded = m.recorded.get(&id.0).copied().unwrap_or(0);
                w.ack(AckEntry {
                    session: id.0,
                    total: u.int_in_range(0..=recorded)?,
                    closed: u.ratio(1, 4)?,
                });
                continue;
            }
            _ => {
                // A challenge of another version.
                Frame::Challenge(Challenge { version: u.arbitrary()?, nonce: u.arbitrary()? })
            }
        };
        if w.frame(&f).is_err() {
            break;
        }
    }
    let n = w.finish();
    buf.truncate(n);
    if u.ratio(1, 32)? {
        let tail = u.int_in_range(0..=8)?;
        buf.extend_from_slice(u.bytes(tail)?);
    }
    Ok(buf)
}
