//! RFC 6455 framing of one phone's connection, sans-IO: bytes in, counts and answers out.
//!
//! Frame headers are decoded and encoded by `edge-ws` ([`FrameHeader`]); this module adds what a
//! server must enforce on top (masking, control frame rules, fragmentation order, UTF-8 in text,
//! the close handshake) and counts payload bytes as they stream through, so a phone costs a fixed
//! few hundred bytes however large its messages are: nothing is buffered but a ping's payload,
//! which the pong must echo.

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

/// Largest frame [`Connection::poll_transmit`] returns: a pong with a full payload.
pub const MAX_OUTGOING_FRAME: usize = HEADER_ROOM + MAX_CONTROL_PAYLOAD;

/// Bytes kept in front of a control frame's payload for the header of the frame that answers it
/// (an unmasked server frame of at most 125 bytes has a 2-byte header), so a pong or close is
/// sent from the connection's own buffer: no frame buffer in the phone's task.
const HEADER_ROOM: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Payload of a data frame: counted.
    Data {
        text: bool,
    },
    Ping,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fed {
    /// Input bytes used; the rest was not looked at (the connection is closing).
    pub consumed: usize,
    /// Payload bytes of data frames received: what the phone sent, to be counted.
    pub payload: u64,
    /// Set once the connection is closing.
    pub event: Option<Event>,
}

/// One phone's WebSocket connection, from the end of the upgrade to the close.
#[derive(Clone)]
pub struct Connection {
    max_message_len: u64,
    header: [u8; FrameHeader::MAX_LEN],
    header_len: u8,
    frame: Option<Frame>,
    /// Whether a fragmented message is in progress, and if so whether it is text.
    message: Option<bool>,
    message_len: u64,
    utf8: Utf8,
    /// A ping's or close's payload at `HEADER_ROOM..`, and the answer's header before it.
    control: [u8; MAX_OUTGOING_FRAME],
    control_len: u8,
    pong_due: Option<u8>,
    close_due: Option<u16>,
    close_sent: bool,
    done: bool,
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
            header: [0; FrameHeader::MAX_LEN],
            header_len: 0,
            frame: None,
            message: None,
            message_len: 0,
            utf8: Utf8::new(),
            control: [0; MAX_OUTGOING_FRAME],
            control_len: 0,
            pong_due: None,
            close_due: None,
            close_sent: false,
            done: false,
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

    /// Starts the close handshake from the gateway's side (idle, shutdown).
    pub fn close(&mut self, code: u16) {
        if !self.is_closing() {
            self.close_due = Some(code);
        }
    }

