//! RFC 6455 framing of one phone's connection, sans-IO: bytes in, counts and answers out.
//!
//! Frame headers are decoded and encoded by `edge-ws` ([`FrameHeader`]); this module adds what a
//! server must enforce on top (masking, control frame rules, fragmentation order, UTF-8 in text,
//! the close handshake) and counts payload bytes as they stream through, so a phone costs a fixed
//! few dozen bytes however large its messages are: nothing is buffered, not even a ping's
//! payload, which the pong echoes as it arrives.

use edge_ws::{FrameHeader, FrameType};

/// Close codes the gateway sends (RFC 6455 section 7.4.1).
pub mod close_code {
    /// Normal closure (also: idle too long, as the aggregator does).
    pub const NORMAL: u16 = 1000;
    /// Going away: the gateway is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error: unmasked frame, bad control frame, bad fragment order, bad close code.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Text that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message larger than the gateway accepts.
    pub const TOO_BIG: u16 = 1009;
}

/// Largest control frame payload (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest frame [`Connection::poll_transmit`] returns: a close with its code (a pong's header
/// alone is 2 bytes; its payload is written from the phone's own bytes, see [`Fed::echo`]).
pub const MAX_OUTGOING_FRAME: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Payload of a data frame: counted.
    Data {
        text: bool,
    },
    /// A ping's payload: echoed as it streams through, unless the gateway is closing.
    Ping {
        echo: bool,
    },
    Pong,
    Close,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    body: Body,
    remaining: u64,
    mask: u32,
    /// Payload bytes so far, modulo 4: where in the mask the next byte is.
    offset: u8,
    fin: bool,
}

/// What happened while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The phone closed with this code (or 1005 when it gave none); the close is answered.
    Closed(u16),
    /// The phone broke the protocol; the connection is being closed with this code.
    Failed(u16),
}

/// The result of [`Connection::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes used; the rest was not looked at yet (feed it again after sending what is
    /// owed), or will never be (the connection is done).
    pub consumed: usize,
    /// Payload bytes of data frames received: what the phone sent, to be counted.
    pub payload: u64,
    /// Set once the connection is closing.
    pub event: Option<Event>,
    /// Bytes of the input, unmasked in place, that belong to the pong being sent: write them to
    /// the phone first, then what [`Connection::poll_transmit`] has (the pong's header was
    /// owed by an earlier call, which stopped right after the ping's header).
    pub echo: core::ops::Range<usize>,
}

/// One phone's WebSocket connection, from the end of the upgrade to the close.
///
/// It buffers nothing but a frame header and a close code: a ping's payload is echoed from the
/// phone's own bytes as they stream through ([`Fed::echo`]), so the connection is a few dozen
/// bytes whatever the phone sends.
#[derive(Clone)]
pub struct Connection {
    max_message_len: u64,
    message_len: u64,
    frame: Option<Frame>,
    header: [u8; FrameHeader::MAX_LEN],
    header_len: u8,
    /// Whether a fragmented message is in progress, and if so whether it is text.
    message: Option<bool>,
    /// UTF-8 state of a text message, or of a close frame's reason.
    utf8: Utf8,
    /// The first two payload bytes of a close frame (its code), and how many came.
    close_code: [u8; 2],
    close_len: u8,
    /// A pong's header is owed (its payload length); the payload follows as [`Fed::echo`].
    pong_due: Option<u8>,
    close_due: Option<u16>,
    close_sent: bool,
    done: bool,
    /// What [`Connection::poll_transmit`] returned last.
    out: [u8; MAX_OUTGOING_FRAME],
}

