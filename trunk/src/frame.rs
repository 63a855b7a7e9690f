//! The frame codec: every message of the protocol, its byte layout, and a decoder that never panics.
//!
//! A frame is `type: u8 | payload length: u16 big-endian | payload`. One WebSocket binary message
//! carries one or more whole frames back to back. Integers inside payloads are LEB128 varints
//! (see [`crate::varint`]) unless the layout says otherwise. The full layout of every frame is in
//! `docs/trunk-protocol.md`; the constants below are the single source of the numbers.
//!
//! Decoding borrows from the input: a [`Counts`] or [`Acks`] frame is validated once while decoding
//! and then iterated without copying, so a gateway's batch of thousands of sessions costs no
//! allocation on either end.

use crate::varint::{self, VarintError};

/// The protocol version this crate speaks. Carried in [`Challenge`] and [`Hello`].
pub const PROTOCOL_VERSION: u8 = 1;
/// The WebSocket subprotocol a trunk negotiates.
pub const SUBPROTOCOL: &str = "trunk.v1";
/// The HTTP path of the trunk endpoint.
pub const PATH: &str = "/trunk";
/// Bytes of the frame header: type and payload length.
pub const HEADER_LEN: usize = 3;
/// The largest payload the length field can describe.
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize;
/// Default bound on a payload a decoder accepts (a setting of each end; see [`decode`]).
pub const DEFAULT_MAX_PAYLOAD_LEN: usize = 16 * 1024;
/// The largest frame payload a server sends a gateway. A contract of the protocol, so that a
/// gateway on a few hundred KiB of RAM sizes its frame buffer by it instead of by the largest
/// payload a frame can describe (the server splits its acknowledgements to fit).
pub const MAX_SERVER_PAYLOAD_LEN: usize = 4096;
/// The most plaintext bytes in one TLS record a server (or a TLS proxy in front of it) sends on a
/// trunk: a contract of the protocol like [`MAX_SERVER_PAYLOAD_LEN`], so that a gateway's TLS
/// buffer holds 4 KiB records instead of TLS's 16 KiB (rustls: `max_fragment_size`; nginx:
/// `ssl_buffer_size 4k`). A gateway refuses a larger record with a clear error.
pub const MAX_SERVER_TLS_PLAINTEXT: usize = 4096;
/// Length of the random nonces in the handshake.
pub const NONCE_LEN: usize = 16;
/// Length of the HMAC-SHA256 proof in [`Hello`].
pub const PROOF_LEN: usize = 32;
/// The longest gateway id.
pub const MAX_GATEWAY_ID_LEN: usize = 64;
/// The longest device id a session may carry (a UUID in binary or a short text id).
pub const MAX_DEVICE_ID_LEN: usize = 32;
/// The longest text in a [`Refuse`] frame.
pub const MAX_REFUSE_TEXT_LEN: usize = 255;

/// Frame type codes, the first byte of every frame.
pub mod kind {
    /// [`super::Challenge`]: handshake, aggregator to gateway.
    pub const CHALLENGE: u8 = 0x01;
    /// [`super::Hello`]: handshake, gateway to aggregator.
    pub const HELLO: u8 = 0x02;
    /// [`super::Welcome`]: handshake done, aggregator to gateway.
    pub const WELCOME: u8 = 0x03;
    /// [`super::Open`]: a session began.
    pub const OPEN: u8 = 0x10;
    /// [`super::Counts`]: cumulative counts of many sessions.
    pub const COUNTS: u8 = 0x11;
    /// [`super::Close`]: a session ended.
    pub const CLOSE: u8 = 0x12;
    /// [`super::Acks`]: what a commit holds.
    pub const ACK: u8 = 0x20;
    /// A ping, either way, carrying a value the pong echoes.
    pub const PING: u8 = 0x30;
    /// The answer to a ping.
    pub const PONG: u8 = 0x31;
    /// [`super::GoAway`]: the aggregator asks the gateway to leave.
    pub const GO_AWAY: u8 = 0x40;
    /// [`super::Refuse`]: a link is refused or closed, with a reason.
    pub const REFUSE: u8 = 0x41;
}

/// Bits of the flags byte of an acknowledgement entry.
pub mod ack_flags {
    /// The session's close is durable too: the gateway may forget the session.
    pub const CLOSED: u8 = 0x01;
    /// Every bit a receiver of this version understands.
    pub const KNOWN: u8 = CLOSED;
}

