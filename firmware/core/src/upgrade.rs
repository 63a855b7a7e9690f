//! A phone's WebSocket upgrade request (RFC 6455 section 4.2), or its request for a file of the
//! phone page ([`crate::page`]), read as it streams in, and the gateway's answers.
//!
//! The request is read through [`LineReader`], so a phone's request costs a fixed
//! [`MAX_LINE_LEN`](ws_handshake::head::MAX_LINE_LEN)-byte line buffer however long its headers are.
//! Only what the gateway needs is kept: the device id (from `/ws?device=ID`, decoded exactly as
//! the aggregator decodes it, see [`trunk::phone`]) and the key to answer. When phones must prove
//! their device ([`Tokens`]), the token (`&token=T`) is checked as the request line is read, so
//! it is never kept.

use crate::page;

use device_token::PublicKey;
use trunk::phone::{device_id, DeviceId};
use ws_handshake::head::{has_token, header, LineReader, Step};
use ws_handshake::{accept_key, valid_key, ACCEPT_LEN, KEY_LEN};

/// The path phones connect to, the same as the aggregator's.
pub const PATH: &[u8] = b"/ws";

/// A complete, valid upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade {
    /// The phone's device id, if it gave one.
    pub device: Option<DeviceId>,
    /// The `Sec-WebSocket-Key` it sent.
    pub key: [u8; KEY_LEN],
}

/// How phones prove which device they are: a device token signed by the operator's key for the
/// device id they name (docs/SECURITY.md), checked at the upgrade.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'k> {
    /// The operator's public key (`aggregator device public-key`).
    pub key: &'k PublicKey,
    /// Now, in Unix seconds, if the gateway knows the time (the host build); a board without a
    /// clock checks the signature and the device only, not the expiry.
    pub now: Option<u64>,
}

/// Why a request is refused: each is answered with its status and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed request line or header, bad key, device id too long.
    BadRequest(&'static str),
    /// 401: no device id, or no valid device token for it (the reason says which).
    Unauthorized(&'static str),
    /// 404: not `/ws` nor a file of the phone page.
    NotFound,
    /// 405: not `GET`.
    MethodNotAllowed,
    /// 414: a request line longer than the gateway reads.
    UriTooLong,
    /// 406: a page request whose `Accept-Encoding` leaves out gzip (the page is kept compressed).
    NotAcceptable,
    /// 426: a plain HTTP request to `/ws`, not a WebSocket upgrade.
    UpgradeRequired,
    /// 426 with `Sec-WebSocket-Version: 13`: another WebSocket version.
    UnsupportedVersion,
    /// 431: the request is longer than `max_request_len`.
    TooLarge,
    /// 505: not HTTP/1.1.
    HttpVersion,
    /// 503: every session slot is taken (decided by the caller, not the parser).
    Full,
    /// 503: the gateway is shutting down.
    ShuttingDown,
}

impl Refusal {
    /// The status line, extra headers and body of the answer.
    fn parts(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            Self::BadRequest(why) => ("400 Bad Request", "", why),
            Self::Unauthorized(why) => ("401 Unauthorized", "WWW-Authenticate: Bearer\r\n", why),
            Self::NotFound => {
                ("404 Not Found", "", "the phone page is at /; phones connect to /ws?device=ID")
            }
            Self::MethodNotAllowed => ("405 Method Not Allowed", "Allow: GET\r\n", "use GET"),
            Self::NotAcceptable => ("406 Not Acceptable", "", "the page is served gzip-compressed only"),
            Self::UriTooLong => ("414 URI Too Long", "", "request line too long"),
            Self::UpgradeRequired => {
                ("426 Upgrade Required", "Upgrade: websocket\r\n", "a WebSocket upgrade is required")
            }
            Self::UnsupportedVersion => {
                ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n", "WebSocket version 13 only")
            }
            Self::TooLarge => ("431 Request Header Fields Too Large", "", "request too long"),
            Self::HttpVersion => ("505 HTTP Version Not Supported", "", "HTTP/1.1 only"),
            Self::Full => ("503 Service Unavailable", "Retry-After: 30\r\n", "gateway full"),
            Self::ShuttingDown => ("503 Service Unavailable", "Retry-After: 5\r\n", "shutting down"),
        }
    }

    /// The numeric status.
    pub fn status(&self) -> u16 {
        let (line, _, _) = self.parts();
        line.as_bytes()[..3].iter().fold(0, |n, d| n * 10 + u16::from(d - b'0'))
    }
}