impl core::fmt::Debug for Connection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("frame", &self.frame)
            .field("close_sent", &self.close_sent)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection that accepts messages of up to `max_message_len` bytes.
    pub const fn new(max_message_len: u64) -> Self {
        Self {
            max_message_len,
            message_len: 0,
            frame: None,
            header: [0; FrameHeader::MAX_LEN],
            header_len: 0,
            message: None,
            utf8: Utf8::new(),
            close_code: [0; 2],
            close_len: 0,
            pong_due: None,
            close_due: None,
            close_sent: false,
            done: false,
            out: [0; MAX_OUTGOING_FRAME],
        }
    }

    /// Whether the connection is over: a close was received, or the gateway closed and nothing
    /// more will be read. Send what [`Connection::poll_transmit`] has, then drop the socket.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether the gateway sent (or queued) its close frame.
    pub fn is_closing(&self) -> bool {
        self.close_sent || self.close_due.is_some()
    }

    /// Whether a pong is half sent (its ping's payload has not all come yet): nothing else may
    /// be written to the phone until it is complete.
    pub fn is_echoing(&self) -> bool {
        matches!(self.frame, Some(Frame { body: Body::Ping { echo: true }, .. }))
    }

    /// Starts the close handshake from the gateway's side (idle, shutdown).
    pub fn close(&mut self, code: u16) {
        if !self.is_closing() {
            self.close_due = Some(code);
        }
    }

    /// Reads bytes from the phone (unmasking some of them in place). It stops early when a pong
    /// is owed or echoed, so that answers go out in order: write the [`Fed::echo`] bytes, then
    /// what [`Connection::poll_transmit`] has, then feed the rest.
    pub fn feed(&mut self, data: &mut [u8]) -> Fed {
        let mut fed = Fed { consumed: 0, payload: 0, event: None, echo: 0..0 };
        while fed.consumed < data.len() && !self.done && fed.event.is_none() && self.pong_due.is_none() {
            let start = fed.consumed;
            let rest = &mut data[start..];
            if self.frame.is_none() {
                let (used, event) = self.read_header(rest);
                fed.consumed += used;
                fed.event = event;
            } else {
                let echoing = self.is_echoing();
                let (used, event) = self.read_payload(rest, &mut fed.payload);
                fed.consumed += used;
                fed.event = event;
                if echoing {
                    fed.echo = start..start + used;
                    break;
                }
            }
        }
        fed
    }

    fn fail(&mut self, code: u16) -> Option<Event> {
        self.close(code);
        self.done = true;
        Some(Event::Failed(code))
    }

    fn read_header(&mut self, data: &[u8]) -> (usize, Option<Event>) {
        // Take bytes one at a time until edge-ws can decode the header: its length depends on
        // its first two bytes, and nothing past the header may be taken.
        let mut used = 0;
        loop {
            match FrameHeader::deserialize(&self.header[..usize::from(self.header_len)]) {
                Ok((header, _)) => {
                    self.header_len = 0;
                    // edge-ws reports control frames as final whatever their FIN bit says.
                    let fin = self.header[0] & 0x80 != 0;
                    return (used, self.start_frame(header, fin));
                }
                Err(edge_ws::Error::Incomplete(_)) => {
                    let Some(&b) = data.get(used) else { return (used, None) };
                    self.header[usize::from(self.header_len)] = b;
                    self.header_len += 1;
                    used += 1;
                }
                Err(_) => return (used, self.fail(close_code::PROTOCOL_ERROR)),
            }
        }
    }

    fn start_frame(&mut self, header: FrameHeader, fin: bool) -> Option<Event> {
        let Some(mask) = header.mask_key else {
            return self.fail(close_code::PROTOCOL_ERROR); // clients must mask (5.1)
        };
        let body = match header.frame_type {
            FrameType::Text(_) | FrameType::Binary(_) => {
                if self.message.is_some() {
                    return self.fail(close_code::PROTOCOL_ERROR); // a new message inside one
                }
                let text = matches!(header.frame_type, FrameType::Text(_));
                self.message = Some(text);
                self.message_len = 0;
                self.utf8 = Utf8::new();
                Body::Data { text }
            }
            FrameType::Continue(_) => match self.message {
                Some(text) => Body::Data { text },
                None => return self.fail(close_code::PROTOCOL_ERROR), // nothing to continue
            },
            FrameType::Ping | FrameType::Pong | FrameType::Close => {
                if !fin || header.payload_len > MAX_CONTROL_PAYLOAD as u64 {
                    return self.fail(close_code::PROTOCOL_ERROR);
                }
                match header.frame_type {
                    FrameType::Ping => {
                        // Answered unless the gateway is closing (5.5.2); the pong's header goes
                        // first, its payload as the ping's arrives.
                        let echo = !self.is_closing();
                        if echo {
                            self.pong_due = Some(header.payload_len as u8);
                        }
                        Body::Ping { echo }
                    }
                    FrameType::Pong => Body::Pong,
                    _ => {
                        // The connection ends with this frame: a text message in progress is
                        // abandoned, so its UTF-8 state checks the reason instead.
                        self.close_len = 0;
                        self.utf8 = Utf8::new();
                        Body::Close
                    }
                }
            }
        };
        if let Body::Data { .. } = body {
            self.message_len = self.message_len.saturating_add(header.payload_len);
            if self.message_len > self.max_message_len {
                return self.fail(close_code::TOO_BIG);
            }
        }
        self.frame = Some(Frame { body, remaining: header.payload_len, mask, offset: 0, fin });
        if header.payload_len == 0 {
            return self.end_frame();
        }
        None
    }

    fn read_payload(&mut self, data: &mut [u8], counted: &mut u64) -> (usize, Option<Event>) {
        let Some(mut frame) = self.frame else { return (0, None) };
        let take = data.len().min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
        let piece = &mut data[..take];
        let unmask =
            |piece: &mut [u8]| FrameHeader::mask_with(piece, Some(frame.mask), usize::from(frame.offset));
        match frame.body {
            Body::Data { text } => {
                if text {
                    unmask(piece);
                    if !self.utf8.feed(piece) {
                        return (take, self.fail(close_code::INVALID_PAYLOAD));
                    }
                }
                *counted += take as u64;
            }
            Body::Ping { echo } => {
                if echo {
                    unmask(piece);
                }
            }
            Body::Close => {
                unmask(piece);
                let mut reason: &[u8] = piece;
                while self.close_len < 2 {
                    let Some((&b, rest)) = reason.split_first() else { break };
                    self.close_code[usize::from(self.close_len)] = b;
                    self.close_len += 1;
                    reason = rest;
                }
                if !self.utf8.feed(reason) {
                    return (take, self.fail(close_code::INVALID_PAYLOAD));
                }
            }
            Body::Pong => {}
        }
        frame.offset = ((usize::from(frame.offset) + take) % 4) as u8;
        frame.remaining -= take as u64;
        self.frame = Some(frame);
        if frame.remaining == 0 {
            return (take, self.end_frame());
        }
        (take, None)
    }

    fn end_frame(&mut self) -> Option<Event> {
        let frame = self.frame.take()?;
        match frame.body {
            Body::Data { .. } => {
                if frame.fin {
                    self.message = None;
                    if !self.utf8.complete() {
                        return self.fail(close_code::INVALID_PAYLOAD);
                    }
                }
                None
            }
            Body::Ping { .. } | Body::Pong => None,
            Body::Close => {
                let code = match self.close_len {
                    0 => 1005,
                    1 => return self.fail(close_code::PROTOCOL_ERROR),
                    _ => {
                        let code = u16::from_be_bytes(self.close_code);
                        if !valid_close_code(code) {
                            return self.fail(close_code::PROTOCOL_ERROR);
                        }
                        if !self.utf8.complete() {
                            return self.fail(close_code::INVALID_PAYLOAD);
                        }
                        code
                    }
                };
                // Echo the code (5.5.1); a close without a code is answered without one.
                self.close(if code == 1005 { 0 } else { code });
                self.done = true;
                Some(Event::Closed(code))
            }
        }
    }

    /// The next frame the gateway owes the phone (a pong's header, its close): send it all
    /// before asking again. A close waits while a pong is half sent.
    pub fn poll_transmit(&mut self) -> Option<&[u8]> {
        let (frame_type, len) = if let Some(len) = self.pong_due.take() {
            (FrameType::Pong, usize::from(len))
        } else if self.is_echoing() {
            return None;
        } else if let Some(code) = self.close_due.take() {
            self.close_sent = true;
            if code == 0 {
                (FrameType::Close, 0)
            } else {
                self.out[2..4].copy_from_slice(&code.to_be_bytes());
                (FrameType::Close, 2)
            }
        } else {
            return None;
        };
        let header = FrameHeader { frame_type, payload_len: len as u64, mask_key: None };
        match header.serialize(&mut self.out[..2]) {
            // A pong's payload follows from the phone's own bytes; a close's code is here.
            Ok(2) => Some(&self.out[..if matches!(frame_type, FrameType::Pong) { 2 } else { 2 + len }]),
            _ => None, // cannot happen for a payload of at most 125 bytes
        }
    }
}

