//! Serves one phone connection: the upgrade, then every payload byte counted into its session,
//! pongs and the close handshake, its durable total when the aggregator acknowledges, and the
//! idle timeout; or, asked for a file of the phone page ([`crate::page`]), that file. Generic over any socket (`embedded-io-async` plus `edge-nal`'s shutdown), so
//! the same code serves phones on embassy-net and on the host's kernel TCP.
//!
//! What a phone costs is this future (its size is reported in `docs/benchmarks.md`), the
//! socket's buffers, and the hub's [`SessionSlot`](trunk::gateway::SessionSlot) and waker.

use core::cell::{RefCell, RefMut};
use core::future::{poll_fn, Future};
use core::ops::Range;
use core::pin::Pin;
use core::task::Poll;

use edge_nal::{Close, TcpAccept, TcpShutdown};
use embassy_futures::select::{select3, Either3};
use embassy_time::{with_deadline, Duration, Instant, TimeoutError, Timer};
use embedded_io_async::{Read, Write};
use trunk::frame::CloseReason;
use trunk::gateway::SessionId;
use trunk::phone::{durable_message, MAX_DURABLE_MESSAGE_LEN};

use crate::config::PhoneConfig;
use crate::hub::{Durable, Hub};
use crate::page;
use crate::upgrade::{
    accept_answer, refusal_answer, AnswerScratch, Parsed, Refusal, RequestParser, Tokens, Upgrade,
};
use crate::ws::{close_code, Connection, Event};

/// Bytes read from a phone at a time. Phones send a few bytes at a time (a 1-byte message is a
/// 7-byte frame); a larger request or message is simply read in more pieces.
pub const READ_CHUNK: usize = 32;

/// While every request parser is taken, a phone whose request has come looks again this often.
pub const PARSER_RETRY_MS: u64 = 5;

/// A page file is written this many bytes at a time, each piece within the write timeout: a
/// browser that stops reading is let go after that timeout, one that reads slowly is served.
pub const PAGE_WRITE_CHUNK: usize = 1024;

/// How a connection ended, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request was refused with this status.
    Refused(u16),
    /// A file of the phone page was sent (`true`) or the browser went away first (`false`).
    Page(bool),
    /// The phone never completed its request (slow, silent, or gone).
    NoRequest,
    /// A session that ended: the phone closed, went away, idled, broke the protocol, or the
    /// gateway shut down.
    Session(CloseReason),
}

/// Phones must prove which device they are (docs/SECURITY.md): a device token signed with the
/// operator's key, checked at the upgrade against `key`; `clock` tells the time for the token's
/// expiry (Unix seconds), or `None` on a board without a clock: it then uses the aggregator's
/// time from the last link that came up ([`Hub::unix_now`]), and before any did, checks the
/// signature and the device only.
#[derive(Debug, Clone, Copy)]
pub struct DeviceAuth<'a> {
    /// The operator's public key (`aggregator device public-key`; a board's provisioning block).
    pub key: &'a device_token::PublicKey,
    /// Now, in Unix seconds, if known.
    pub clock: fn() -> Option<u64>,
}

/// What every phone's task shares: the hub, the bounds, how phones prove their device, and the
/// request parsers.
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
    /// `None`: phones are not asked to prove their device (`--phone-auth off`, or a board
    /// provisioned without the operator's key).
    pub auth: Option<DeviceAuth<'a>>,
    parsers: &'a [RefCell<RequestParser>],
}

impl core::fmt::Debug for Phones<'_, '_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Phones").field("parsers", &self.parsers.len()).finish_non_exhaustive()
    }
}

impl<'a, 'h> Phones<'a, 'h> {
    /// Phones served with `parsers` (at least one) for their requests, proving their device with
    /// `auth`.
    pub fn new(
        hub: &'a Hub<'h>,
        config: &'a PhoneConfig,
        auth: Option<DeviceAuth<'a>>,
        parsers: &'a [RefCell<RequestParser>],
    ) -> Self {
        Self { hub, config, auth, parsers }
    }