/// Scratch space for the one computed piece of an answer: the accept key, or the digits of a
/// refusal's `Content-Length`.
pub type AnswerScratch = [u8; ACCEPT_LEN];

/// The answer to a refused request, as pieces to write one after another: a phone's task needs
/// no buffer for it (the pieces are constants, but for the body's length in `scratch`).
pub fn refusal_answer(refusal: Refusal, scratch: &mut AnswerScratch) -> [&[u8]; 9] {
    let (status, extra, body) = refusal.parts();
    // Bodies are short constants (with the newline added below, under 100 bytes).
    let len = body.len() + 1;
    let digits = if len < 10 {
        1
    } else if len < 100 {
        2
    } else {
        3
    };
    let mut n = len;
    for d in scratch[..digits].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    [
        b"HTTP/1.1 ",
        status.as_bytes(),
        b"\r\nConnection: close\r\n",
        extra.as_bytes(),
        b"Content-Length: ",
        &scratch[..digits],
        b"\r\n\r\n",
        body.as_bytes(),
        b"\n",
    ]
}

/// The `101 Switching Protocols` answer for `key`, as pieces (the accept key in `scratch`).
pub fn accept_answer<'a>(key: &[u8; KEY_LEN], scratch: &'a mut AnswerScratch) -> [&'a [u8]; 3] {
    *scratch = accept_key(key);
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        &scratch[..],
        b"\r\n\r\n",
    ]
}

/// The longest answer [`write_refusal`] or [`write_accept`] writes.
pub const MAX_ANSWER_LEN: usize = 160;

/// Writes the answer to a refused request into `out`; returns its length (it always fits
/// [`MAX_ANSWER_LEN`]). For tests and fuzzing: the gateway writes the pieces ([`refusal_answer`]).
pub fn write_refusal(refusal: Refusal, out: &mut [u8; MAX_ANSWER_LEN]) -> usize {
    let mut scratch = [0; ACCEPT_LEN];
    copy_answer(&refusal_answer(refusal, &mut scratch), out)
}

/// Writes the `101 Switching Protocols` answer for `key` into `out`; returns its length. For tests
/// and fuzzing: the gateway writes the pieces ([`accept_answer`]).
pub fn write_accept(key: &[u8; KEY_LEN], out: &mut [u8; MAX_ANSWER_LEN]) -> usize {
    let mut scratch = [0; ACCEPT_LEN];
    copy_answer(&accept_answer(key, &mut scratch), out)
}

fn copy_answer(parts: &[&[u8]], out: &mut [u8]) -> usize {
    let mut len = 0;
    for part in parts {
        let end = (len + part.len()).min(out.len());
        out[len..end].copy_from_slice(&part[..end - len]);
        len = end;
    }
    len
}

/// What [`RequestParser::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The request is not complete yet: all input was consumed.
    More,
    /// A valid upgrade request; `consumed` bytes were used (what follows is WebSocket frames).
    Upgrade { upgrade: Upgrade, consumed: usize },
    /// A request for a file of the phone page: answer with it, then close.
    Page(&'static page::File),
    /// A request to refuse.
    Refuse(Refusal),
}

/// Reads one upgrade request.
#[derive(Debug, Clone)]
pub struct RequestParser {
    lines: LineReader,
    seen_request_line: bool,
    fields: Fields,
}

/// What the gateway keeps of a request.
#[derive(Debug, Clone)]
struct Fields {
    first_error: Option<Refusal>,
    /// Why the phone's device token was not accepted (answered 401 after every other check).
    unauthorized: Option<&'static str>,
    /// The page file asked for (`None`: the request is for `/ws`).
    page: Option<&'static page::File>,
    /// Whether `Accept-Encoding` names gzip (`None`: no such header, so any encoding will do).
    gzip: Option<bool>,
    device: Option<DeviceId>,
    key: Option<[u8; KEY_LEN]>,
    upgrade_websocket: bool,
    connection_upgrade: bool,
    version_13: Option<bool>,
}

impl RequestParser {
    /// A parser that reads at most `max_request_len` bytes of request head.
    pub const fn new(max_request_len: usize) -> Self {
        Self {
            lines: LineReader::new(max_request_len),
            seen_request_line: false,
            fields: Fields {
                first_error: None,
                unauthorized: None,
                page: None,
                gzip: None,
                device: None,
                key: None,
                upgrade_websocket: false,
                connection_upgrade: false,
                version_13: None,
            },
        }
    }