/// Close codes a peer may send (RFC 6455 section 7.4).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// An incremental UTF-8 check, for text that arrives in pieces (RFC 3629, as `core::str`).
#[derive(Debug, Clone, Copy)]
struct Utf8 {
    pending: [u8; 4],
    len: u8,
}

impl Utf8 {
    const fn new() -> Self {
        Self { pending: [0; 4], len: 0 }
    }

    /// Adds bytes; false once the text can no longer be valid.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.len > 0 {
                // Complete the pending sequence one byte at a time.
                self.pending[usize::from(self.len)] = bytes[0];
                self.len += 1;
                bytes = &bytes[1..];
                match core::str::from_utf8(&self.pending[..usize::from(self.len)]) {
                    Ok(_) => self.len = 0,
                    Err(e) if e.error_len().is_some() => return false,
                    Err(_) => continue,
                }
            }
            match core::str::from_utf8(bytes) {
                Ok(_) => return true,
                Err(e) if e.error_len().is_some() => return false,
                Err(e) => {
                    let tail = &bytes[e.valid_up_to()..];
                    self.pending[..tail.len()].copy_from_slice(tail);
                    self.len = tail.len() as u8;
                    return true;
                }
            }
        }
        true
    }

    fn complete(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    /// A masked client frame, as a phone sends it.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// What the phone's task does with a stream cut into `pieces`: feeds each piece, sends what
    /// is owed (frames and echoed ping payload) in order. Returns the bytes counted, everything
    /// written to the phone, and the event.
    fn drive(c: &mut Connection, pieces: &[&[u8]]) -> (u64, Vec<u8>, Option<Event>) {
        let (mut counted, mut written, mut event) = (0, Vec::new(), None);
        for piece in pieces {
            let mut piece = piece.to_vec();
            let mut at = 0;
            loop {
                let fed = c.feed(&mut piece[at..]);
                counted += fed.payload;
                event = event.or(fed.event);
                written.extend_from_slice(&piece[at + fed.echo.start..at + fed.echo.end]);
                while let Some(frame) = c.poll_transmit() {
                    assert!(frame.len() <= MAX_OUTGOING_FRAME);
                    written.extend_from_slice(frame);
                }
                at += fed.consumed;
                if fed.consumed == 0 || at == piece.len() {
                    break;
                }
            }
        }
        while let Some(frame) = c.poll_transmit() {
            written.extend_from_slice(frame);
        }
        (counted, written, event)
    }

    #[test]
    fn every_payload_byte_counts_in_any_split() {
        let mut stream = client_frame(2, true, &[7]);
        stream.extend(client_frame(1, false, "héllo ".as_bytes()));
        stream.extend(client_frame(9, true, b"are you there"));
        stream.extend(client_frame(0, true, "wörld".as_bytes()));
        stream.extend(client_frame(2, true, &[0; 300]));
        let total = 1 + "héllo wörld".len() as u64 + 300;
        let pong = [&[0x8a, 13][..], b"are you there"].concat();
        for cut in 0..stream.len() {
            let mut c = Connection::new(4096);
            let (counted, written, event) = drive(&mut c, &[&stream[..cut], &stream[cut..]]);
            assert_eq!((counted, event), (total, None), "cut at {cut}");
            assert_eq!(written, pong, "cut at {cut}");
        }
        // byte by byte
        let mut c = Connection::new(4096);
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(drive(&mut c, &pieces), (total, pong, None));
    }

    #[test]
    fn a_pong_is_not_interrupted_by_a_close() {
        let ping = client_frame(9, true, b"0123456789");
        let mut c = Connection::new(4096);
        let (_, written, _) = drive(&mut c, &[&ping[..10]]);
        assert_eq!(written, [&[0x8a, 10][..], b"0123"].concat());
        assert!(c.is_echoing());
        c.close(close_code::GOING_AWAY);
        assert_eq!(c.poll_transmit(), None, "a close in the middle of a pong's payload");
        let (_, written, _) = drive(&mut c, &[&ping[10..]]);
        assert_eq!(written, [&b"456789"[..], &[0x88, 2, 0x03, 0xe9]].concat());
        // A ping that comes once the gateway is closing is not answered.
        let (_, written, _) = drive(&mut c, &[&client_frame(9, true, b"late")]);
        assert_eq!(written, b"");
    }

    #[test]
    fn the_close_handshake_echoes_the_code() {
        let mut c = Connection::new(4096);
        let (_, written, event) = drive(&mut c, &[&client_frame(8, true, &[0x03, 0xe8, b'b', b'y', b'e'])]);
        assert_eq!(event, Some(Event::Closed(1000)));
        assert!(c.is_done());
        assert_eq!(written, vec![0x88, 2, 0x03, 0xe8]);
        let mut c = Connection::new(4096);
        assert_eq!(
            drive(&mut c, &[&client_frame(8, true, &[])]),
            (0, vec![0x88, 0], Some(Event::Closed(1005)))
        );
    }

    #[test]
    fn protocol_errors_close_with_the_right_code() {
        let unmasked = vec![0x82, 0x01, 0x07];
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, 1002),
            (client_frame(9, false, b"x"), 1002),      // fragmented ping
            (client_frame(9, true, &[0; 126]), 1002),  // ping too long
            (client_frame(0, true, b"x"), 1002),       // continuation of nothing
            (client_frame(3, true, b"x"), 1002),       // reserved opcode
            (client_frame(1, true, &[0xff]), 1007),    // not UTF-8
            (client_frame(1, true, &[0xc3]), 1007),    // truncated UTF-8
            (client_frame(2, true, &[0; 5000]), 1009), // too big
            (client_frame(8, true, &[0x03]), 1002),    // one-byte close
            (client_frame(8, true, &[0x03, 0xed]), 1002), // 1005 may not be sent
            (client_frame(8, true, &[0x03, 0xe8, 0xff]), 1007), // a reason that is not UTF-8
            (client_frame(8, true, &[0x03, 0xe8, 0xc3]), 1007), // a truncated reason
            ([client_frame(2, false, b"a"), client_frame(2, true, b"b")].concat(), 1002),
            ([client_frame(2, false, &[0; 3000]), client_frame(0, true, &[0; 3000])].concat(), 1009),
        ];
        for (bytes, code) in cases {
            let mut c = Connection::new(4096);
            let (_, written, event) = drive(&mut c, &[&bytes]);
            assert_eq!(event, Some(Event::Failed(code)), "{bytes:x?}");
            assert_eq!(written[written.len() - 4..], [0x88, 2, (code >> 8) as u8, code as u8]);
        }
    }

    #[test]
    fn utf8_split_anywhere() {
        let text = "añ€😀z".as_bytes();
        for cut in 0..text.len() {
            let mut u = Utf8::new();
            assert!(u.feed(&text[..cut]) && u.feed(&text[cut..]) && u.complete(), "{cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_never_panic(data: Vec<u8>, cut in 0usize..64) {
            let mut c = Connection::new(64);
            let cut = cut.min(data.len());
            let (counted, written, _) = drive(&mut c, &[&data[..cut], &data[cut..]]);
            proptest::prop_assert!(counted <= data.len() as u64);
            proptest::prop_assert!(written.len() <= data.len() + MAX_OUTGOING_FRAME);
        }

        #[test]
        fn counts_equal_payloads(payloads: Vec<Vec<u8>>, cut in 0usize..4096) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| client_frame(2, true, p)).collect();
            let total: usize = payloads.iter().map(Vec::len).sum();
            let mut c = Connection::new(u64::MAX);
            let cut = cut.min(stream.len());
            let (n, _, _) = drive(&mut c, &[&stream[..cut], &stream[cut..]]);
            proptest::prop_assert_eq!(n, total as u64);
        }
    }
}
