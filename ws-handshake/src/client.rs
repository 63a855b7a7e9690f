//! The client's side of the opening handshake (RFC 6455 section 4.1): the request, and the check
//! of the server's answer as it streams in. The gateway opens its trunks with it (in a fixed
//! buffer, on a board), mobile-sim its phones.

use crate::head::{has_token, header, http_date, LineReader, Step};
use crate::{accept_key, ACCEPT_LEN, KEY_LEN};
use base64::Engine as _;

/// Longest answer head read from a server: far more than any 101 answer, small enough for a
/// gateway's stack.
pub const MAX_RESPONSE_LEN: usize = 2048;

/// Longest request [`write_request`] writes with a 64-byte host, a 64-byte path and query and a
/// 16-byte subprotocol; a longer path (a phone's device token) needs a larger buffer.
pub const MAX_REQUEST_LEN: usize = 320;

/// A fresh `Sec-WebSocket-Key` from 16 random bytes.
pub fn key(random: [u8; 16]) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(random, &mut key);
    key
}

/// Writes the upgrade request for `path` (with its query) on `host`, offering `protocol` when
/// given; `None` if it does not fit `out`.
pub fn write_request(
    path: &str,
    host: &str,
    protocol: Option<&str>,
    key: &[u8; KEY_LEN],
    out: &mut [u8],
) -> Option<usize> {
    let (protocol_line, protocol) = match protocol {
        Some(p) => (&b"\r\nSec-WebSocket-Protocol: "[..], p.as_bytes()),
        None => (&b""[..], &b""[..]),
    };
    let parts: [&[u8]; 9] = [
        b"GET ",
        path.as_bytes(),
        b" HTTP/1.1\r\nHost: ",
        host.as_bytes(),
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
        key,
        protocol_line,
        protocol,
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
    /// Switched to WebSocket with the right key and subprotocol; `consumed` bytes were the head
    /// (what follows in the same read is the first WebSocket bytes).
    Switched {
        /// Bytes of the input that were the answer's head.
        consumed: usize,
    },
    /// Anything else; [`ResponseParser::status`] has the status code if the status line was read.
    Failed(&'static str),
}

/// Checks a server's answer to [`write_request`]: status 101, `Upgrade: websocket`,
/// `Connection: Upgrade`, the `Sec-WebSocket-Accept` for the key, the subprotocol asked for (or
/// none when none was), and no extension (none is ever offered).
#[derive(Debug, Clone)]
pub struct ResponseParser {
    lines: LineReader,
    expected_accept: [u8; ACCEPT_LEN],
    protocol: Option<&'static str>,
    status: Option<u16>,
    upgrade_ok: bool,
    connection_ok: bool,
    accept_ok: bool,
    protocol_seen: bool,
    protocol_ok: bool,
    extension: bool,
    date: Option<u64>,
}

impl ResponseParser {
    /// A parser expecting the answer to `key`, with subprotocol `protocol` if one was offered.
    pub fn new(key: &[u8; KEY_LEN], protocol: Option<&'static str>) -> Self {
        Self {
            lines: LineReader::new(MAX_RESPONSE_LEN),
            expected_accept: accept_key(key),
            protocol,
            status: None,
            upgrade_ok: false,
            connection_ok: false,
            accept_ok: false,
            protocol_seen: false,
            protocol_ok: false,
            extension: false,
            date: None,
        }
    }

    /// The answer's status code, once its status line is read (`None` before, or when the line
    /// has none).
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The answer's `Date` (Unix seconds), if it had one: the server's time, as authenticated as
    /// the rest of its answer (a board without a clock learns the time from it).
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
            if !self.status_seen() {
                let code = status_code(line);
                self.status = Some(code.unwrap_or(0));
                if code != Some(101) {
                    return Response::Failed(status_reason(code));
                }
            } else if line.is_empty() {
                return match self.verdict() {
                    Ok(()) => Response::Switched { consumed: used },
                    Err(why) => Response::Failed(why),
                };
            } else if let Some((name, value)) = header(line) {
                if name.eq_ignore_ascii_case(b"upgrade") {
                    self.upgrade_ok = value.eq_ignore_ascii_case(b"websocket");
                } else if name.eq_ignore_ascii_case(b"connection") {
                    self.connection_ok = has_token(value, b"upgrade");
                } else if name.eq_ignore_ascii_case(b"sec-websocket-accept") {
                    self.accept_ok = value == self.expected_accept;
                } else if name.eq_ignore_ascii_case(b"sec-websocket-protocol") {
                    self.protocol_seen = true;
                    self.protocol_ok = self.protocol.is_some_and(|p| value == p.as_bytes());
                } else if name.eq_ignore_ascii_case(b"sec-websocket-extensions") {
                    self.extension |= !value.is_empty();
                } else if name.eq_ignore_ascii_case(b"date") {
                    self.date = http_date(value);
                }
            }
            self.lines.next_line();
        }
        Response::More
    }

    fn status_seen(&self) -> bool {
        self.status.is_some()
    }

    fn verdict(&self) -> Result<(), &'static str> {
        if !self.upgrade_ok {
            return Err("101 without Upgrade: websocket");
        }
        if !self.connection_ok {
            return Err("101 without Connection: Upgrade");
        }
        if !self.accept_ok {
            return Err("wrong Sec-WebSocket-Accept");
        }
        match (self.protocol, self.protocol_seen) {
            (Some(_), _) if !self.protocol_ok => return Err("subprotocol not accepted"),
            (None, true) => return Err("a subprotocol that was not offered"),
            _ => {}
        }
        if self.extension {
            return Err("a WebSocket extension that was not offered");
        }
        Ok(())
    }
}

