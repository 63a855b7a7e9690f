//! A phone connected straight to the aggregator (no gateway nearby), on `/ws`.
//!
//! Every payload byte of every binary or text message counts. The phone's session is a ledger
//! entry like any trunk session (gateway number 0, this process's epoch, a fresh session id), so
//! its bytes take the same path to the database. After each commit that holds new bytes of it, the
//! phone is sent `{"durable":N}`: N bytes of this connection are safe.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;
use trunk::frame::CloseReason;
use trunk::ledger::{SessionKey, Update, DIRECT};

use crate::routes::{PhoneMailbox, Route};
use crate::state::Shared;
use crate::websocket::{close, send_within};

/// The message telling a phone its durable total (shared with gateways: the same text).
pub fn durable_message(total: u64) -> String {
    let mut out = [0; trunk::phone::MAX_DURABLE_MESSAGE_LEN];
    let n = trunk::phone::durable_message(total, &mut out);
    String::from_utf8_lossy(&out[..n]).into_owned()
}

/// Serves one phone until it leaves, breaks the protocol, goes idle, or the process shuts down.
///
/// A function returning an `async move` block rather than an `async fn`: an `async fn` keeps its
/// arguments twice in its future (as captured and again as the body's locals: rustc issue
/// 62958), here 376 bytes (the WebSocket stream, the device, the permit) in every held phone's
/// task. The block uses what it captured in place.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<S>(
    shared: Arc<Shared>,
    mut ws: WebSocketStream<S>,
    device: Option<String>,
    permit: OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let key =
            SessionKey { gateway: DIRECT, boot_epoch: shared.epoch, session: shared.new_direct_session() };
        let mailbox = Arc::new(PhoneMailbox::new(key.session));
        let route = shared.routes.add(Route::Phone(mailbox.clone()));
        shared.metrics.direct_sessions.inc();
        // The session row exists from the first flush on, with its device.
        let open = Update { total: Some(0), device: device.as_deref().map(str::as_bytes), closed: None };
        shared.record(key, route, open).await;

        let mut shutdown = shared.shutdown.clone();
        // Idle means no byte counted: pings, pongs and empty messages do not keep a place (M7 of
        // issue #12: a client that only pings would hold it for ever), nor do our own answers.
        let idle = shared.settings.phone_idle_timeout();
        let mut idle_at = tokio::time::Instant::now() + idle;
        let mut total = 0u64;
        let mut told = 0u64;
        let reason = loop {
            let received = tokio::select! {
                _ = crate::shutdown::requested(&mut shutdown) => {
                    close(&mut ws, CloseCode::Away, "server shutting down").await;
                    break CloseReason::SHUTDOWN;
                }
                _ = mailbox.notify.notified() => {
                    let durable = mailbox.durable.load(Ordering::Relaxed);
                    if durable > told {
                        told = durable;
                        let told_durable = Message::text(durable_message(durable));
                        if !send_within(&mut ws, told_durable, shared.settings.send_timeout()).await {
                            break CloseReason::LOST;
                        }
                    }
                    continue;
                }
                next = tokio::time::timeout_at(idle_at, ws.next()) => next,
            };
            let bytes = match received {
                Err(_elapsed) => {
                    close(&mut ws, CloseCode::Normal, "idle timeout").await;
                    break CloseReason::IDLE;
                }
                Ok(None) => break CloseReason::LOST,
                Ok(Some(Ok(Message::Binary(b)))) => b.len(),
                Ok(Some(Ok(Message::Text(t)))) => t.len(),
                Ok(Some(Ok(Message::Close(_)))) => break CloseReason::NORMAL,
                Ok(Some(Ok(_ping_pong_or_frame))) => continue,
                Ok(Some(Err(e))) => break bad_input(&shared, &mut ws, e).await,
            };
            if bytes > 0 {
                idle_at = tokio::time::Instant::now() + idle;
                total += bytes as u64;
                shared.metrics.phone_bytes.inc_by(bytes as u64);
                shared.record(key, route, Update { total: Some(total), ..Update::default() }).await;
            }
        };
        debug!(route, total, reason = reason.0, "phone session ended");
        shared.record(key, route, Update { total: Some(total), closed: Some(reason), device: None }).await;
        shared.routes.remove(route);
        shared.metrics.direct_sessions.dec();
        drop(permit);
    }
}

/// Maps a WebSocket error to the close code the phone is told, a metric and a close reason.
async fn bad_input<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    ws: &mut WebSocketStream<S>,
    e: WsError,
) -> CloseReason {
    let (code, reason) = match &e {
        WsError::Capacity(_) => (CloseCode::Size, "message too large"),
        WsError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        WsError::Utf8(_) => (CloseCode::Invalid, "invalid utf-8"),
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => return CloseReason::LOST,
        _ => (CloseCode::Protocol, "protocol error"),
    };
    shared.metrics.bad_input(reason);
    debug!(error = %e, "phone closed for bad input");
    close(ws, code, reason).await;
    CloseReason::PROTOCOL_ERROR
}