    /// What the request parser checks tokens with, now: the gateway's clock, or else the time
    /// the aggregator last told (a board has no clock of its own).
    fn tokens(&self) -> Option<Tokens<'a>> {
        self.auth.map(|auth| Tokens { key: auth.key, now: (auth.clock)().or_else(|| self.hub.unix_now()) })
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
        // Only the socket is kept while the phone is served, not the rest of the accept (the
        // match ends before the retry's await, so the accept's result is not kept across it).
        let mut socket = loop {
            if let Ok((_, socket)) = acceptor.accept().await {
                break socket;
            }
            Timer::after_millis(100).await; // out of sockets for a moment
        };
        serve(&mut socket, phones).await;
    }
}

/// Serves one phone connection until it ends.
///
/// The work is split into steps awaited one after another (the handshake, the session, the
/// close) so that their state shares the same bytes of this future: what a phone costs is the
/// largest of them, not their sum. The steps get the connection by reference ([`Conn`]), so each
/// keeps one pointer instead of copies of its parts; the request's bytes live in a borrowed
/// parser; the session keeps only what it must (see `docs/benchmarks.md` for the sizes).
pub async fn serve<S: Read + Write + TcpShutdown>(socket: &mut S, phones: &Phones<'_, '_>) -> Outcome {
    let mut conn = Conn { socket, phones, buf: [0; READ_CHUNK], pending: 0..0 };
    let id = match handshake(&mut conn).await {
        Ok(id) => id,
        Err(Unopened::Refuse(refusal)) => {
            phones.hub.refused();
            answer(&mut conn, Ending::Refused(refusal)).await;
            return Outcome::Refused(refusal.status());
        }
        Err(Unopened::Page(file)) => return Outcome::Page(answer(&mut conn, Ending::Page(file)).await),
        Err(Unopened::Ended(outcome)) => {
            conn.socket.abort().await.ok();
            return outcome;
        }
    };
    let (reason, failed) = session(&mut conn, id).await;
    phones.hub.close(id, reason, failed);
    if reason == CloseReason::LOST {
        conn.socket.abort().await.ok();
    } else {
        finish(&mut conn).await;
    }
    Outcome::Session(reason)
}

/// A phone connection while it is served: what every step uses.
struct Conn<'c, 'a, 'h, S> {
    socket: &'c mut S,
    phones: &'c Phones<'a, 'h>,
    /// What is read from the phone, a piece at a time.
    buf: [u8; READ_CHUNK],
    /// The part of `buf` read but not yet handled (after the request: the first WebSocket bytes).
    pending: Range<usize>,
}

