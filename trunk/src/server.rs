//! The aggregator side of a link: the handshake that authenticates a gateway, then the link that
//! turns its frames into ledger reports.
//!
//! The aggregator's I/O loop for one trunk is:
//! 1. [`Handshake::new`] with a random nonce; send [`Handshake::challenge`].
//! 2. On the first message, [`Handshake::hello`] says which gateway claims to be there; look up its
//!    secret, then [`Handshake::verify`] either yields a [`ServerLink`] (send its welcome) or a
//!    refusal to send before closing.
//! 3. Feed every further message to [`ServerLink::handle_message`], which records reports in the
//!    [`Ledger`] under this gateway's keys only (a gateway can never write another's counts).
//! 4. After each commit, send the acknowledgements the ledger addressed to this link with
//!    [`write_acks`], and whatever [`ServerLink::poll_transmit`] has (pongs, go-away).

use crate::auth;
use crate::frame::{
    self, AckEntry, Challenge, DecodeError, EncodeError, Frame, GoAway, GoAwayReason, Hello, MessageWriter,
    Refuse, RefuseCode, Welcome, NONCE_LEN, PROTOCOL_VERSION,
};
use crate::ledger::{Ledger, LedgerFull, LedgerSlot, SessionKey, Update};
use crate::time::{Duration, Instant};

/// Bounds and timings of the aggregator's end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest frame payload accepted. Default 16 KiB. (Frames the server sends carry at most
    /// [`frame::MAX_SERVER_PAYLOAD_LEN`], whatever this is.)
    pub max_payload_len: usize,
    /// Largest WebSocket message accepted (told to the gateway in Welcome). Default 64 KiB.
    pub max_message_len: usize,
    /// The gateway should ping when quiet this long (told in Welcome). Default 15 s.
    pub ping_interval: Duration,
    /// A link that sent nothing for this long is closed. Default 45 s.
    pub idle_timeout: Duration,
    /// A link that has not authenticated this long after it opened is closed. Default 10 s.
    pub handshake_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_payload_len: frame::DEFAULT_MAX_PAYLOAD_LEN,
            max_message_len: 64 * 1024,
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a handshake failed. [`HandshakeError::refuse_code`] is what the gateway is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The message is not a valid frame.
    Decode(DecodeError),
    /// The first message was not exactly one Hello.
    NotHello,
    /// No such gateway is provisioned.
    UnknownGateway,
    /// The proof does not match the gateway's secret.
    BadProof,
}

impl core::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Decode(e) => write!(f, "the handshake is not a valid frame: {e}"),
            Self::NotHello => f.write_str("the first message was not exactly one Hello"),
            Self::UnknownGateway => f.write_str("no such gateway is provisioned"),
            Self::BadProof => f.write_str("the proof does not match the gateway's secret"),
        }
    }
}

impl core::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Decode(e) => Some(e),
            _ => None,
        }
    }
}

impl HandshakeError {
    /// The code sent to the gateway in a Refuse frame.
    pub fn refuse_code(&self) -> RefuseCode {
        match self {
            Self::Decode(DecodeError::UnknownVersion(_)) => RefuseCode::UNSUPPORTED_VERSION,
            Self::Decode(_) | Self::NotHello => RefuseCode::PROTOCOL_ERROR,
            Self::UnknownGateway => RefuseCode::UNKNOWN_GATEWAY,
            Self::BadProof => RefuseCode::BAD_PROOF,
        }
    }

    /// A short reason, for logs, metrics labels and the Refuse frame.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Decode(DecodeError::UnknownVersion(_)) => "unsupported protocol version",
            Self::Decode(_) => "malformed handshake",
            Self::NotHello => "first message must be one hello frame",
            Self::UnknownGateway => "unknown gateway",
            Self::BadProof => "bad proof",
        }
    }
}

/// Writes a Refuse frame telling the peer why the link closes.
pub fn write_refuse(code: RefuseCode, reason: &str, out: &mut [u8]) -> Result<usize, EncodeError> {
    let text = &reason.as_bytes()[..reason.len().min(frame::MAX_REFUSE_TEXT_LEN)];
    Frame::Refuse(Refuse { code, text }).encode(out)
}

/// The aggregator's end of a link before the gateway has proved who it is.
#[derive(Debug, Clone)]
pub struct Handshake {
    nonce: [u8; NONCE_LEN],
    started: Instant,
}

impl Handshake {
    /// Starts a handshake with a fresh random `nonce`.
    pub fn new(nonce: [u8; NONCE_LEN], now: Instant) -> Self {
        Self { nonce, started: now }
    }

    /// The challenge, the first message of the link.
    pub fn challenge(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        Frame::Challenge(Challenge { version: PROTOCOL_VERSION, nonce: self.nonce }).encode(out)
    }

    /// Whether the gateway took longer than `config.handshake_timeout` to answer.
    pub fn expired(&self, now: Instant, config: &ServerConfig) -> bool {
        now - self.started > config.handshake_timeout
    }

    /// The instant after which [`Handshake::expired`] is true.
    pub fn deadline(&self, config: &ServerConfig) -> Instant {
        self.started + config.handshake_timeout + Duration::from_millis(1)
    }