/// Aggregator → gateway, first frame on a new link: the nonce the gateway's proof must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge {
    /// The protocol version the aggregator speaks ([`VERSION`]).
    pub version: u8,
    /// Random bytes the gateway's proof must cover, fresh for every link.
    pub nonce: [u8; NONCE_LEN],
}

/// Gateway → aggregator: who the gateway is, and proof that it holds its secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The protocol version the gateway speaks.
    pub version: u8,
    /// Which of the gateway's links this is (0..K).
    pub link: u8,
    /// Changes at every gateway boot; session ids are unique within one boot epoch.
    pub boot_epoch: u64,
    /// The gateway's own nonce, so the proof is fresh even if the aggregator repeats a challenge.
    pub nonce: [u8; NONCE_LEN],
    /// The gateway's provisioned name (at most [`MAX_GATEWAY_ID_LEN`] bytes).
    pub gateway_id: &'a [u8],
    /// HMAC-SHA256 over the handshake (see [`crate::auth`]).
    pub proof: [u8; PROOF_LEN],
}

/// Aggregator → gateway: the link is authenticated; session frames may flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The link number of the Hello it answers.
    pub link: u8,
    /// How often the aggregator expects to hear from the gateway at least (ping or data).
    pub ping_interval_ms: u64,
    /// The largest WebSocket message the aggregator accepts on this link.
    pub max_message_len: u64,
}

/// Gateway → aggregator: a phone session began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open<'a> {
    /// The session's id, unique within the gateway's boot epoch.
    pub session: u64,
    /// The phone's device id, if it gave one (at most [`MAX_DEVICE_ID_LEN`] bytes).
    pub device: Option<&'a [u8]>,
}

/// Gateway → aggregator: cumulative byte counts of many sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts<'a> {
    raw: &'a [u8],
}

/// One entry of a [`Counts`] frame: `session` has received `total` bytes since it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountEntry {
    /// The session's id.
    pub session: u64,
    /// Bytes received since the session opened (cumulative, never a delta).
    pub total: u64,
}

/// Why a session ended. Unknown codes are carried through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseReason(pub u8);

impl CloseReason {
    /// The phone closed its WebSocket normally.
    pub const NORMAL: Self = Self(0);
    /// The phone's connection broke (reset, timeout at the TCP level).
    pub const LOST: Self = Self(1);
    /// The phone was silent longer than the idle timeout.
    pub const IDLE: Self = Self(2);
    /// The phone broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: Self = Self(3);
    /// The gateway is shutting down.
    pub const SHUTDOWN: Self = Self(4);
}

/// Gateway → aggregator: a session ended with `total` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The session's id.
    pub session: u64,
    /// Its final cumulative count.
    pub total: u64,
    /// Why it ended.
    pub reason: CloseReason,
}

/// Aggregator → gateway: counts that a database commit holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acks<'a> {
    raw: &'a [u8],
}

/// One entry of an [`Acks`] frame: `session`'s first `total` bytes are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckEntry {
    /// The session's id.
    pub session: u64,
    /// The cumulative count the commit holds.
    pub total: u64,
    /// The session's close is durable as well.
    pub closed: bool,
}

/// Why the aggregator asks a gateway to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GoAwayReason(pub u8);

impl GoAwayReason {
    /// The aggregator is shutting down; reconnect (through the balancer) after the hint.
    pub const SHUTDOWN: Self = Self(0);
    /// The aggregator is overloaded.
    pub const OVERLOADED: Self = Self(1);
}

/// Aggregator → gateway: finish what is in flight, then reconnect elsewhere after `retry_after_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoAway {
    /// How long to wait before reconnecting, milliseconds.
    pub retry_after_ms: u64,
    /// Why the aggregator asks.
    pub reason: GoAwayReason,
}

/// Why a link was refused. Unknown codes are carried through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefuseCode(pub u8);