    /// Reads bytes from the phone.
    pub fn feed(&mut self, data: &[u8]) -> Fed {
        let mut fed = Fed { consumed: 0, payload: 0, event: None };
        while fed.consumed < data.len() && !self.done && fed.event.is_none() {
            let rest = &data[fed.consumed..];
            let step = match self.frame {
                None => self.read_header(rest),
                Some(_) => self.read_payload(rest, &mut fed.payload),
            };
            fed.consumed += step.0;
            fed.event = step.1;
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
                self.control_len = 0;
                match header.frame_type {
                    FrameType::Ping => Body::Ping,
                    FrameType::Pong => Body::Pong,
                    _ => Body::Close,
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

    fn read_payload(&mut self, data: &[u8], counted: &mut u64) -> (usize, Option<Event>) {
        let Some(mut frame) = self.frame else { return (0, None) };
        let take = data.len().min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
        let mut chunk = [0u8; 32];
        let mut used = 0;
        while used < take {
            let n = (take - used).min(chunk.len());
            let piece = &mut chunk[..n];
            piece.copy_from_slice(&data[used..used + n]);
            FrameHeader::mask_with(piece, Some(frame.mask), usize::from(frame.offset));
            match frame.body {
                Body::Data { text } => {
                    if text && !self.utf8.feed(piece) {
                        return (used + n, self.fail(close_code::INVALID_PAYLOAD));
                    }
                    *counted += n as u64;
                }
                Body::Ping | Body::Close => {
                    let at = HEADER_ROOM + usize::from(self.control_len);
                    self.control[at..at + n].copy_from_slice(piece);
                    self.control_len += n as u8;
                }
                Body::Pong => {}
            }
            frame.offset = ((usize::from(frame.offset) + n) % 4) as u8;
            used += n;
        }
        frame.remaining -= take as u64;
        self.frame = Some(frame);
        if frame.remaining == 0 {
            return (used, self.end_frame());
        }
        (used, None)
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
            Body::Ping => {
                if !self.is_closing() {
                    self.pong_due = Some(self.control_len);
                }
                None
            }
            Body::Pong => None,
            Body::Close => {
                let payload = &self.control[HEADER_ROOM..HEADER_ROOM + usize::from(self.control_len)];
                let code = match payload {
                    [] => 1005,
                    [_] => return self.fail(close_code::PROTOCOL_ERROR),
                    [hi, lo, reason @ ..] => {
                        let code = u16::from_be_bytes([*hi, *lo]);
                        if !valid_close_code(code) {
                            return self.fail(close_code::PROTOCOL_ERROR);
                        }
                        if core::str::from_utf8(reason).is_err() {
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

    /// The next frame the gateway owes the phone (a pong, its close): send it all before asking
    /// again. It is built in the connection's control buffer, in front of the ping's payload.
    pub fn poll_transmit(&mut self) -> Option<&[u8]> {
        let (frame_type, len) = if let Some(len) = self.pong_due.take() {
            (FrameType::Pong, usize::from(len))
        } else if let Some(code) = self.close_due.take() {
            self.close_sent = true;
            if code == 0 {
                (FrameType::Close, 0)
            } else {
                self.control[HEADER_ROOM..HEADER_ROOM + 2].copy_from_slice(&code.to_be_bytes());
                (FrameType::Close, 2)
            }
        } else {
            return None;
        };
        let len = len.min(MAX_CONTROL_PAYLOAD);
        let header = FrameHeader { frame_type, payload_len: len as u64, mask_key: None };
        match header.serialize(&mut self.control[..HEADER_ROOM]) {
            Ok(HEADER_ROOM) => Some(&self.control[..HEADER_ROOM + len]),
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

    fn out(c: &mut Connection) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while let Some(frame) = c.poll_transmit() {
            assert!(frame.len() <= MAX_OUTGOING_FRAME);
            frames.push(frame.to_vec());
        }
        frames
    }

    #[test]
    fn every_payload_byte_counts_in_any_split() {
        let mut stream = client_frame(2, true, &[7]);
        stream.extend(client_frame(1, false, "héllo ".as_bytes()));
        stream.extend(client_frame(9, true, b"are you there"));
        stream.extend(client_frame(0, true, "wörld".as_bytes()));
        stream.extend(client_frame(2, true, &[0; 300]));
        let total = 1 + "héllo wörld".len() as u64 + 300;
        for cut in 0..stream.len() {
            let mut c = Connection::new(4096);
            let a = c.feed(&stream[..cut]);
            let b = c.feed(&stream[cut..]);
            assert_eq!((a.consumed + b.consumed, a.payload + b.payload), (stream.len(), total));
            assert_eq!(a.event.or(b.event), None);
            let frames = out(&mut c);
            assert_eq!(frames, vec![[&[0x8a, 13][..], b"are you there"].concat()]);
        }
        // byte by byte
        let mut c = Connection::new(4096);
        let counted: u64 = stream.iter().map(|b| c.feed(core::slice::from_ref(b)).payload).sum();
        assert_eq!(counted, total);
    }

    #[test]
    fn the_close_handshake_echoes_the_code() {
        let mut c = Connection::new(4096);
        let fed = c.feed(&client_frame(8, true, &[0x03, 0xe8, b'b', b'y', b'e']));
        assert_eq!(fed.event, Some(Event::Closed(1000)));
        assert!(c.is_done());
        assert_eq!(out(&mut c), vec![vec![0x88, 2, 0x03, 0xe8]]);
        let mut c = Connection::new(4096);
        assert_eq!(c.feed(&client_frame(8, true, &[])).event, Some(Event::Closed(1005)));
        assert_eq!(out(&mut c), vec![vec![0x88, 0]]);
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
            ([client_frame(2, false, b"a"), client_frame(2, true, b"b")].concat(), 1002),
            ([client_frame(2, false, &[0; 3000]), client_frame(0, true, &[0; 3000])].concat(), 1009),
        ];
        for (bytes, code) in cases {
            let mut c = Connection::new(4096);
            let fed = c.feed(&bytes);
            assert_eq!(fed.event, Some(Event::Failed(code)), "{bytes:x?}");
            assert_eq!(out(&mut c).last().unwrap()[..4], [0x88, 2, (code >> 8) as u8, code as u8]);
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
            c.feed(&data[..cut]);
            c.feed(&data[cut..]);
            out(&mut c);
        }

        #[test]
        fn counts_equal_payloads(payloads: Vec<Vec<u8>>, cut in 0usize..4096) {
            let stream: Vec<u8> = payloads.iter().flat_map(|p| client_frame(2, true, p)).collect();
            let total: usize = payloads.iter().map(Vec::len).sum();
            let mut c = Connection::new(u64::MAX);
            let cut = cut.min(stream.len());
            let n = c.feed(&stream[..cut]).payload + c.feed(&stream[cut..]).payload;
            proptest::prop_assert_eq!(n, total as u64);
        }
    }
}