    /// Reads bytes of the request, checking an upgrade's device token with `tokens` (`None`:
    /// phones are not asked for one). Once it returns other than [`Parsed::More`], it is done.
    pub fn feed(&mut self, data: &[u8], tokens: Option<Tokens<'_>>) -> Parsed {
        let mut used = 0;
        while used < data.len() {
            match self.lines.feed(&data[used..]) {
                Step::More => return Parsed::More,
                Step::TooLong => return Parsed::Refuse(Refusal::TooLarge),
                Step::Line { consumed } => used += consumed,
            }
            let (line, truncated) = self.lines.line();
            if !self.seen_request_line {
                if line.is_empty() {
                    self.lines.next_line();
                    continue; // RFC 9112 2.2: ignore empty lines before the request line
                }
                self.seen_request_line = true;
                if truncated {
                    return Parsed::Refuse(Refusal::UriTooLong);
                }
                self.fields.first_error = self.fields.request_line(line, tokens);
            } else if line.is_empty() {
                return match self.fields.finish() {
                    Ok(Request::Upgrade(upgrade)) => Parsed::Upgrade { upgrade, consumed: used },
                    Ok(Request::Page(file)) => Parsed::Page(file),
                    Err(r) => Parsed::Refuse(r),
                };
            } else if let Err(r) = self.fields.header(line, truncated) {
                self.fields.first_error.get_or_insert(r);
            }
            self.lines.next_line();
        }
        Parsed::More
    }
}

impl Fields {
    fn request_line(&mut self, line: &[u8], tokens: Option<Tokens<'_>>) -> Option<Refusal> {
        let mut parts = line.split(|&b| b == b' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Some(Refusal::BadRequest("malformed request line"));
        };
        if version != b"HTTP/1.1" {
            return Some(if version.starts_with(b"HTTP/") {
                Refusal::HttpVersion
            } else {
                Refusal::BadRequest("malformed request line")
            });
        }
        if method != b"GET" {
            return Some(Refusal::MethodNotAllowed);
        }
        let (path, query) = match target.iter().position(|&b| b == b'?') {
            Some(q) => (&target[..q], &target[q + 1..]),
            None => (target, &target[target.len()..]),
        };
        if path != PATH {
            // The page's query (its settings, `/?device=ID&min=1`) is the page's business.
            self.page = page::find(path);
            return self.page.is_none().then_some(Refusal::NotFound);
        }
        match device_id(query) {
            Ok(device) => self.device = device,
            Err(_) => return Some(Refusal::BadRequest("device id longer than 32 bytes")),
        }
        // The same check, with the same answers, as the aggregator's for a direct phone. Done
        // here, where the token is at hand (it is not kept), answered once the request is
        // otherwise a valid upgrade (`finish`).
        let device = self.device.as_ref().map(|d| d.as_slice());
        let admitted = tokens.map_or(Ok(()), |t| t.key.admit(device, device_token::from_query(query), t.now));
        self.unauthorized = admitted.err();
        None
    }

