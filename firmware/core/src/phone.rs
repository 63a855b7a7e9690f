//! Serves one phone connection: the upgrade, then every payload byte counted into its session,
//! pongs and the close handshake, its durable total when the aggregator acknowledges, and the
//! idle timeout. Generic over any socket (`embedded-io-async` plus `edge-nal`'s shutdown), so
//! the same code serves phones on embassy-net and on the host's kernel TCP.
//!
//! What a phone costs is this future (its size is reported in `docs/benchmarks.md`), the
//! socket's buffers, and the hub's [`SessionSlot`](trunk::gateway::SessionSlot) and waker.

use core::cell::{RefCell, RefMut};
use core::ops::Range;

use edge_nal::{Close, TcpAccept, TcpShutdown};
use embassy_futures::select::{select3, Either3};
use embassy_time::{with_deadline, Duration, Instant, Timer};
use embedded_io_async::{Read, Write};
use trunk::frame::CloseReason;
use trunk::gateway::SessionId;
use trunk::phone::{durable_message, MAX_DURABLE_MESSAGE_LEN};

use crate::config::PhoneConfig;
use crate::hub::{Durable, Hub};
use crate::upgrade::{
    accept_answer, refusal_answer, AnswerScratch, Parsed, Refusal, RequestParser, Upgrade, KEY_LEN,
};
use crate::ws::{close_code, Connection, Event};

/// Bytes read from a phone at a time. Phones send a few bytes at a time (a 1-byte message is a
/// 7-byte frame); a larger request or message is simply read in more pieces.
pub const READ_CHUNK: usize = 32;

/// While every request parser is taken, a phone whose request has come looks again this often.
pub const PARSER_RETRY_MS: u64 = 5;

/// How a connection ended, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request was refused with this status.
    Refused(u16),
    /// The phone never completed its request (slow, silent, or gone).
    NoRequest,
    /// A session that ended: the phone closed, went away, idled, broke the protocol, or the
    /// gateway shut down.
    Session(CloseReason),
}

/// What every phone's task shares: the hub, the bounds, and the request parsers.
///
/// A parser (a head line buffer and what is kept of the request, about 200 bytes) is needed
/// only while a request is read, a few milliseconds of a session that lasts hours; so phones
/// borrow one from a small pool instead of each carrying its own. The pool's size bounds how
/// many upgrades are read at once; a phone that finds none free waits (its request stays in
/// its TCP buffer) within its handshake timeout.
pub struct Phones<'a, 'h> {
    /// The trunk state machine the sessions count into.
    pub hub: &'a Hub<'h>,
    /// Bounds and timings.
    pub config: &'a PhoneConfig,
    parsers: &'a [RefCell<RequestParser>],
}

impl core::fmt::Debug for Phones<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Phones").field("parsers", &self.parsers.len()).finish_non_exhaustive()
    }
}

impl<'a, 'h> Phones<'a, 'h> {
    /// Phones served with `parsers` (at least one) for their requests.
    pub fn new(hub: &'a Hub<'h>, config: &'a PhoneConfig, parsers: &'a [RefCell<RequestParser>]) -> Self {
        Self { hub, config, parsers }
    }

    /// A free parser, reset; `None` while all are taken.
    fn parser(&self) -> Option<RefMut<'a, RequestParser>> {
        let mut parser = self.parsers.iter().find_map(|p| p.try_borrow_mut().ok())?;
        *parser = RequestParser::new(self.config.max_request_len);
        Some(parser)
    }
}

/// Accepts and serves phones one after another, for ever: run as many of these as the board has
/// sockets for (each holds one phone at a time). On embassy-net every worker listens with its own
/// socket, which is how a smoltcp server accepts several connections.
pub async fn worker<A: TcpAccept>(acceptor: &A, phones: &Phones<'_, '_>) -> ! {
    loop {
        // Only the socket is kept while the phone is served, not the rest of the accept.
        let mut socket = match acceptor.accept().await {
            Ok((_, socket)) => socket,
            Err(_) => {
                Timer::after_millis(100).await; // out of sockets for a moment
                continue;
            }
        };
        serve(&mut socket, phones).await;
    }
}