impl RefuseCode {
    /// No gateway is provisioned under the Hello's id.
    pub const UNKNOWN_GATEWAY: Self = Self(1);
    /// The proof does not match the provisioned secret.
    pub const BAD_PROOF: Self = Self(2);
    /// The Hello's protocol version is not spoken here.
    pub const UNSUPPORTED_VERSION: Self = Self(3);
    /// A frame broke the protocol.
    pub const PROTOCOL_ERROR: Self = Self(4);
    /// The aggregator takes no more links now.
    pub const OVERLOADED: Self = Self(5);
    /// The handshake, or the link, was silent too long.
    pub const TIMEOUT: Self = Self(6);
    /// The Hello's boot epoch was superseded by a newer boot of the same gateway, and the
    /// aggregator has folded that boot's sessions: it accepts no more reports from it.
    pub const SUPERSEDED: Self = Self(7);
    /// The gateway went over one of the aggregator's per-gateway quotas (the text says which:
    /// sessions not yet closed, or new boot epochs in a window). Reports of sessions beyond the
    /// quota were not recorded; the gateway may reconnect after a backoff (a go-away before the
    /// refusal may say when).
    pub const QUOTA: Self = Self(8);
}

/// Either end, just before it closes a link: a code and a human-readable reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refuse<'a> {
    /// Why, for machines.
    pub code: RefuseCode,
    /// Why, for people (UTF-8 expected, at most [`MAX_REFUSE_TEXT_LEN`] bytes).
    pub text: &'a [u8],
}

