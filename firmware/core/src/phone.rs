//! Serves one phone connection: the upgrade, then every payload byte counted into its session,
//! pongs and the close handshake, its durable total when the aggregator acknowledges, and the
//! idle timeout. Generic over any socket (`embedded-io-async` plus `edge-nal`'s shutdown), so
//! the same code serves phones on embassy-net and on the host's kernel TCP.
//!
//! What a phone costs is this future (its size is reported in `docs/benchmarks.md`), the
//! socket's buffers, and the hub's [`SessionSlot`](trunk::gateway::SessionSlot) and waker.

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
    write_accept, write_refusal, Parsed, Refusal, RequestParser, Upgrade, KEY_LEN, MAX_ANSWER_LEN,
};
use crate::ws::{close_code, Connection, Event};

/// Bytes read from a phone at a time. Phones send a few bytes at a time; a larger request is
/// simply read in more pieces.
pub const READ_CHUNK: usize = 64;

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

/// Accepts and serves phones one after another, for ever: run as many of these as the board has
/// sockets for (each holds one phone at a time). On embassy-net every worker listens with its own
/// socket, which is how a smoltcp server accepts several connections.
pub async fn worker<A: TcpAccept>(acceptor: &A, hub: &Hub<'_>, config: &PhoneConfig) -> ! {
    loop {
        match acceptor.accept().await {
            Ok((_, socket)) => {
                serve(socket, hub, config).await;
            }
            Err(_) => Timer::after_millis(100).await, // out of sockets for a moment
        }
    }
}

/// Serves one phone connection until it ends.
///
/// The work is split into functions that are awaited one after another (the request, the
/// answer, the session) so that their state shares the same bytes of this future: what a phone
/// costs is the largest of them, not their sum.
pub async fn serve<S: Read + Write + TcpShutdown>(
    mut socket: S,
    hub: &Hub<'_>,
    config: &PhoneConfig,
) -> Outcome {
    let mut buf = [0u8; READ_CHUNK];
    // The request in a block of its own: its bytes (device id, key) are dead once it is
    // answered, so the session below reuses them instead of holding them for its whole life.
    let (id, rest) = {
        let (upgrade, rest) = match read_request(&mut socket, &mut buf, config).await {
            Ok(request) => request,
            Err(Some(refusal)) => return refuse(&mut socket, hub, refusal, &mut buf, config).await,
            Err(None) => {
                socket.abort().await.ok();
                return Outcome::NoRequest;
            }
        };
        let id = match hub.open(upgrade.device.as_ref().map(|d| d.as_slice())) {
            Ok(id) => id,
            Err(_) => {
                let why = if hub.is_stopping() { Refusal::ShuttingDown } else { Refusal::Full };
                return refuse(&mut socket, hub, why, &mut buf, config).await;
            }
        };
        if !accept(&mut socket, &upgrade.key, config).await {
            hub.close(id, CloseReason::LOST, false);
            socket.abort().await.ok();
            return Outcome::Session(CloseReason::LOST);
        }
        (id, rest)
    };
    let (reason, failed) = session(&mut socket, hub, id, &mut buf, rest, config).await;
    hub.close(id, reason, failed);
    if reason == CloseReason::LOST {
        socket.abort().await.ok();
    } else {
        finish(&mut socket, &mut buf, config).await;
    }
    Outcome::Session(reason)
}

/// Reads the upgrade request within the handshake timeout: the request and the range of `buf`
/// that holds bytes after it, or what to refuse (`None`: the phone never completed it).
async fn read_request<S: Read>(
    socket: &mut S,
    buf: &mut [u8; READ_CHUNK],
    config: &PhoneConfig,
) -> Result<(Upgrade, Range<usize>), Option<Refusal>> {
    let deadline = Instant::now() + Duration::from_millis(config.handshake_timeout_ms);
    let mut parser = RequestParser::new(config.max_request_len);
    loop {
        let n = match with_deadline(deadline, socket.read(buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err(None),
        };
        match parser.feed(&buf[..n]) {
            Parsed::More => {}
            Parsed::Upgrade { upgrade, consumed } => return Ok((upgrade, consumed..n)),
            Parsed::Refuse(refusal) => return Err(Some(refusal)),
        }
    }
}

/// Sends `101 Switching Protocols`.
async fn accept<S: Write>(socket: &mut S, key: &[u8; KEY_LEN], config: &PhoneConfig) -> bool {
    let mut out = [0u8; MAX_ANSWER_LEN];
    let n = write_accept(key, &mut out);
    write(socket, &out[..n], config).await
}

/// The WebSocket session: returns why it ended and whether the phone broke the protocol.
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
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut idle_deadline = Instant::now() + idle;
    let mut reason = CloseReason::NORMAL;
    let mut failed = false;
    loop {
        // Bytes read (or that came with the request): count them, note a close or an error.
        while !pending.is_empty() {
            let fed = ws.feed(&buf[pending.clone()]);
            hub.record(id, fed.payload);
            pending.start += fed.consumed;
            match fed.event {
                Some(Event::Failed(_)) => (reason, failed) = (CloseReason::PROTOCOL_ERROR, true),
                Some(Event::Closed(_)) => reason = CloseReason::NORMAL,
                None => {}
            }
            if fed.consumed == 0 {
                break;
            }
        }
        if !send_owed(socket, &mut ws, config).await {
            return (CloseReason::LOST, failed);
        }
        if ws.is_done() {
            return (reason, failed);
        }
        match select3(socket.read(buf), hub.durable_above(id, told), Timer::at(idle_deadline)).await {
            Either3::First(Ok(n)) if n > 0 => {
                pending = 0..n;
                idle_deadline = Instant::now() + idle;
            }
            // EOF or reset without a close frame: the phone is gone.
            Either3::First(_) => return (CloseReason::LOST, false),
            Either3::Second(Durable::Total(total)) => {
                told = total;
                if !ws.is_closing() && !tell_durable(socket, total, config).await {
                    return (CloseReason::LOST, false);
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

/// Sends what the gateway owes the phone: a pong, its close (each from the connection's own
/// buffer: the phone's task keeps no frame buffer).
async fn send_owed<S: Write>(socket: &mut S, ws: &mut Connection, config: &PhoneConfig) -> bool {
    while let Some(frame) = ws.poll_transmit() {
        if !write(socket, frame, config).await {
            return false;
        }
    }
    true
}

/// Sends `{"durable":N}`.
async fn tell_durable<S: Write>(socket: &mut S, total: u64, config: &PhoneConfig) -> bool {
    let mut frame = [0u8; 2 + MAX_DURABLE_MESSAGE_LEN];
    let text: &mut [u8; MAX_DURABLE_MESSAGE_LEN] = (&mut frame[2..]).try_into().expect("sized above");
    let len = durable_message(total, text);
    frame[..2].copy_from_slice(&[0x81, len as u8]); // FIN + text; len < 126 fits the short form
    write(socket, &frame[..2 + len], config).await
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
    let mut out = [0u8; MAX_ANSWER_LEN];
    let n = write_refusal(refusal, &mut out);
    if write(socket, &out[..n], config).await {
        finish(socket, buf, config).await;
    } else {
        socket.abort().await.ok();
    }
    Outcome::Refused(refusal.status())
}

/// Writes all of `bytes` within the write timeout.
async fn write<S: Write>(socket: &mut S, bytes: &[u8], config: &PhoneConfig) -> bool {
    let deadline = Instant::now() + Duration::from_millis(config.write_timeout_ms);
    let io = async {
        socket.write_all(bytes).await?;
        socket.flush().await
    };
    matches!(with_deadline(deadline, io).await, Ok(Ok(())))
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