/// Serves one phone connection until it ends.
///
/// The work is split into steps awaited one after another (the request, the answer, the
/// session) so that their state shares the same bytes of this future: what a phone costs is the
/// largest of them, not their sum. The request's bytes live in a borrowed parser, and the
/// session keeps only what it must (see `docs/benchmarks.md` for the sizes).
pub async fn serve<S: Read + Write + TcpShutdown>(socket: &mut S, phones: &Phones<'_, '_>) -> Outcome {
    let (hub, config) = (phones.hub, phones.config);
    let mut buf = [0u8; READ_CHUNK];
    // What the request decided, without the request: its bytes (device id, key) are out of scope
    // before the next await, so no later state of this future keeps room for them.
    let start = match read_request(&mut *socket, &mut buf, phones).await {
        Ok((upgrade, rest)) => match hub.open(upgrade.device.as_ref().map(|d| d.as_slice())) {
            Ok(id) => Start::Accept { id, key: upgrade.key, rest },
            Err(_) if hub.is_stopping() => Start::Refuse(Refusal::ShuttingDown),
            Err(_) => Start::Refuse(Refusal::Full),
        },
        Err(Some(refusal)) => Start::Refuse(refusal),
        Err(None) => Start::Gone,
    };
    let (id, rest) = match start {
        Start::Accept { id, key, rest } => {
            let mut scratch: AnswerScratch = [0; _];
            if !write(socket, &accept_answer(&key, &mut scratch), config).await {
                hub.close(id, CloseReason::LOST, false);
                socket.abort().await.ok();
                return Outcome::Session(CloseReason::LOST);
            }
            (id, rest)
        }
        Start::Refuse(refusal) => return refuse(socket, hub, refusal, &mut buf, config).await,
        Start::Gone => {
            socket.abort().await.ok();
            return Outcome::NoRequest;
        }
    };
    let (reason, failed) = session(socket, hub, id, &mut buf, rest, config).await;
    hub.close(id, reason, failed);
    if reason == CloseReason::LOST {
        socket.abort().await.ok();
    } else {
        finish(socket, &mut buf, config).await;
    }
    Outcome::Session(reason)
}

/// What a request led to.
enum Start {
    /// A session was opened: answer 101 with the accept key for `key`; `rest` of the read buffer
    /// holds the first WebSocket bytes.
    Accept { id: SessionId, key: [u8; KEY_LEN], rest: Range<usize> },
    /// Answer with this refusal.
    Refuse(Refusal),
    /// The phone never completed its request.
    Gone,
}

/// Reads the upgrade request within the handshake timeout: the request and the range of `buf`
/// that holds bytes after it, or what to refuse (`None`: the phone never completed it).
///
/// The parser's `RefMut` is held across awaits on purpose: the borrow is what marks the parser
/// taken, and other phones only ever `try_borrow_mut` (see [`Phones`]), so it cannot panic.
#[allow(clippy::await_holding_refcell_ref)]
async fn read_request<S: Read>(
    socket: &mut S,
    buf: &mut [u8; READ_CHUNK],
    phones: &Phones<'_, '_>,
) -> Result<(Upgrade, Range<usize>), Option<Refusal>> {
    let deadline = Instant::now() + Duration::from_millis(phones.config.handshake_timeout_ms);
    let io = async {
        // The first bytes, then a parser: a phone that connects and says nothing holds none.
        let mut n = match socket.read(buf).await {
            Ok(n) if n > 0 => n,
            _ => return Err(None),
        };
        let mut parser = loop {
            match phones.parser() {
                Some(parser) => break parser,
                None => Timer::after_millis(PARSER_RETRY_MS).await,
            }
        };
        loop {
            match parser.feed(&buf[..n]) {
                Parsed::More => {}
                Parsed::Upgrade { upgrade, consumed } => return Ok((upgrade, consumed..n)),
                Parsed::Refuse(refusal) => return Err(Some(refusal)),
            }
            n = match socket.read(buf).await {
                Ok(n) if n > 0 => n,
                _ => return Err(None),
            };
        }
    };
    with_deadline(deadline, io).await.unwrap_or(Err(None))
}