    /// Parses the gateway's first message: exactly one Hello.
    pub fn hello<'m>(&self, message: &'m [u8], config: &ServerConfig) -> Result<Hello<'m>, HandshakeError> {
        match frame::decode(message, config.max_payload_len) {
            Ok((Frame::Hello(h), used)) if used == message.len() => Ok(h),
            Ok(_) => Err(HandshakeError::NotHello),
            Err(e) => Err(HandshakeError::Decode(e)),
        }
    }

    /// Checks the Hello's proof against the gateway's `secret` (`None`: no such gateway). On
    /// success the link is up for the gateway the caller numbered `gateway`.
    pub fn verify(
        self,
        hello: &Hello<'_>,
        secret: Option<&[u8]>,
        gateway: u32,
        now: Instant,
    ) -> Result<ServerLink, HandshakeError> {
        let secret = secret.ok_or(HandshakeError::UnknownGateway)?;
        if !auth::verify(secret, &self.nonce, hello) {
            return Err(HandshakeError::BadProof);
        }
        Ok(ServerLink {
            gateway,
            boot_epoch: hello.boot_epoch,
            link: hello.link,
            last_rx: now,
            welcome_due: true,
            pong_due: None,
            go_away: None,
        })
    }
}

/// Why an authenticated link must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkError {
    /// The message did not decode.
    Decode(DecodeError),
    /// A frame a gateway must not send.
    Unexpected(u8),
    /// The ledger is full; the caller should have checked [`ServerLink::can_read`]. The gateway
    /// will replay, so closing loses nothing.
    LedgerFull,
    /// The link was silent past the idle timeout.
    Idle,
}

impl core::fmt::Display for LinkError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Decode(e) => write!(f, "the gateway sent bytes that are not frames: {e}"),
            Self::Unexpected(kind) => write!(f, "a frame a gateway must not send (type 0x{kind:02x})"),
            Self::LedgerFull => f.write_str("the ledger is full"),
            Self::Idle => f.write_str("the link was silent past the idle timeout"),
        }
    }
}

impl core::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Decode(e) => Some(e),
            _ => None,
        }
    }
}

impl LinkError {
    /// The code sent to the gateway in a Refuse frame before closing.
    pub fn refuse_code(&self) -> RefuseCode {
        match self {
            Self::Decode(_) | Self::Unexpected(_) => RefuseCode::PROTOCOL_ERROR,
            Self::LedgerFull => RefuseCode::OVERLOADED,
            Self::Idle => RefuseCode::TIMEOUT,
        }
    }
}

impl From<DecodeError> for LinkError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

impl From<LedgerFull> for LinkError {
    fn from(_: LedgerFull) -> Self {
        Self::LedgerFull
    }
}

/// What one message carried, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Received {
    /// Open frames.
    pub opens: usize,
    /// Count entries.
    pub counts: usize,
    /// Close frames.
    pub closes: usize,
    /// Reports not recorded because the caller did not admit their session (see
    /// [`ServerLink::handle_message_admitting`]).
    pub skipped: usize,
}

/// An authenticated link from one gateway.
#[derive(Debug, Clone)]
pub struct ServerLink {
    gateway: u32,
    boot_epoch: u64,
    link: u8,
    last_rx: Instant,
    welcome_due: bool,
    pong_due: Option<u64>,
    go_away: Option<GoAway>,
}

impl ServerLink {
    /// The caller's number for this gateway.
    pub fn gateway(&self) -> u32 {
        self.gateway
    }

    /// The gateway's boot epoch.
    pub fn boot_epoch(&self) -> u64 {
        self.boot_epoch
    }

    /// The gateway's index for this link.
    pub fn link_index(&self) -> u8 {
        self.link
    }

    /// Whether the ledger has room for any message of up to `max_message_len` bytes (a report
    /// takes at least two bytes). When not, leave the socket unread until a flush frees room.
    ///
    /// The room is shared by every link of the ledger: links that each saw room before they
    /// waited may receive their messages together, so check [`ServerLink::has_room_for`] under
    /// the same lock as [`ServerLink::handle_message`] too.
    pub fn can_read<S: AsRef<[LedgerSlot]> + AsMut<[LedgerSlot]>>(
        ledger: &Ledger<S>,
        config: &ServerConfig,
    ) -> bool {
        ledger.room() >= config.max_message_len / 2
    }

    /// Whether the ledger has room for every report `message` may carry (at most one per two
    /// bytes): then [`ServerLink::handle_message`] cannot fail with [`LinkError::LedgerFull`]
    /// half-way through it. When not, keep the message and handle it after a flush frees room.
    pub fn has_room_for<S: AsRef<[LedgerSlot]> + AsMut<[LedgerSlot]>>(
        ledger: &Ledger<S>,
        message: &[u8],
    ) -> bool {
        ledger.room() >= message.len() / 2
    }