/// Every frame of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// See [`Challenge`].
    Challenge(Challenge),
    /// See [`Hello`].
    Hello(Hello<'a>),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Open`].
    Open(Open<'a>),
    /// See [`Counts`].
    Counts(Counts<'a>),
    /// See [`Close`].
    Close(Close),
    /// See [`Acks`].
    Ack(Acks<'a>),
    /// A ping, either way, with a value the pong echoes.
    Ping(u64),
    /// The answer to a ping, echoing its value.
    Pong(u64),
    /// See [`GoAway`].
    GoAway(GoAway),
    /// See [`Refuse`].
    Refuse(Refuse<'a>),
}

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends before the frame does; `needed` more bytes at least.
    Incomplete {
        /// More bytes needed, at least.
        needed: usize,
    },
    /// The payload length exceeds the decoder's bound.
    TooLarge {
        /// The payload length the frame announces.
        len: usize,
        /// The decoder's bound.
        max: usize,
    },
    /// A frame type this version does not know.
    UnknownType(u8),
    /// A handshake frame of a protocol version this crate does not speak.
    UnknownVersion(u8),
    /// The payload does not follow the layout; the text names the field.
    Malformed(&'static str),
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Incomplete { needed } => write!(f, "incomplete frame: {needed} more bytes needed"),
            Self::TooLarge { len, max } => write!(f, "frame payload of {len} bytes exceeds {max}"),
            Self::UnknownType(t) => write!(f, "unknown frame type 0x{t:02x}"),
            Self::UnknownVersion(v) => write!(f, "unsupported protocol version {v}"),
            Self::Malformed(what) => write!(f, "malformed frame: {what}"),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Why a frame could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is too short.
    BufferTooSmall,
    /// A field is out of its bounds (an id too long, a payload over [`MAX_PAYLOAD_LEN`]).
    Invalid(&'static str),
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BufferTooSmall => f.write_str("output buffer too small"),
            Self::Invalid(what) => write!(f, "cannot encode: {what}"),
        }
    }
}

impl core::error::Error for EncodeError {}

/// Decodes one frame from the start of `input`, accepting payloads up to `max_payload` bytes.
///
/// Returns the frame, borrowing from `input`, and the number of bytes it took. Never panics and
/// never reads past `input`, whatever it holds.
pub fn decode(input: &[u8], max_payload: usize) -> Result<(Frame<'_>, usize), DecodeError> {
    let Some(header) = input.get(..HEADER_LEN) else {
        return Err(DecodeError::Incomplete { needed: HEADER_LEN - input.len() });
    };
    let frame_type = header[0];
    let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
    if len > max_payload {
        return Err(DecodeError::TooLarge { len, max: max_payload });
    }
    let total = HEADER_LEN + len;
    let Some(payload) = input.get(HEADER_LEN..total) else {
        return Err(DecodeError::Incomplete { needed: total - input.len() });
    };
    let frame = decode_payload(frame_type, payload)?;
    Ok((frame, total))
}

/// Iterates over the frames of one WebSocket message. A message holds whole frames only, so a
/// trailing partial frame is an error like any other; the iterator stops after the first error.
pub fn frames(message: &[u8], max_payload: usize) -> Frames<'_> {
    Frames { rest: message, max_payload, failed: false }
}

/// Iterator returned by [`frames`].
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
    max_payload: usize,
    failed: bool,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match decode(self.rest, self.max_payload) {
            Ok((frame, used)) => {
                self.rest = &self.rest[used..];
                Some(Ok(frame))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn decode_payload(frame_type: u8, payload: &[u8]) -> Result<Frame<'_>, DecodeError> {
    let mut r = Reader { rest: payload };
    let frame = match frame_type {
        kind::CHALLENGE => {
            let version = r.version()?;
            Frame::Challenge(Challenge { version, nonce: r.array("nonce")? })
        }
        kind::HELLO => {
            let version = r.version()?;
            let link = r.u8("link")?;
            let boot_epoch = u64::from_be_bytes(r.array("boot epoch")?);
            let nonce = r.array("nonce")?;
            let id_len = usize::from(r.u8("gateway id length")?);
            if id_len == 0 || id_len > MAX_GATEWAY_ID_LEN {
                return Err(DecodeError::Malformed("gateway id length"));
            }
            let gateway_id = r.bytes(id_len, "gateway id")?;
            let proof = r.array("proof")?;
            Frame::Hello(Hello { version, link, boot_epoch, nonce, gateway_id, proof })
        }
        kind::WELCOME => Frame::Welcome(Welcome {
            link: r.u8("link")?,
            ping_interval_ms: r.varint("ping interval")?,
            max_message_len: r.varint("max message length")?,
        }),
        kind::OPEN => {
            let session = r.varint("session")?;
            let dev_len = usize::from(r.u8("device id length")?);
            if dev_len > MAX_DEVICE_ID_LEN {
                return Err(DecodeError::Malformed("device id length"));
            }
            let device = if dev_len == 0 { None } else { Some(r.bytes(dev_len, "device id")?) };
            Frame::Open(Open { session, device })
        }
        kind::COUNTS => {
            if payload.is_empty() {
                return Err(DecodeError::Malformed("empty counts"));
            }
            while !r.rest.is_empty() {
                r.varint("counts session")?;
                r.varint("counts total")?;
            }
            Frame::Counts(Counts { raw: payload })
        }
        kind::CLOSE => Frame::Close(Close {
            session: r.varint("session")?,
            total: r.varint("total")?,
            reason: CloseReason(r.u8("reason")?),
        }),
        kind::ACK => {
            if payload.is_empty() {
                return Err(DecodeError::Malformed("empty ack"));
            }
            while !r.rest.is_empty() {
                r.varint("ack session")?;
                r.varint("ack total")?;
                if r.u8("ack flags")? & !ack_flags::KNOWN != 0 {
                    return Err(DecodeError::Malformed("ack flags"));
                }
            }
            Frame::Ack(Acks { raw: payload })
        }
        kind::PING => Frame::Ping(u64::from_be_bytes(r.array("ping")?)),
        kind::PONG => Frame::Pong(u64::from_be_bytes(r.array("pong")?)),
        kind::GO_AWAY => Frame::GoAway(GoAway {
            retry_after_ms: r.varint("retry after")?,
            reason: GoAwayReason(r.u8("reason")?),
        }),
        kind::REFUSE => {
            let code = RefuseCode(r.u8("code")?);
            let len = usize::from(r.u8("text length")?);
            Frame::Refuse(Refuse { code, text: r.bytes(len, "text")? })
        }
        other => return Err(DecodeError::UnknownType(other)),
    };
    if !r.rest.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes in payload"));
    }
    Ok(frame)
}

/// A cursor over a payload whose every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.bytes(1, what)?[0])
    }

    fn version(&mut self) -> Result<u8, DecodeError> {
        let v = self.u8("version")?;
        if v != PROTOCOL_VERSION {
            return Err(DecodeError::UnknownVersion(v));
        }
        Ok(v)
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        match varint::read(self.rest) {
            Ok((v, n)) => {
                self.rest = &self.rest[n..];
                Ok(v)
            }
            Err(VarintError::Incomplete | VarintError::Invalid) => Err(DecodeError::Malformed(what)),
        }
    }
}

impl<'a> Counts<'a> {
    /// The entries, in the order they were written.
    pub fn iter(&self) -> CountIter<'a> {
        CountIter { rest: self.raw }
    }

    /// The encoded payload (already validated).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
}

