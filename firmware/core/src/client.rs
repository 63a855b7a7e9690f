//! The trunk's WebSocket client handshake (RFC 6455 section 4.1): the request a gateway sends to
//! the aggregator's `/trunk`, and the check of its answer.

use crate::head::{has_token, header, http_date, LineReader, Step};
use crate::upgrade::{accept_key, KEY_LEN};
use base64::Engine as _;

/// Longest answer head read from the aggregator.
pub const MAX_RESPONSE_LEN: usize = 2048;

/// Longest request [`write_request`] writes (with a 64-byte host name).
pub const MAX_REQUEST_LEN: usize = 256;

/// A fresh `Sec-WebSocket-Key` from 16 random bytes.
pub fn key(random: [u8; 16]) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(random, &mut key);
    key
}

/// Writes the upgrade request for `path` on `host` with subprotocol `protocol`; `None` if it does
/// not fit `out`.
pub fn write_request(
    path: &str,
    host: &str,
    protocol: &str,
    key: &[u8; KEY_LEN],
    out: &mut [u8],
) -> Option<usize> {
    let parts: [&[u8]; 9] = [
        b"GET ",
        path.as_bytes(),
        b" HTTP/1.1\r\nHost: ",
        host.as_bytes(),
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
        key,
        b"\r\nSec-WebSocket-Protocol: ",
        protocol.as_bytes(),
        b"\r\n\r\n",
    ];
    let mut len = 0;
    for part in parts {
        out.get_mut(len..len + part.len())?.copy_from_slice(part);
        len += part.len();
    }
    Some(len)
}

/// What [`ResponseParser::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// Not complete; all input consumed.
    More,
    /// Switched to WebSocket with the right key and subprotocol; `consumed` bytes were the head.
    Switched { consumed: usize },
    /// Anything else.
    Failed(&'static str),
}

/// Checks the aggregator's answer to [`write_request`].
#[derive(Debug, Clone)]
pub struct ResponseParser {
    lines: LineReader,
    expected_accept: [u8; 28],
    protocol: &'static str,
    status_seen: bool,
    accept_ok: bool,
    protocol_ok: bool,
    date: Option<u64>,
}

impl ResponseParser {
    /// A parser expecting the answer to `key` with subprotocol `protocol`.
    pub fn new(key: &[u8; KEY_LEN], protocol: &'static str) -> Self {
        Self {
            lines: LineReader::new(MAX_RESPONSE_LEN),
            expected_accept: accept_key(key),
            protocol,
            status_seen: false,
            accept_ok: false,
            protocol_ok: false,
            date: None,
        }
    }

    /// The answer's `Date` (Unix seconds), if it had one: the aggregator's time, as authenticated
    /// as the rest of its answer (a board without a clock learns the time from it).
    pub fn date(&self) -> Option<u64> {
        self.date
    }

    /// Reads bytes of the answer.
    pub fn feed(&mut self, data: &[u8]) -> Response {
        let mut used = 0;
        while used < data.len() {
            match self.lines.feed(&data[used..]) {
                Step::More => return Response::More,
                Step::TooLong => return Response::Failed("upgrade answer too long"),
                Step::Line { consumed } => used += consumed,
            }
            let (line, _) = self.lines.line();
            if !self.status_seen {
                self.status_seen = true;
                if !line.starts_with(b"HTTP/1.1 101") {
                    return Response::Failed(status_reason(line));
                }
            } else if line.is_empty() {
                return match (self.accept_ok, self.protocol_ok) {
                    (true, true) => Response::Switched { consumed: used },
                    (false, _) => Response::Failed("wrong Sec-WebSocket-Accept"),
                    (_, false) => Response::Failed("subprotocol not accepted"),
                };
            } else if let Some((name, value)) = header(line) {
                if name.eq_ignore_ascii_case(b"sec-websocket-accept") {
                    self.accept_ok = value == self.expected_accept;
                } else if name.eq_ignore_ascii_case(b"sec-websocket-protocol") {
                    self.protocol_ok = has_token(value, self.protocol.as_bytes());
                } else if name.eq_ignore_ascii_case(b"date") {
                    self.date = http_date(value);
                }
            }
            self.lines.next_line();
        }
        Response::More
    }
}

fn status_reason(line: &[u8]) -> &'static str {
    match line.get(9..12) {
        Some(b"503") => "aggregator answered 503 (full or shutting down)",
        Some(b"400") => "aggregator answered 400",
        Some(b"404") => "aggregator answered 404 (no /trunk there)",
        _ => "aggregator did not switch protocols",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_answer() {
        let key = key([7; 16]);
        let mut out = [0; MAX_REQUEST_LEN];
        let n = write_request("/trunk", "localhost", "trunk.v1", &key, &mut out).unwrap();
        assert!(out[..n].starts_with(b"GET /trunk HTTP/1.1\r\nHost: localhost\r\n"));
        let accept = accept_key(&key);
        let mut answer = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nsec-websocket-protocol: trunk.v1\r\nsec-websocket-accept: ".to_vec();
        answer.extend_from_slice(&accept);
        answer.extend_from_slice(b"\r\ndate: Thu, 03 Dec 2026 10:53:13 GMT\r\n\r\n\x82\x05");
        let mut p = ResponseParser::new(&key, "trunk.v1");
        assert_eq!(p.feed(&answer), Response::Switched { consumed: answer.len() - 2 });
        assert_eq!(p.date(), Some(1_796_295_193), "the aggregator's time");
        let mut p = ResponseParser::new(&key, "trunk.v1");
        assert!(matches!(p.feed(b"HTTP/1.1 503 Service Unavailable\r\n"), Response::Failed(_)));
        let mut p = ResponseParser::new(&key, "trunk.v1");
        let wrong =
            b"HTTP/1.1 101 OK\r\nsec-websocket-protocol: trunk.v1\r\nsec-websocket-accept: xxx\r\n\r\n";
        assert_eq!(p.feed(wrong), Response::Failed("wrong Sec-WebSocket-Accept"));
    }
}