/// Why a handshake opened no session.
enum Unopened {
    /// Answer with this refusal.
    Refuse(Refusal),
    /// Answer with this file of the phone page.
    Page(&'static page::File),
    /// Nothing more to say: the phone never completed its request, or was lost while answered.
    Ended(Outcome),
}

/// Reads the request and answers it if it opens a session: the new session, or why not.
async fn handshake<S: Read + Write>(conn: &mut Conn<'_, '_, '_, S>) -> Result<SessionId, Unopened> {
    let hub = conn.phones.hub;
    // Only the session id and the key are kept from the request: its other bytes (the device
    // id) are out of scope before the next await, so no later state of this future keeps room
    // for them.
    let (id, key) = {
        let upgrade = match read_request(conn).await {
            Ok(upgrade) => upgrade,
            Err(Some(Asked::Refuse(refusal))) => return Err(Unopened::Refuse(refusal)),
            Err(Some(Asked::Page(file))) => return Err(Unopened::Page(file)),
            Err(None) => return Err(Unopened::Ended(Outcome::NoRequest)),
        };
        match hub.open(upgrade.device.as_ref().map(|d| d.as_slice())) {
            Ok(id) => (id, upgrade.key),
            Err(_) if hub.is_stopping() => return Err(Unopened::Refuse(Refusal::ShuttingDown)),
            Err(_) => return Err(Unopened::Refuse(Refusal::Full)),
        }
    };
    let mut scratch: AnswerScratch = [0; _];
    for part in accept_answer(&key, &mut scratch) {
        if !sent(write(conn.socket, part, conn.phones.config).await) {
            hub.close(id, CloseReason::LOST, false);
            return Err(Unopened::Ended(Outcome::Session(CloseReason::LOST)));
        }
    }
    Ok(id)
}

/// What a request that opens no session asks for.
enum Asked {
    Refuse(Refusal),
    Page(&'static page::File),
}

/// Reads the upgrade request within the handshake timeout: the request (the bytes after it are
/// left in `conn.pending`), or what else it asks for (`None`: the phone never completed it).
///
/// The parser's `RefMut` is held across awaits on purpose: the borrow is what marks the parser
/// taken, and other phones only ever `try_borrow_mut` (see [`Phones`]), so it cannot panic.
#[allow(clippy::await_holding_refcell_ref)]
async fn read_request<S: Read>(conn: &mut Conn<'_, '_, '_, S>) -> Result<Upgrade, Option<Asked>> {
    let phones = conn.phones;
    let deadline = Instant::now() + Duration::from_millis(phones.config.handshake_timeout_ms);
    let io = async {
        // The first bytes, then a parser: a phone that connects and says nothing holds none.
        let mut n = match conn.socket.read(&mut conn.buf).await {
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
            match parser.feed(&conn.buf[..n], phones.tokens()) {
                Parsed::More => {}
                Parsed::Upgrade { upgrade, consumed } => {
                    conn.pending = consumed..n;
                    return Ok(upgrade);
                }
                Parsed::Refuse(refusal) => return Err(Some(Asked::Refuse(refusal))),
                Parsed::Page(file) => return Err(Some(Asked::Page(file))),
            }
            n = match conn.socket.read(&mut conn.buf).await {
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
/// connection's framing state, the durable total told, the idle deadline (and `id`).
async fn session<S: Read + Write>(conn: &mut Conn<'_, '_, '_, S>, id: SessionId) -> (CloseReason, bool) {
    // One reference kept (conn.phones), not two.
    let Phones { hub, config, .. } = conn.phones;
    let mut ws = Connection::new(config.max_message_len);
    let mut told = 0;
    let mut idle_deadline = idle_deadline_after(Instant::now(), config.idle_timeout_ms);
    let mut reason = CloseReason::NORMAL;
    let mut failed = false;
    loop {
        // Bytes read (or that came with the request), a piece at a time: count them, note a
        // close or an error, and answer in order (a pong echoes its ping's payload from `buf` as
        // it comes, then what the connection owes: the pong's header, a close).
        if !conn.pending.is_empty() {
            let (echo, consumed) = {
                let pending = conn.pending.clone();
                let fed = ws.feed(&mut conn.buf[pending.clone()]);
                hub.record(id, fed.payload);
                // Idle means no byte counted: a phone that only pings (or trickles a frame
                // header) does not keep its place for ever. Once closing, the linger holds.
                if fed.payload > 0 && !ws.is_closing() {
                    idle_deadline = idle_deadline_after(Instant::now(), config.idle_timeout_ms);
                }
                match fed.event {
                    Some(Event::Failed(_)) => (reason, failed) = (CloseReason::PROTOCOL_ERROR, true),
                    Some(Event::Closed(_)) => reason = CloseReason::NORMAL,
                    None => {}
                }
                (pending.start + fed.echo.start..pending.start + fed.echo.end, fed.consumed)
            };
            // Nothing consumed: the connection is done, the rest is never read.
            conn.pending = if consumed == 0 { 0..0 } else { conn.pending.start + consumed..conn.pending.end };
            if !echo.is_empty() && !sent(write(conn.socket, &conn.buf[echo], config).await) {
                return (CloseReason::LOST, failed);
            }
        }
        while let Some(frame) = ws.poll_transmit() {
            if !sent(write(conn.socket, frame, config).await) {
                return (CloseReason::LOST, failed);
            }
        }
        if !conn.pending.is_empty() {
            continue;
        }
        if ws.is_done() {
            return (reason, failed);
        }
        // Only a flag leaves this block: the event is not kept across the write below.
        let tell = {
            let event = {
                // Nothing may be written in the middle of a pong: its durable total waits.
                let echoing = ws.is_echoing();
                let mut above = hub.durable_above(id, told);
                let durable = poll_fn(|cx| match echoing {
                    true => Poll::Pending,
                    false => Pin::new(&mut above).poll(cx),
                });
                select3(conn.socket.read(&mut conn.buf), durable, Timer::at(idle_deadline)).await
            };
            match event {
                Either3::First(Ok(n)) if n > 0 => {
                    conn.pending = 0..n;
                    false
                }
                // EOF or reset without a close frame: the phone is gone.
                Either3::First(_) => return (CloseReason::LOST, false),
                Either3::Second(Durable::Total(total)) => {
                    told = total;
                    !ws.is_closing()
                }
                Either3::Second(Durable::Stopping) => {
                    reason = CloseReason::SHUTDOWN;
                    ws.close(close_code::GOING_AWAY);
                    // Keep serving until the phone answers the close (its last bytes still count).
                    idle_deadline = Instant::now() + Duration::from_millis(config.linger_ms);
                    told = u64::MAX;
                    false
                }
                Either3::Third(()) => {
                    if ws.is_closing() {
                        return (reason, failed); // the phone never answered our close
                    }
                    reason = CloseReason::IDLE;
                    ws.close(close_code::NORMAL);
                    idle_deadline = Instant::now() + Duration::from_millis(config.linger_ms);
                    false
                }
            }
        };
        if tell {
            let mut frame = [0u8; 2 + MAX_DURABLE_MESSAGE_LEN];
            let len = durable_frame(told, &mut frame);
            if !sent(write(conn.socket, &frame[..len], config).await) {
                return (CloseReason::LOST, false);
            }
        }
    }
}

/// Idle deadlines fall on whole multiples of this (ms), so that the phones whose idle time comes
/// in the same second share one wakeup.
pub const IDLE_GRAIN_MS: u64 = 1_000;

/// The idle deadline `timeout_ms` after `now`, rounded up to a whole [`IDLE_GRAIN_MS`].
///
/// Why round: a phone's idle timer is queued once, at its first deadline, and moving it later
/// costs nothing until that first deadline comes (the task wakes, finds it later, and queues it
/// again; see the host runtime's wheel). So every phone's task wakes once, `timeout_ms` after it
/// connected, each at its own millisecond: in the million-phone hold, whose phones connected
/// within 110 s, that was 170 wakeups of each gateway a second from 300 s on, and the gateways'
/// CPU rose by a tenth then (`lab hold`, 2026-12-07). Rounded, the phones whose time comes in
/// the same second share a wakeup; a phone is closed as idle at most a second late.
fn idle_deadline_after(now: Instant, timeout_ms: u64) -> Instant {
    let at = now.saturating_add(Duration::from_millis(timeout_ms)).as_ticks();
    let grain = Duration::from_millis(IDLE_GRAIN_MS).as_ticks();
    Instant::from_ticks(at.div_ceil(grain).saturating_mul(grain))
}

/// `{"durable":N}` as a text frame in `frame`; returns its length.
fn durable_frame(total: u64, frame: &mut [u8; 2 + MAX_DURABLE_MESSAGE_LEN]) -> usize {
    let text: &mut [u8; MAX_DURABLE_MESSAGE_LEN] = (&mut frame[2..]).try_into().expect("sized above");
    let len = durable_message(total, text);
    frame[..2].copy_from_slice(&[0x81, len as u8]); // FIN + text; len < 126 fits the short form
    2 + len
}

/// An answer that ends the connection.
#[derive(Clone, Copy)]
enum Ending {
    Refused(Refusal),
    Page(&'static page::File),
}

impl Ending {
    /// Piece `i` of the answer (`None` after the last), the one computed piece in `scratch`.
    ///
    /// Pieces are asked for one at a time, by number, so that what is kept while one is written
    /// is this value and the number, not an array of every piece: this is part of every phone's
    /// state (the largest of the steps of [`serve`] sets it).
    fn piece(self, i: usize, scratch: &mut AnswerScratch) -> Option<&[u8]> {
        match self {
            Self::Refused(refusal) => refusal_answer(refusal, scratch).get(i).copied(),
            Self::Page(file) => {
                let head = page::head(file);
                match i.checked_sub(head.len()) {
                    None => Some(head[i]),
                    Some(chunk) => file.gzip.chunks(PAGE_WRITE_CHUNK).nth(chunk),
                }
            }
        }
    }
}

/// Writes an answer that ends the connection, then closes without losing it; whether it was all
/// written.
async fn answer<S: Read + Write + TcpShutdown>(conn: &mut Conn<'_, '_, '_, S>, ending: Ending) -> bool {
    let config = conn.phones.config;
    let answered = 'answer: {
        // Not kept while closing (below): it would add to the largest state of this future.
        let mut scratch: AnswerScratch = [0; _];
        let mut i = 0;
        while let Some(piece) = ending.piece(i, &mut scratch) {
            if !sent(write(conn.socket, piece, config).await) {
                break 'answer false;
            }
            i += 1;
        }
        true
    };
    if answered {
        finish(conn).await;
    } else {
        conn.socket.abort().await.ok();
    }
    answered
}

/// Writes `bytes` within the write timeout (a phone that reads nothing fills its socket's send
/// buffer, and the write that no longer fits times out); see [`sent`].
///
/// A plain future, not an `async fn` (which would keep its arguments twice): it is part of the
/// state of every phone that is being written to. Not flushed: the bytes are in the socket's
/// send buffer, which the stack sends on its own; before closing, [`finish`] waits for what was
/// written to go out.
fn write<'s, S: Write>(
    socket: &'s mut S,
    bytes: &'s [u8],
    config: &PhoneConfig,
) -> impl Future<Output = Result<Result<(), S::Error>, TimeoutError>> + 's {
    with_deadline(Instant::now() + Duration::from_millis(config.write_timeout_ms), socket.write_all(bytes))
}

/// Whether a [`write`] went into the socket in time.
fn sent<E>(result: Result<Result<(), E>, TimeoutError>) -> bool {
    matches!(result, Ok(Ok(())))
}

/// Closes our side, then reads (and drops) what the phone still sends until it closes too or the
/// linger time passes. Closing with unread input would make the kernel send a reset, which can
/// destroy the answer or close frame just written.
async fn finish<S: Read + TcpShutdown>(conn: &mut Conn<'_, '_, '_, S>) {
    let deadline = Instant::now() + Duration::from_millis(conn.phones.config.linger_ms);
    let drained = async {
        conn.socket.close(Close::Write).await.ok();
        while let Ok(n) = conn.socket.read(&mut conn.buf).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = with_deadline(deadline, drained).await;
    conn.socket.abort().await.ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_deadlines_fall_on_whole_seconds_never_before_the_timeout() {
        let at = |ms| Instant::from_millis(ms);
        assert_eq!(idle_deadline_after(at(1_200), 300_000), at(302_000));
        assert_eq!(idle_deadline_after(at(1_999), 300_000), at(302_000), "the same second: the same wakeup");
        assert_eq!(idle_deadline_after(at(1_000), 300_000), at(301_000), "already whole");
        assert_eq!(idle_deadline_after(at(5), 1_500), at(2_000));
        assert_eq!(idle_deadline_after(Instant::MAX, 1), Instant::MAX);
    }
}