/// The code of a status line (`HTTP/1.1 101 Switching Protocols`).
fn status_code(line: &[u8]) -> Option<u16> {
    if !line.starts_with(b"HTTP/1.") {
        return None;
    }
    let digits = line.get(9..12)?;
    let code =
        digits.iter().try_fold(0u16, |n, &d| d.is_ascii_digit().then(|| n * 10 + u16::from(d - b'0')))?;
    (line.get(12).is_none_or(|&b| b == b' ')).then_some(code)
}

fn status_reason(code: Option<u16>) -> &'static str {
    match code {
        None => "not an HTTP answer",
        Some(503) => "the server answered 503 (full or shutting down)",
        Some(429) => "the server answered 429 (too many requests)",
        Some(401) => "the server answered 401 (a device token is needed)",
        Some(403) => "the server answered 403 (refused)",
        Some(400) => "the server answered 400",
        Some(404) => "the server answered 404 (nothing at that path)",
        Some(_) => "the server did not switch protocols",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(key: &[u8; KEY_LEN], extra: &str) -> [u8; 512] {
        let mut out = [0u8; 512];
        let parts: [&[u8]; 5] = [
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",
            extra.as_bytes(),
            b"sec-websocket-accept: ",
            &accept_key(key),
            b"\r\n\r\n\x82\x05",
        ];
        let mut len = 0;
        for p in parts {
            out[len..len + p.len()].copy_from_slice(p);
            len += p.len();
        }
        out
    }

    fn feed(key: &[u8; KEY_LEN], protocol: Option<&'static str>, extra: &str) -> Response {
        let a = answer(key, extra);
        let end = a.iter().rposition(|&b| b != 0).unwrap() + 1;
        ResponseParser::new(key, protocol).feed(&a[..end])
    }

    #[test]
    fn request_and_answer() {
        let key = key([7; 16]);
        let mut out = [0; MAX_REQUEST_LEN];
        let n = write_request("/trunk", "localhost", Some("trunk.v1"), &key, &mut out).unwrap();
        assert!(out[..n].starts_with(b"GET /trunk HTTP/1.1\r\nHost: localhost\r\n"));
        assert!(out[..n].ends_with(b"\r\nSec-WebSocket-Protocol: trunk.v1\r\n\r\n"));
        let n = write_request("/ws?device=a", "gw", None, &key, &mut out).unwrap();
        assert!(!out[..n].windows(8).any(|w| w == b"Protocol"), "no subprotocol offered");
        assert_eq!(write_request("/ws", "gw", None, &key, &mut out[..40]), None, "too small");

        let extra = "sec-websocket-protocol: trunk.v1\r\ndate: Thu, 03 Dec 2026 10:53:13 GMT\r\n";
        let a = answer(&key, extra);
        let end = a.iter().rposition(|&b| b != 0).unwrap() + 1;
        let mut p = ResponseParser::new(&key, Some("trunk.v1"));
        assert_eq!(p.feed(&a[..end]), Response::Switched { consumed: end - 2 });
        assert_eq!(p.date(), Some(1_796_295_193), "the server's time");
        assert_eq!(p.status(), Some(101));
    }

    #[test]
    fn answers_split_anywhere_are_read_the_same() {
        let key = key([3; 16]);
        let a = answer(&key, "");
        let end = a.iter().rposition(|&b| b != 0).unwrap() + 1 - 2;
        for cut in 0..end {
            let mut p = ResponseParser::new(&key, None);
            let first = p.feed(&a[..cut]);
            assert_eq!(first, Response::More, "cut at {cut}");
            assert_eq!(p.feed(&a[cut..end]), Response::Switched { consumed: end - cut }, "cut at {cut}");
        }
    }

    #[test]
    fn wrong_answers_are_refused_with_a_reason() {
        let key = key([9; 16]);
        let mut p = ResponseParser::new(&key, Some("trunk.v1"));
        assert_eq!(
            p.feed(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Response::Failed("the server answered 503 (full or shutting down)")
        );
        assert_eq!(p.status(), Some(503));
        let mut p = ResponseParser::new(&key, None);
        assert_eq!(p.feed(b"SSH-2.0-OpenSSH\r\n"), Response::Failed("not an HTTP answer"));
        let wrong = b"HTTP/1.1 101 OK\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: xxx\r\n\r\n";
        assert_eq!(
            ResponseParser::new(&key, None).feed(wrong),
            Response::Failed("wrong Sec-WebSocket-Accept")
        );
        assert_eq!(feed(&key, Some("trunk.v1"), ""), Response::Failed("subprotocol not accepted"));
        assert_eq!(
            feed(&key, Some("trunk.v1"), "sec-websocket-protocol: other\r\n"),
            Response::Failed("subprotocol not accepted")
        );
        assert_eq!(
            feed(&key, None, "sec-websocket-protocol: trunk.v1\r\n"),
            Response::Failed("a subprotocol that was not offered")
        );
        assert_eq!(
            feed(&key, None, "sec-websocket-extensions: permessage-deflate\r\n"),
            Response::Failed("a WebSocket extension that was not offered")
        );
        let no_upgrade = b"HTTP/1.1 101 OK\r\nconnection: upgrade\r\n\r\n";
        assert_eq!(
            ResponseParser::new(&key, None).feed(no_upgrade),
            Response::Failed("101 without Upgrade: websocket")
        );
        let no_connection = b"HTTP/1.1 101 OK\r\nupgrade: websocket\r\n\r\n";
        assert_eq!(
            ResponseParser::new(&key, None).feed(no_connection),
            Response::Failed("101 without Connection: Upgrade")
        );
        let mut long = ResponseParser::new(&key, None);
        assert_eq!(long.feed(b"HTTP/1.1 101 OK\r\n"), Response::More);
        let filler = [b'a'; 100];
        let mut got = Response::More;
        for _ in 0..(MAX_RESPONSE_LEN / 100 + 1) {
            got = long.feed(&filler);
        }
        assert_eq!(got, Response::Failed("upgrade answer too long"));
    }
}