/// Iterator over the entries of a decoded [`Counts`] frame.
#[derive(Debug, Clone)]
pub struct CountIter<'a> {
    rest: &'a [u8],
}

impl Iterator for CountIter<'_> {
    type Item = CountEntry;

    fn next(&mut self) -> Option<CountEntry> {
        // The payload was validated by `decode`, so these reads succeed; a failure ends iteration.
        let mut r = Reader { rest: self.rest };
        let session = r.varint("").ok()?;
        let total = r.varint("").ok()?;
        self.rest = r.rest;
        Some(CountEntry { session, total })
    }
}

impl<'a> Acks<'a> {
    /// The entries, in the order they were written.
    pub fn iter(&self) -> AckIter<'a> {
        AckIter { rest: self.raw }
    }

    /// The encoded payload (already validated).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.raw
    }
}

/// Iterator over the entries of a decoded [`Acks`] frame.
#[derive(Debug, Clone)]
pub struct AckIter<'a> {
    rest: &'a [u8],
}

impl Iterator for AckIter<'_> {
    type Item = AckEntry;

    fn next(&mut self) -> Option<AckEntry> {
        let mut r = Reader { rest: self.rest };
        let session = r.varint("").ok()?;
        let total = r.varint("").ok()?;
        let flags = r.u8("").ok()?;
        self.rest = r.rest;
        Some(AckEntry { session, total, closed: flags & ack_flags::CLOSED != 0 })
    }
}

/// Writes bytes into a caller's buffer, refusing (rather than panicking) when it is full.
struct Writer<'b> {
    out: &'b mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + b.len();
        self.out.get_mut(self.pos..end).ok_or(EncodeError::BufferTooSmall)?.copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    fn u8(&mut self, v: u8) -> Result<(), EncodeError> {
        self.bytes(&[v])
    }

    fn varint(&mut self, v: u64) -> Result<(), EncodeError> {
        let rest = self.out.get_mut(self.pos..).ok_or(EncodeError::BufferTooSmall)?;
        self.pos += varint::write(v, rest).ok_or(EncodeError::BufferTooSmall)?;
        Ok(())
    }
}

impl Frame<'_> {
    /// The frame's type code.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Challenge(_) => kind::CHALLENGE,
            Frame::Hello(_) => kind::HELLO,
            Frame::Welcome(_) => kind::WELCOME,
            Frame::Open(_) => kind::OPEN,
            Frame::Counts(_) => kind::COUNTS,
            Frame::Close(_) => kind::CLOSE,
            Frame::Ack(_) => kind::ACK,
            Frame::Ping(_) => kind::PING,
            Frame::Pong(_) => kind::PONG,
            Frame::GoAway(_) => kind::GO_AWAY,
            Frame::Refuse(_) => kind::REFUSE,
        }
    }

    /// Encodes the frame at the start of `out`; returns the bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        if out.len() < HEADER_LEN {
            return Err(EncodeError::BufferTooSmall);
        }
        let mut w = Writer { out, pos: HEADER_LEN };
        match self {
            Frame::Challenge(c) => {
                w.u8(c.version)?;
                w.bytes(&c.nonce)?;
            }
            Frame::Hello(h) => {
                if h.gateway_id.is_empty() || h.gateway_id.len() > MAX_GATEWAY_ID_LEN {
                    return Err(EncodeError::Invalid("gateway id length"));
                }
                w.u8(h.version)?;
                w.u8(h.link)?;
                w.bytes(&h.boot_epoch.to_be_bytes())?;
                w.bytes(&h.nonce)?;
                w.u8(h.gateway_id.len() as u8)?;
                w.bytes(h.gateway_id)?;
                w.bytes(&h.proof)?;
            }
            Frame::Welcome(m) => {
                w.u8(m.link)?;
                w.varint(m.ping_interval_ms)?;
                w.varint(m.max_message_len)?;
            }
            Frame::Open(o) => {
                w.varint(o.session)?;
                match o.device {
                    None => w.u8(0)?,
                    Some(d) if d.is_empty() || d.len() > MAX_DEVICE_ID_LEN => {
                        return Err(EncodeError::Invalid("device id length"))
                    }
                    Some(d) => {
                        w.u8(d.len() as u8)?;
                        w.bytes(d)?;
                    }
                }
            }
            Frame::Counts(c) => w.bytes(c.raw)?,
            Frame::Close(c) => {
                w.varint(c.session)?;
                w.varint(c.total)?;
                w.u8(c.reason.0)?;
            }
            Frame::Ack(a) => w.bytes(a.raw)?,
            Frame::Ping(n) | Frame::Pong(n) => w.bytes(&n.to_be_bytes())?,
            Frame::GoAway(g) => {
                w.varint(g.retry_after_ms)?;
                w.u8(g.reason.0)?;
            }
            Frame::Refuse(r) => {
                if r.text.len() > MAX_REFUSE_TEXT_LEN {
                    return Err(EncodeError::Invalid("refuse text length"));
                }
                w.u8(r.code.0)?;
                w.u8(r.text.len() as u8)?;
                w.bytes(r.text)?;
            }
        }
        let payload_len = w.pos - HEADER_LEN;
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(EncodeError::Invalid("payload longer than 65535 bytes"));
        }
        let len = (payload_len as u16).to_be_bytes();
        w.out[0] = self.kind();
        w.out[1] = len[0];
        w.out[2] = len[1];
        Ok(w.pos)
    }
}

