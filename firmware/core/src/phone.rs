//! Serves one phone connection: the upgrade, then every payload byte counted into its session,
//! pongs and the close handshake, its durable total when the aggregator acknowledges, and the
//! idle timeout. Generic over any socket (`embedded-io-async` plus `edge-nal`'s shutdown), so
//! the same code serves phones on embassy-net and on the host's kernel TCP.
//!
//! What a phone costs is this future (its size is reported in `docs/benchmarks.md`), the
//! socket's buffers, and the hub's [`SessionSlot`](trunk::gateway::SessionSlot) and waker.

use edge_nal::{Close, TcpAccept, TcpShutdown};
use edge_ws::FrameType;
use embassy_futures::select::{select3, Either3};
use embassy_time::{with_deadline, Duration, Instant, Timer};
use embedded_io_async::{Read, Write};
use trunk::frame::CloseReason;
use trunk::phone::{durable_message, MAX_DURABLE_MESSAGE_LEN};

use crate::config::PhoneConfig;
use crate::hub::{Durable, Hub};
use crate::upgrade::{write_accept, write_refusal, Parsed, Refusal, RequestParser, MAX_ANSWER_LEN};
use crate::ws::{close_code, write_frame, Connection, Event, MAX_OUTGOING_FRAME};

/// Bytes read from a phone at a time. Phones send a few bytes at a time; a larger request is
/// simply read in more pieces.
pub const READ_CHUNK: usize = 128;

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
pub async fn serve<S: Read + Write + TcpShutdown>(
    mut socket: S,
    hub: &Hub<'_>,
    config: &PhoneConfig,
) -> Outcome {
    let mut buf = [0u8; READ_CHUNK];
    let mut out = [0u8; MAX_ANSWER_LEN];

    // The upgrade request, within the handshake timeout.
    let deadline = Instant::now() + Duration::from_millis(config.handshake_timeout_ms);
    let mut parser = RequestParser::new(config.max_request_len);
    let (upgrade, rest) = loop {
        let n = match with_deadline(deadline, socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => {
                socket.abort().await.ok();
                return Outcome::NoRequest;
            }
        };
        match parser.feed(&buf[..n]) {
            Parsed::More => {}
            Parsed::Upgrade { upgrade, consumed } => break (upgrade, consumed..n),
            Parsed::Refuse(refusal) => {
                return refuse(&mut socket, hub, refusal, &mut buf, &mut out, config).await
            }
        }
    };
    let id = match hub.open(upgrade.device.as_ref().map(|d| d.as_slice())) {
        Ok(id) => id,
        Err(_) => {
            let why = if hub.is_stopping() { Refusal::ShuttingDown } else { Refusal::Full };
            return refuse(&mut socket, hub, why, &mut buf, &mut out, config).await;
        }
    };
    let n = write_accept(&upgrade.key, &mut out);
    if !write(&mut socket, &out[..n], config).await {
        hub.close(id, CloseReason::LOST, false);
        socket.abort().await.ok();
        return Outcome::Session(CloseReason::LOST);
    }

    // The session.
    let mut ws = Connection::new(config.max_message_len);
    let mut pending = rest; // frame bytes that arrived with the request
    let mut told = 0;
    let idle = Duration::from_millis(config.idle_timeout_ms);
    let mut idle_deadline = Instant::now() + idle;
    let mut reason = CloseReason::NORMAL;
    let mut failed = false;
    loop {
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
        let frame_out: &mut [u8; MAX_OUTGOING_FRAME] =
            out.first_chunk_mut().expect("answer buffer holds a frame");
        while let Some(n) = ws.poll_transmit(frame_out) {
            if !write(&mut socket, &frame_out[..n], config).await {
                hub.close(id, CloseReason::LOST, failed);
                socket.abort().await.ok();
                return Outcome::Session(CloseReason::LOST);
            }
        }
        if ws.is_done() {
            break;
        }
        match select3(socket.read(&mut buf), hub.durable_above(id, told), Timer::at(idle_deadline)).await {
            Either3::First(Ok(n)) if n > 0 => {
                pending = 0..n;
                idle_deadline = Instant::now() + idle;
            }
            Either3::First(_) => {
                // EOF or reset without a close frame: the phone is gone.
                hub.close(id, CloseReason::LOST, false);
                socket.abort().await.ok();
                return Outcome::Session(CloseReason::LOST);
            }
            Either3::Second(Durable::Total(total)) => {
                told = total;
                if !ws.is_closing() {
                    let mut text = [0u8; MAX_DURABLE_MESSAGE_LEN];
                    let len = durable_message(total, &mut text);
                    let n = write_frame(FrameType::Text(false), &text[..len], frame_out);
                    if !write(&mut socket, &frame_out[..n], config).await {
                        hub.close(id, CloseReason::LOST, false);
                        socket.abort().await.ok();
                        return Outcome::Session(CloseReason::LOST);
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
                    break; // the phone never answered our close
                }
                reason = CloseReason::IDLE;
                ws.close(close_code::NORMAL);
                idle_deadline = Instant::now() + Duration::from_millis(config.linger_ms);
            }
        }
    }
    hub.close(id, reason, failed);
    finish(&mut socket, &mut buf, config).await;
    Outcome::Session(reason)
}

/// Answers a refused request, then closes without losing the answer.
async fn refuse<S: Read + Write + TcpShutdown>(
    socket: &mut S,
    hub: &Hub<'_>,
    refusal: Refusal,
    buf: &mut [u8; READ_CHUNK],
    out: &mut [u8; MAX_ANSWER_LEN],
    config: &PhoneConfig,
) -> Outcome {
    hub.refused();
    let n = write_refusal(refusal, out);
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