/// The WebSocket session: returns why it ended and whether the phone broke the protocol.
///
/// Its state is what a connected phone costs, so only what must survive an await is kept: the
/// connection's framing state, the session id, the durable total told, the idle deadline.
async fn session<S: Read + Write>(
    socket: &mut S,
    hub: &Hub<'_>,
    id: SessionId,
    buf: &mut [u8; READ_CHUNK],
    mut pending: Range<usize>,
    config: &PhoneConfig,
) -> (CloseReason, bool) {
    let mut ws = Connection::new(config.max_message_len);
    let mut told = 0;
    let mut idle_deadline = Instant::now() + Duration::from_millis(config.idle_timeout_ms);
    let mut reason = CloseReason::NORMAL;
    let mut failed = false;
    loop {
        // Bytes read (or that came with the request): count them, note a close or an error, and
        // answer in order (a pong echoes its ping's payload from `buf` as it comes).
        while !pending.is_empty() {
            let fed = ws.feed(&mut buf[pending.clone()]);
            hub.record(id, fed.payload);
            let echo = pending.start + fed.echo.start..pending.start + fed.echo.end;
            let consumed = fed.consumed;
            pending.start += consumed;
            match fed.event {
                Some(Event::Failed(_)) => (reason, failed) = (CloseReason::PROTOCOL_ERROR, true),
                Some(Event::Closed(_)) => reason = CloseReason::NORMAL,
                None => {}
            }
            if !echo.is_empty() && !write(socket, &[&buf[echo]], config).await {
                return (CloseReason::LOST, failed);
            }
            if !send_owed(socket, &mut ws, config).await {
                return (CloseReason::LOST, failed);
            }
            if consumed == 0 {
                break; // the connection is done: the rest is never read
            }
        }
        if !send_owed(socket, &mut ws, config).await {
            return (CloseReason::LOST, failed);
        }
        if ws.is_done() {
            return (reason, failed);
        }
        // Nothing may be written in the middle of a pong: its durable total waits.
        let echoing = ws.is_echoing();
        let durable = async {
            match echoing {
                true => core::future::pending().await,
                false => hub.durable_above(id, told).await,
            }
        };
        match select3(socket.read(buf), durable, Timer::at(idle_deadline)).await {
            Either3::First(Ok(n)) if n > 0 => {
                pending = 0..n;
                idle_deadline = Instant::now() + Duration::from_millis(config.idle_timeout_ms);
            }
            // EOF or reset without a close frame: the phone is gone.
            Either3::First(_) => return (CloseReason::LOST, false),
            Either3::Second(Durable::Total(total)) => {
                told = total;
                if !ws.is_closing() {
                    let mut frame = [0u8; 2 + MAX_DURABLE_MESSAGE_LEN];
                    let len = durable_frame(total, &mut frame);
                    if !write(socket, &[&frame[..len]], config).await {
                        return (CloseReason::LOST, false);
                    }
                }
            }
            Either3::Second(Durable::Stopping) => {
                reason = CloseReason::SHUTDOWN;
                ws.close(close_code::GOING_AWAY);
                // Keep serving until the phone answers the close (its last bytes still count).
                idle_deadline = Instant::now() + Duration::from_millis(config.linger_ms);
                told = u64::MAX;
            }
            Either3::Third(()) => {
                if ws.is_closing() {
                    return (reason, failed); // the phone never answered our close
                }
                reason = CloseReason::IDLE;
                ws.close(close_code::NORMAL);
                idle_deadline = Instant::now() + Duration::from_millis(config.linger_ms);
            }
        }
    }
}

/// Sends what the gateway owes the phone: a pong's header, its close (from the connection's own
/// few bytes: the phone's task keeps no frame buffer).
async fn send_owed<S: Write>(socket: &mut S, ws: &mut Connection, config: &PhoneConfig) -> bool {
    while let Some(frame) = ws.poll_transmit() {
        if !write(socket, &[frame], config).await {
            return false;
        }
    }
    true
}

/// `{"durable":N}` as a text frame in `frame`; returns its length.
fn durable_frame(total: u64, frame: &mut [u8; 2 + MAX_DURABLE_MESSAGE_LEN]) -> usize {
    let text: &mut [u8; MAX_DURABLE_MESSAGE_LEN] = (&mut frame[2..]).try_into().expect("sized above");
    let len = durable_message(total, text);
    frame[..2].copy_from_slice(&[0x81, len as u8]); // FIN + text; len < 126 fits the short form
    2 + len
}

/// Answers a refused request, then closes without losing the answer.
async fn refuse<S: Read + Write + TcpShutdown>(
    socket: &mut S,
    hub: &Hub<'_>,
    refusal: Refusal,
    buf: &mut [u8; READ_CHUNK],
    config: &PhoneConfig,
) -> Outcome {
    hub.refused();
    let mut scratch: AnswerScratch = [0; _];
    if write(socket, &refusal_answer(refusal, &mut scratch), config).await {
        finish(socket, buf, config).await;
    } else {
        socket.abort().await.ok();
    }
    Outcome::Refused(refusal.status())
}

/// Writes `parts`, one after another, each within the write timeout (a phone that reads nothing
/// fills its socket's send buffer, and the write that no longer fits times out).
///
/// Not flushed: the bytes are in the socket's send buffer, which the stack sends on its own;
/// before closing, [`finish`] waits for what was written to go out.
async fn write<S: Write>(socket: &mut S, parts: &[&[u8]], config: &PhoneConfig) -> bool {
    for part in parts {
        let deadline = Instant::now() + Duration::from_millis(config.write_timeout_ms);
        if !matches!(with_deadline(deadline, socket.write_all(part)).await, Ok(Ok(()))) {
            return false;
        }
    }
    true
}

/// Closes our side, then reads (and drops) what the phone still sends until it closes too or the
/// linger time passes. Closing with unread input would make the kernel send a reset, which can
/// destroy the answer or close frame just written.
async fn finish<S: Read + TcpShutdown>(socket: &mut S, buf: &mut [u8; READ_CHUNK], config: &PhoneConfig) {
    let deadline = Instant::now() + Duration::from_millis(config.linger_ms);
    let drained = async {
        socket.close(Close::Write).await.ok();
        while let Ok(n) = socket.read(buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = with_deadline(deadline, drained).await;
    socket.abort().await.ok();
}