/// Assembles one WebSocket message in a caller's buffer: single frames, and count or ack entries
/// that are packed into as few batch frames as fit. Every method refuses (returns `false` or an
/// error, writing nothing) rather than overflow, so a sender fills a message with what fits and
/// sends the rest in the next one.
#[derive(Debug)]
pub struct MessageWriter<'b> {
    out: &'b mut [u8],
    pos: usize,
    max_payload: usize,
    /// The batch frame being filled: its type and the offset of its header.
    batch: Option<(u8, usize)>,
}

impl<'b> MessageWriter<'b> {
    /// A writer filling `out` (its length bounds the message), with batch frames of at most
    /// `max_payload` bytes (the receiver's decoding bound, at most [`MAX_PAYLOAD_LEN`]).
    pub fn new(out: &'b mut [u8], max_payload: usize) -> Self {
        let max_payload = max_payload.clamp(2 * varint::MAX_LEN + 1, MAX_PAYLOAD_LEN);
        Self { out, pos: 0, max_payload, batch: None }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Appends a whole frame.
    pub fn frame(&mut self, frame: &Frame<'_>) -> Result<(), EncodeError> {
        self.close_batch();
        let rest = self.out.get_mut(self.pos..).ok_or(EncodeError::BufferTooSmall)?;
        self.pos += frame.encode(rest)?;
        Ok(())
    }

    /// Appends a count entry to the current Counts frame (starting one if needed).
    pub fn count(&mut self, session: u64, total: u64) -> bool {
        self.entry(kind::COUNTS, session, total, None)
    }

    /// Appends an acknowledgement entry to the current Ack frame (starting one if needed).
    pub fn ack(&mut self, entry: AckEntry) -> bool {
        let flags = if entry.closed { ack_flags::CLOSED } else { 0 };
        self.entry(kind::ACK, entry.session, entry.total, Some(flags))
    }

    fn entry(&mut self, frame_type: u8, session: u64, total: u64, flags: Option<u8>) -> bool {
        let need = varint::len(session) + varint::len(total) + usize::from(flags.is_some());
        let continues = match self.batch {
            Some((t, start)) => t == frame_type && self.pos + need - start - HEADER_LEN <= self.max_payload,
            None => false,
        };
        let header = if continues { 0 } else { HEADER_LEN };
        if self.pos + header + need > self.out.len() {
            return false;
        }
        if !continues {
            self.close_batch();
            self.batch = Some((frame_type, self.pos));
            self.pos += HEADER_LEN;
        }
        let mut w = Writer { out: self.out, pos: self.pos };
        // Cannot fail: the room was checked above.
        let ok =
            w.varint(session).is_ok() && w.varint(total).is_ok() && flags.is_none_or(|f| w.u8(f).is_ok());
        self.pos = w.pos;
        ok
    }

    fn close_batch(&mut self) {
        if let Some((frame_type, start)) = self.batch.take() {
            let len = ((self.pos - start - HEADER_LEN) as u16).to_be_bytes();
            self.out[start] = frame_type;
            self.out[start + 1] = len[0];
            self.out[start + 2] = len[1];
        }
    }

    /// Completes the message; returns its length (0 if nothing was written).
    pub fn finish(mut self) -> usize {
        self.close_batch();
        self.pos
    }
}
