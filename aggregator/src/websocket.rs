//! The WebSocket upgrade on hyper, and the WebSocket settings of phones and trunks.
//!
//! hyper parses the HTTP request (with a header timeout), this module checks that it is a valid
//! RFC 6455 upgrade and answers 101; the upgraded stream is then driven by tungstenite with small
//! buffers. tungstenite's default 128 KiB read buffer per connection would cost 1.3 GB at 10,000
//! phones; a phone's messages are a few bytes, so its buffers start small and grow only if needed.

use std::time::Duration;

use futures_util::SinkExt as _;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Read buffer of a phone's WebSocket: a phone message is a 7-byte frame.
pub const PHONE_READ_BUFFER: usize = 64;

/// WebSocket settings for a direct phone.
pub fn phone_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(PHONE_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Read buffer of a trunk link's WebSocket, and the most one read takes from the socket. A link
/// keeps it for its whole life (tungstenite fills it on every read, so all of it is resident):
/// it was 16 KiB, most of what an idle trunk cost once its transmit buffer was gone
/// (`docs/benchmarks.md`, "What a trunk costs the aggregator"). Most trunk messages are a few
/// hundred bytes; a larger one (up to `--max-trunk-message`) is still read whole: tungstenite
/// reserves a frame's full length when its header arrives, and reads it in turns of this size
/// (the link then keeps the grown buffer, as it did with 16 KiB for a message over 16 KiB).
pub const TRUNK_READ_BUFFER: usize = 4 * 1024;

/// WebSocket settings for a trunk link: messages of up to `max_message` bytes of batched counts.
pub fn trunk_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(TRUNK_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Why an upgrade request is refused: the HTTP status and a one-line reason for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: &'static str,
}

fn header_has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Checks an RFC 6455 upgrade request and builds the 101 answer. With `subprotocol`, the client
/// must offer it, and the answer selects it.
pub fn accept<B>(req: &Request<B>, subprotocol: Option<&'static str>) -> Result<Response<()>, Refusal> {
    let h = req.headers();
    if req.method() != Method::GET {
        return Err(Refusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            reason: "websocket upgrade must be GET",
        });
    }
    if !header_has_token(h, CONNECTION, "upgrade") || !header_has_token(h, UPGRADE, "websocket") {
        return Err(Refusal {
            status: StatusCode::UPGRADE_REQUIRED,
            reason: "this endpoint speaks websocket only",
        });
    }
    if h.get(SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err(Refusal {
            status: StatusCode::UPGRADE_REQUIRED,
            reason: "websocket version 13 required",
        });
    }
    // The same key rule as the gateway's (base64 of 16 bytes): one implementation, ws-handshake.
    let key = h.get(SEC_WEBSOCKET_KEY).map(HeaderValue::as_bytes).and_then(ws_handshake::valid_key);
    let Some(key) = key else {
        return Err(Refusal { status: StatusCode::BAD_REQUEST, reason: "bad sec-websocket-key" });
    };
    if let Some(wanted) = subprotocol {
        if !header_has_token(h, SEC_WEBSOCKET_PROTOCOL, wanted) {
            return Err(Refusal {
                status: StatusCode::BAD_REQUEST,
                reason: "websocket subprotocol trunk.v1 required",
            });
        }
    }
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(CONNECTION, "upgrade")
        .header(UPGRADE, "websocket")
        .header(SEC_WEBSOCKET_ACCEPT, &ws_handshake::accept_key(&key)[..]);
    if let Some(p) = subprotocol {
        response = response.header(SEC_WEBSOCKET_PROTOCOL, p);
    }
    Ok(response.body(()).unwrap_or_default())
}

/// Closes with `code` and `reason`, waiting briefly for the peer's answer.
/// Sends `message`, giving up after `limit`: a peer that does not read what it is sent (its
/// receive window stays full) must not pin its task, its buffers and its admission place for
/// ever. Whether it was sent; `false` means the connection is to be dropped.
pub async fn send_within<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    message: Message,
    limit: Duration,
) -> bool {
    matches!(tokio::time::timeout(limit, ws.send(message)).await, Ok(Ok(())))
}

pub async fn close<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    code: CloseCode,
    reason: &str,
) {
    let frame = CloseFrame { code, reason: reason.into() };
    // The peer may already be gone; there is nobody left to tell then.
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::Role;

    fn upgrade_request(key: &str) -> Request<()> {
        Request::builder()
            .uri("/ws")
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(SEC_WEBSOCKET_KEY, key)
            .body(())
            .unwrap()
    }

    /// The key rule is the gateway's (ws-handshake): base64 of 16 bytes, not just 24 characters.
    #[test]
    fn the_key_is_checked_and_answered_as_the_rfc_says() {
        let ok = accept(&upgrade_request("dGhlIHNhbXBsZSBub25jZQ=="), None).expect("the RFC's key");
        assert_eq!(ok.headers()[SEC_WEBSOCKET_ACCEPT], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        for bad in ["nope", "dGhlIHNhbXBsZSBub25j!!==", "dGhlIHNhbXBsZSBub25jZQA="] {
            let refused = accept(&upgrade_request(bad), None).expect_err(bad);
            assert_eq!((refused.status, refused.reason), (StatusCode::BAD_REQUEST, "bad sec-websocket-key"));
        }
    }

    /// A peer that never reads: the in-memory pipe (256 bytes) fills, the send cannot complete,
    /// and `send_within` gives up instead of waiting for ever. A peer that reads gets it.
    #[tokio::test]
    async fn a_peer_that_never_reads_does_not_pin_the_sender() {
        let (ours, theirs) = tokio::io::duplex(256);
        let mut ws = WebSocketStream::from_raw_socket(ours, Role::Server, Some(phone_config(4096))).await;
        let limit = Duration::from_millis(200);
        assert!(send_within(&mut ws, Message::text("{\"durable\":1}"), limit).await, "room for one");
        let big = Message::binary(vec![0u8; 4096]);
        let gave_up =
            tokio::time::timeout(Duration::from_secs(5), send_within(&mut ws, big.clone(), limit)).await;
        assert_eq!(gave_up, Ok(false), "the pipe is full and nobody reads: it gives up, in time");

        let (ours, theirs2) = tokio::io::duplex(256);
        let mut ws = WebSocketStream::from_raw_socket(ours, Role::Server, Some(phone_config(4096))).await;
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut theirs2 = theirs2;
            let mut sink = vec![0u8; 8192];
            let mut n = 0;
            // The frame: 4 bytes of header (16-bit length) and the 4,096 of payload.
            while n < 4 + 4096 {
                n += theirs2.read(&mut sink).await.unwrap();
            }
        });
        assert!(send_within(&mut ws, big, limit).await, "a reading peer takes it");
        reader.await.unwrap();
        drop(theirs);
    }
}