    fn header(&mut self, line: &[u8], truncated: bool) -> Result<(), Refusal> {
        let Some((name, value)) = header(line) else {
            return Err(Refusal::BadRequest("malformed header"));
        };
        if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade_websocket |= has_token(value, b"websocket");
        } else if name.eq_ignore_ascii_case(b"connection") {
            self.connection_upgrade |= has_token(value, b"upgrade");
        } else if name.eq_ignore_ascii_case(b"accept-encoding") {
            // `gzip;q=0` would refuse it; nobody sends that, and a browser gets gzip either way.
            let named = value.split(|&b| b == b',').any(|t| {
                let coding = t.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
                coding.eq_ignore_ascii_case(b"gzip") || coding == b"*"
            });
            *self.gzip.get_or_insert(false) |= named;
        } else if name.eq_ignore_ascii_case(b"sec-websocket-version") {
            self.version_13 = Some(value == b"13");
        } else if name.eq_ignore_ascii_case(b"sec-websocket-key") {
            match valid_key(value).filter(|_| !truncated) {
                Some(key) => self.key = Some(key),
                None => return Err(Refusal::BadRequest("bad Sec-WebSocket-Key")),
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Request, Refusal> {
        if let Some(r) = self.first_error {
            return Err(r);
        }
        if let Some(file) = self.page {
            return match self.gzip {
                Some(false) => Err(Refusal::NotAcceptable),
                _ => Ok(Request::Page(file)),
            };
        }
        if !self.upgrade_websocket || !self.connection_upgrade {
            return Err(Refusal::UpgradeRequired);
        }
        if self.version_13 != Some(true) {
            return Err(Refusal::UnsupportedVersion);
        }
        let key = self.key.ok_or(Refusal::BadRequest("missing Sec-WebSocket-Key"))?;
        if let Some(why) = self.unauthorized {
            return Err(Refusal::Unauthorized(why));
        }
        Ok(Request::Upgrade(Upgrade { device: self.device, key }))
    }
}

/// What a complete, valid request asks for.
enum Request {
    Upgrade(Upgrade),
    Page(&'static page::File),
}

#[cfg(test)]
mod tests {
    use super::*;
    use ws_handshake::head::MAX_LINE_LEN;

    const GOOD: &[u8] = b"GET /ws?device=phone-7 HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nUser-Agent: ";

    fn parse(req: &[u8]) -> Parsed {
        RequestParser::new(4096).feed(req, None)
    }

    fn good_with(tail: &[u8]) -> std::vec::Vec<u8> {
        let mut v = GOOD.to_vec();
        v.extend_from_slice(&[b'x'; 600]); // a long header nobody reads
        v.extend_from_slice(b"\r\n");
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn the_rfc_example_key_is_answered() {
        assert_eq!(&accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_good_request_in_one_piece_and_byte_by_byte() {
        let req = good_with(b"\r\n\x81\x81");
        let Parsed::Upgrade { upgrade, consumed } = parse(&req) else { panic!() };
        assert_eq!(upgrade.device.unwrap().as_slice(), b"phone-7");
        assert_eq!(consumed, req.len() - 2, "frame bytes after the head are not consumed");
        let mut p = RequestParser::new(4096);
        let mut result = Parsed::More;
        for (i, b) in req.iter().enumerate() {
            result = p.feed(core::slice::from_ref(b), None);
            if result != Parsed::More {
                assert_eq!(i, req.len() - 3);
                break;
            }
        }
        assert!(matches!(result, Parsed::Upgrade { consumed: 1, .. }));
    }

    #[test]
    fn bad_requests_get_the_right_status() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 426),
            (b"POST /ws HTTP/1.1\r\n\r\n", 405),
            (b"GET /other HTTP/1.1\r\n\r\n", 404),
            (b"GET /ws HTTP/1.0\r\n\r\n", 505),
            (b"garbage\r\n\r\n", 400),
            (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", 426),
            (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n", 400),
            (b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n", 400),
            (b"GET /ws?device=0123456789012345678901234567890123 HTTP/1.1\r\n\r\n", 400),
        ];
        for (req, status) in cases {
            let Parsed::Refuse(r) = parse(req) else { panic!("{:?}", core::str::from_utf8(req)) };
            assert_eq!(r.status(), *status, "{:?}", core::str::from_utf8(req));
        }
        let mut long = b"GET /ws?".to_vec();
        long.extend_from_slice(&[b'a'; MAX_LINE_LEN]);
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&long), Parsed::Refuse(Refusal::UriTooLong));
        assert_eq!(
            RequestParser::new(100).feed(&good_with(b"\r\n"), None),
            Parsed::Refuse(Refusal::TooLarge)
        );
    }

    #[test]
    fn the_page_files_are_asked_for_with_any_query_and_any_encoding_list_naming_gzip() {
        let page = |req: &[u8]| match parse(req) {
            Parsed::Page(file) => Ok(core::str::from_utf8(file.path).unwrap().to_owned()),
            Parsed::Refuse(r) => Err(r.status()),
            other => panic!("{other:?}"),
        };
        assert_eq!(page(b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n"), Ok("/".into()));
        assert_eq!(
            page(b"GET /?device=a&min=1 HTTP/1.1\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n\r\n"),
            Ok("/".into())
        );
        assert_eq!(
            page(b"GET /app.js HTTP/1.1\r\nAccept-Encoding: br;q=1, GZIP;q=0.5\r\n\r\n"),
            Ok("/app.js".into())
        );
        assert_eq!(page(b"GET /style.css HTTP/1.1\r\nAccept-Encoding: *\r\n\r\n"), Ok("/style.css".into()));
        assert_eq!(page(b"GET / HTTP/1.1\r\nAccept-Encoding: identity\r\n\r\n"), Err(406));
        assert_eq!(page(b"GET /dashboard HTTP/1.1\r\n\r\n"), Err(404), "only the phone page");
        assert_eq!(page(b"POST / HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(page(b"GET / HTTP/1.1\r\nbroken\r\n\r\n"), Err(400));
    }

    #[test]
    fn an_upgrade_needs_a_valid_token_for_its_own_device_when_tokens_are_required() {
        let issuer = device_token::SigningKey::from_seed(&[7; 32]);
        let key = issuer.public_key();
        let now = 1_800_000_000;
        let tokens = Some(Tokens { key: &key, now: Some(now) });
        let upgrade = |target: &str, tokens| {
            let req = std::format!("GET {target} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
            match RequestParser::new(4096).feed(req.as_bytes(), tokens) {
                Parsed::Upgrade { upgrade, .. } => Ok(upgrade.device.unwrap()),
                Parsed::Refuse(r) => Err((r.status(), r.parts().2)),
                other => panic!("{other:?}"),
            }
        };
        // The longest device id, percent-encoded all through, with its token: the line fits.
        let device = "d".repeat(32);
        let token = issuer.token(device.as_bytes(), now + 60).unwrap();
        let encoded: std::string::String = device.bytes().map(|b| std::format!("%{b:02X}")).collect();
        let ok = upgrade(&std::format!("/ws?device={encoded}&token={token}"), tokens);
        assert_eq!(ok.map(|d| d.as_slice().to_vec()), Ok(device.as_bytes().to_vec()));

        let other = issuer.token(b"someone-else", now + 60).unwrap();
        let expired = issuer.token(device.as_bytes(), now - 1).unwrap();
        let forged =
            device_token::SigningKey::from_seed(&[8; 32]).token(device.as_bytes(), now + 60).unwrap();
        for (query, why) in [
            (std::format!("device={device}"), "a device token is required (?token=)"),
            (std::format!("device={device}&token=junk"), "the device token is malformed"),
            (std::format!("device={device}&token={other}"), "the device token is not valid for this device"),
            (std::format!("device={device}&token={forged}"), "the device token is not valid for this device"),
            (std::format!("device={device}&token={expired}"), "the device token expired"),
            (std::format!("token={token}"), "a device id is required (?device=)"),
        ] {
            assert_eq!(upgrade(&std::format!("/ws?{query}"), tokens), Err((401, why)), "{query}");
        }
        // A board without a clock checks the signature and the device, not the expiry.
        let no_clock = Some(Tokens { key: &key, now: None });
        assert!(upgrade(&std::format!("/ws?device={device}&token={expired}"), no_clock).is_ok());
        assert!(upgrade(&std::format!("/ws?device={device}&token={other}"), no_clock).is_err());
        // Not required: no token needed; the page never needs one.
        assert!(upgrade(&std::format!("/ws?device={device}"), None).is_ok());
        let page = RequestParser::new(4096).feed(b"GET / HTTP/1.1\r\n\r\n", tokens);
        assert!(matches!(page, Parsed::Page(_)), "{page:?}");
    }

    #[test]
    fn every_answer_fits() {
        let mut out = [0; MAX_ANSWER_LEN];
        let all = [
            Refusal::BadRequest("device id longer than 32 bytes"),
            Refusal::Unauthorized("the device token is not valid for this device"),
            Refusal::Unauthorized("a device id is required (?device=)"),
            Refusal::NotFound,
            Refusal::MethodNotAllowed,
            Refusal::UriTooLong,
            Refusal::UpgradeRequired,
            Refusal::UnsupportedVersion,
            Refusal::TooLarge,
            Refusal::HttpVersion,
            Refusal::NotAcceptable,
            Refusal::Full,
            Refusal::ShuttingDown,
        ];
        for r in all {
            let n = write_refusal(r, &mut out);
            assert!(n < MAX_ANSWER_LEN, "{r:?}");
            assert!(out[..n].ends_with(b"\n"));
        }
        let n = write_accept(b"dGhlIHNhbXBsZSBub25jZQ==", &mut out);
        assert!(out[..n].ends_with(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_in_any_pieces_never_panic(data: std::vec::Vec<u8>, cut in 0usize..64) {
            let mut p = RequestParser::new(512);
            let cut = cut.min(data.len());
            if p.feed(&data[..cut], None) == Parsed::More {
                p.feed(&data[cut..], None);
            }
        }
    }
}