    /// The aggregator is not reading this link (see [`ServerLink::can_read`]): what the gateway
    /// sends, its pings included, waits in the transport, so its silence says nothing about it.
    /// The idle timeout counts again from `now`. Call it whenever the link is not read for that
    /// reason; without it a busy gateway would be closed as idle because the database was slow.
    pub fn not_reading(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// Handles one message from the gateway: its reports go into `ledger`, to be acknowledged on
    /// `route` after the commit that holds them.
    pub fn handle_message<S: AsRef<[LedgerSlot]> + AsMut<[LedgerSlot]>>(
        &mut self,
        message: &[u8],
        now: Instant,
        config: &ServerConfig,
        ledger: &mut Ledger<S>,
        route: u32,
    ) -> Result<Received, LinkError> {
        self.handle_message_admitting(message, now, config, ledger, route, |_| true)
    }

    /// [`ServerLink::handle_message`], recording only the reports about sessions `admit` says
    /// yes to (it is asked once per report, with the session id); the others are skipped and
    /// counted in [`Received::skipped`]. For a caller that enforces a quota of its own per
    /// gateway (the aggregator's sessions per gateway): the reports within the quota still
    /// count, those beyond it are never recorded. The message must still decode as a whole.
    pub fn handle_message_admitting<S: AsRef<[LedgerSlot]> + AsMut<[LedgerSlot]>>(
        &mut self,
        message: &[u8],
        now: Instant,
        config: &ServerConfig,
        ledger: &mut Ledger<S>,
        route: u32,
        mut admit: impl FnMut(u64) -> bool,
    ) -> Result<Received, LinkError> {
        self.last_rx = now;
        let mut received = Received::default();
        for frame in frame::frames(message, config.max_payload_len) {
            let key = |session| SessionKey { gateway: self.gateway, boot_epoch: self.boot_epoch, session };
            match frame? {
                Frame::Open(o) if !admit(o.session) => received.skipped += 1,
                Frame::Open(o) => {
                    let update = Update { device: o.device, ..Update::default() };
                    ledger.record(key(o.session), route, update, now)?;
                    received.opens += 1;
                }
                Frame::Counts(c) => {
                    for e in c.iter() {
                        if !admit(e.session) {
                            received.skipped += 1;
                            continue;
                        }
                        ledger.record(
                            key(e.session),
                            route,
                            Update { total: Some(e.total), ..Update::default() },
                            now,
                        )?;
                        received.counts += 1;
                    }
                }
                Frame::Close(c) if !admit(c.session) => received.skipped += 1,
                Frame::Close(c) => {
                    let update = Update { total: Some(c.total), closed: Some(c.reason), ..Update::default() };
                    ledger.record(key(c.session), route, update, now)?;
                    received.closes += 1;
                }
                Frame::Ping(n) => self.pong_due = Some(n),
                Frame::Pong(_) => {}
                other => return Err(LinkError::Unexpected(other.kind())),
            }
        }
        Ok(received)
    }

    /// Asks the gateway to leave: it stops sending reports here, waits for its acknowledgements,
    /// and reconnects (through the balancer) after `retry_after` (sent in whole milliseconds).
    pub fn go_away(&mut self, retry_after: Duration, reason: GoAwayReason) {
        self.go_away = Some(GoAway { retry_after_ms: retry_after.as_millis(), reason });
    }

    /// The link's own next message (welcome, pong, go-away); `Ok(None)` when there is none, and
    /// an error when the link was idle too long and must be closed.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        config: &ServerConfig,
        out: &mut [u8],
    ) -> Result<Option<usize>, LinkError> {
        if now - self.last_rx > config.idle_timeout {
            return Err(LinkError::Idle);
        }
        let mut w = MessageWriter::new(out, config.max_payload_len.min(frame::MAX_SERVER_PAYLOAD_LEN));
        let mut put = |f: Frame<'_>| w.frame(&f).is_ok();
        if self.welcome_due {
            let welcome = Welcome {
                link: self.link,
                ping_interval_ms: config.ping_interval.as_millis(),
                max_message_len: config.max_message_len as u64,
            };
            self.welcome_due = !put(Frame::Welcome(welcome));
        }
        if let Some(n) = self.pong_due {
            if put(Frame::Pong(n)) {
                self.pong_due = None;
            }
        }
        if let Some(g) = self.go_away {
            if put(Frame::GoAway(g)) {
                self.go_away = None;
            }
        }
        let len = w.finish();
        Ok((len > 0).then_some(len))
    }

    /// The deadline after which [`ServerLink::poll_transmit`] reports the link idle.
    pub fn idle_deadline(&self, config: &ServerConfig) -> Instant {
        self.last_rx + config.idle_timeout + Duration::from_millis(1)
    }
}

/// Writes as many of `acks` as fit into one message in `out`; returns its length (0 if `acks` was
/// empty). Entries that did not fit stay in the iterator.
pub fn write_acks<I: Iterator<Item = AckEntry>>(
    acks: &mut core::iter::Peekable<I>,
    out: &mut [u8],
    config: &ServerConfig,
) -> usize {
    let mut w = MessageWriter::new(out, config.max_payload_len.min(frame::MAX_SERVER_PAYLOAD_LEN));
    while let Some(entry) = acks.peek() {
        if !w.ack(*entry) {
            break;
        }
        acks.next();
    }
    w.finish()
}
