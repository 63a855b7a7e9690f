//! Keeps one trunk link up: TCP (any `edge-nal` stack), TLS 1.3 (embedded-tls, the aggregator's
//! certificate checked against the pinned CA), the WebSocket upgrade to `/trunk` with
//! subprotocol `trunk.v1`, then the trunk protocol driven by the [`Hub`].
//!
//! Once up, the link runs as two halves on one task: a reader that feeds every trunk frame to the
//! hub (which wakes phones whose bytes became durable), and a writer that sends what the hub has
//! whenever it has something or a deadline passes. A lost link is reconnected after the hub's
//! backoff with jitter (or the aggregator's go-away hint); nothing a phone sent is lost meanwhile,
//! the hub replays from what was acknowledged.

use core::cell::RefCell;

use edge_nal::{TcpConnect, TcpSplit};
use edge_ws::{FrameHeader, FrameType};
use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::mutex::Mutex;
use embassy_time::{with_timeout, Duration, Instant, Timer};
use embedded_io_async::{Read, Write};
use embedded_tls::TlsError;
use embedded_tls::{TlsConfig, TlsConnection, TlsContext};
use rand_core::{CryptoRng, RngCore};
use trunk::frame::{HEADER_LEN, MAX_SERVER_TLS_PLAINTEXT, PATH, SUBPROTOCOL};
use ws_handshake::client::{self, Response, ResponseParser};

use crate::config::TrunkConfig;
use crate::hub::Hub;
use crate::tls::{Halves, Provider};
use crate::ws::MAX_CONTROL_PAYLOAD;

/// TLS receive buffer: one whole TLS record. The trunk protocol caps what a server sends at
/// [`MAX_SERVER_TLS_PLAINTEXT`] (4 KiB) of plaintext per record, so this is that plus the
/// record's overhead (header, content type, tag, padding), not TLS's 16 KiB; a larger record
/// drops the link with [`RECORD_TOO_LARGE`].
pub const TLS_READ_LEN: usize = MAX_SERVER_TLS_PLAINTEXT + 256;
/// TLS send buffer: records the gateway sends (it splits larger writes).
pub const TLS_WRITE_LEN: usize = 4096;
/// One trunk frame from the aggregator: the header and the largest payload a server sends
/// ([`trunk::frame::MAX_SERVER_PAYLOAD_LEN`], a contract of the protocol).
pub const FRAME_LEN: usize = HEADER_LEN + trunk::frame::MAX_SERVER_PAYLOAD_LEN;
/// The largest message the gateway sends (the hub fills it with as many counts as fit).
pub const TX_LEN: usize = 4096;

/// The memory of one link, allocated by the board (statically) or the host: 16.6 KiB (it was
/// 41 KiB while records and frames from the aggregator could be 16 KiB).
#[derive(Debug)]
pub struct LinkBuffers {
    pub tls_read: [u8; TLS_READ_LEN],
    pub tls_write: [u8; TLS_WRITE_LEN],
    pub frame: [u8; FRAME_LEN],
    pub tx: [u8; TX_LEN],
}

impl LinkBuffers {
    /// Zeroed buffers (usable in a `static`).
    pub const NEW: Self = Self {
        tls_read: [0; TLS_READ_LEN],
        tls_write: [0; TLS_WRITE_LEN],
        frame: [0; FRAME_LEN],
        tx: [0; TX_LEN],
    };
}

/// Why a link went down.
#[derive(Debug, Clone, Copy)]
pub enum LinkDown {
    /// Connecting, TLS or the upgrade took too long.
    Timeout,
    /// TCP connect failed.
    Connect,
    /// The TLS handshake failed (wrong certificate, unsupported parameters, ...).
    Tls(embedded_tls::TlsError),
    /// The upgrade was not accepted.
    Upgrade(&'static str),
    /// The connection ended or failed.
    Io,
    /// The aggregator closed the WebSocket.
    Closed,
    /// The aggregator broke the WebSocket or trunk protocol, or the link timed out.
    Protocol(&'static str),
}

/// Why a link is dropped when the aggregator (or a TLS proxy in front of it) sends a TLS record
/// larger than the trunk protocol allows.
pub const RECORD_TOO_LARGE: &str =
    "a TLS record larger than the trunk protocol's 4 KiB (a TLS proxy in front of the \
     aggregator must cap its records too: nginx ssl_buffer_size 4k)";

/// What a failed read of the aggregator's TLS stream means for the link.
fn read_failed(e: &TlsError) -> LinkDown {
    match e {
        TlsError::InsufficientSpace => LinkDown::Protocol(RECORD_TOO_LARGE),
        _ => LinkDown::Io,
    }
}

fn exact_failed(e: embedded_io_async::ReadExactError<TlsError>) -> LinkDown {
    match e {
        embedded_io_async::ReadExactError::Other(e) => read_failed(&e),
        embedded_io_async::ReadExactError::UnexpectedEof => LinkDown::Io,
    }
}

/// The time since boot, as the trunk state machine takes it.
pub fn trunk_now() -> trunk::time::Instant {
    trunk::time::Instant::from_millis(Instant::now().as_millis())
}

/// Runs link `link` for ever: connect, serve, and after each loss wait the backoff.
pub async fn run<T, R>(
    hub: &Hub<'_>,
    link: usize,
    tcp: &T,
    config: &TrunkConfig<'_>,
    bufs: &mut LinkBuffers,
    rng: &RefCell<R>,
) -> !
where
    T: TcpConnect,
    R: RngCore + CryptoRng,
{
    loop {
        let result = connect_and_serve(hub, link, tcp, config, bufs, rng).await;
        hub.disconnected(link, trunk_now());
        let delay = hub.reconnect_delay(link, trunk_now(), rng.borrow_mut().next_u32());
        match result {
            Err(why) => log::warn!("trunk link {link} down: {why:?}; reconnecting in {delay}"),
            Ok(()) => log::info!("trunk link {link} closed; reconnecting in {delay}"),
        }
        Timer::after_millis(delay.as_millis()).await;
    }
}

async fn connect_and_serve<T, R>(
    hub: &Hub<'_>,
    link: usize,
    tcp: &T,
    config: &TrunkConfig<'_>,
    bufs: &mut LinkBuffers,
    rng: &RefCell<R>,
) -> Result<(), LinkDown>
where
    T: TcpConnect,
    R: RngCore + CryptoRng,
{
    let timeout = Duration::from_millis(config.connect_timeout_ms);
    let mut socket = with_timeout(timeout, tcp.connect(config.aggregator))
        .await
        .map_err(|_| LinkDown::Timeout)?
        .map_err(|_| LinkDown::Connect)?;
    let (read, write) = socket.split();
    let (read, write) = (Mutex::<NoopRawMutex, _>::new(read), Mutex::<NoopRawMutex, _>::new(write));
    let LinkBuffers { tls_read, tls_write, frame, tx } = bufs;
    let mut tls: TlsConnection<'_, _, embedded_tls::Aes128GcmSha256> =
        TlsConnection::new(Halves::new(&read, &write), tls_read, tls_write);
    let tls_config = TlsConfig::new().with_server_name(config.server_name);
    let handshake = async {
        tls.open(TlsContext::new(&tls_config, Provider::new(rng, config.ca_der))).await.map_err(
            |e| match e {
                TlsError::InsufficientSpace => LinkDown::Protocol(RECORD_TOO_LARGE),
                e => LinkDown::Tls(e),
            },
        )?;
        upgrade(&mut tls, config.server_name, rng).await
    };
    // The aggregator's time, if its answer had a Date: a board has no other clock.
    if let Some(unix) = with_timeout(timeout, handshake).await.map_err(|_| LinkDown::Timeout)?? {
        hub.set_wall_clock(unix);
        crate::tls::learn_unix_time(unix);
    }
    let mut nonce = [0u8; trunk::frame::NONCE_LEN];
    rng.borrow_mut().fill_bytes(&mut nonce);
    hub.connected(link, trunk_now(), nonce);
    log::info!("trunk link {link}: TLS 1.3 and WebSocket up to {}", config.aggregator);

    let (mut reader, mut writer) = tls.split();
    let pong = RefCell::new(None);
    let result = match select(
        read_half(hub, link, &mut reader, frame, &pong),
        write_half(hub, link, &mut writer, tx, &pong, rng),
    )
    .await
    {
        Either::First(r) | Either::Second(r) => r,
    };
    result
}

/// The WebSocket upgrade over TLS: the time in the aggregator's answer (its `Date`), if any. The
/// answer is read a byte at a time from TLS's decrypted buffer, so not one byte of the first
/// frame after it is taken.
async fn upgrade<S: Read<Error = TlsError> + Write, R: RngCore>(
    tls: &mut S,
    host: &str,
    rng: &RefCell<R>,
) -> Result<Option<u64>, LinkDown> {
    let mut random = [0u8; 16];
    rng.borrow_mut().fill_bytes(&mut random);
    let key = client::key(random);
    let mut request = [0u8; client::MAX_REQUEST_LEN];
    let n = client::write_request(PATH, host, Some(SUBPROTOCOL), &key, &mut request)
        .ok_or(LinkDown::Upgrade("server name too long"))?;
    tls.write_all(&request[..n]).await.map_err(|_| LinkDown::Io)?;
    tls.flush().await.map_err(|_| LinkDown::Io)?;
    let mut parser = ResponseParser::new(&key, Some(SUBPROTOCOL));
    loop {
        let mut byte = [0u8; 1];
        if tls.read(&mut byte).await.map_err(|e| read_failed(&e))? == 0 {
            return Err(LinkDown::Io);
        }
        match parser.feed(&byte) {
            Response::More => {}
            Response::Switched { .. } => return Ok(parser.date()),
            Response::Failed(why) => return Err(LinkDown::Upgrade(why)),
        }
    }
}

/// Reads WebSocket frames from the aggregator and hands each complete trunk frame to the hub.
/// Trunk frames are reassembled in `frame` as they stream in, so a WebSocket message of any size
/// costs only one frame of buffer.
async fn read_half<S: Read<Error = TlsError>>(
    hub: &Hub<'_>,
    link: usize,
    tls: &mut S,
    frame: &mut [u8; FRAME_LEN],
    pong: &RefCell<Option<([u8; MAX_CONTROL_PAYLOAD], usize)>>,
) -> Result<(), LinkDown> {
    let mut have = 0usize;
    loop {
        let header = FrameHeader::recv(&mut *tls).await.map_err(|e| match e {
            edge_ws::Error::Io(e) => read_failed(&e),
            edge_ws::Error::Incomplete(_) => LinkDown::Io,
            _ => LinkDown::Protocol("bad WebSocket frame"),
        })?;
        if header.mask_key.is_some() {
            return Err(LinkDown::Protocol("masked frame from the server"));
        }
        let mut remaining = header.payload_len;
        match header.frame_type {
            FrameType::Binary(_) | FrameType::Continue(_) => {
                while remaining > 0 {
                    let need = if have < HEADER_LEN {
                        HEADER_LEN
                    } else {
                        HEADER_LEN + usize::from(u16::from_be_bytes([frame[1], frame[2]]))
                    };
                    if need > FRAME_LEN {
                        return Err(LinkDown::Protocol("trunk frame larger than the gateway reads"));
                    }
                    let take = (need - have).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    tls.read_exact(&mut frame[have..have + take]).await.map_err(exact_failed)?;
                    have += take;
                    remaining -= take as u64;
                    let complete = have >= HEADER_LEN
                        && have == HEADER_LEN + usize::from(u16::from_be_bytes([frame[1], frame[2]]));
                    if complete {
                        hub.handle_message(link, &frame[..have], trunk_now())
                            .map_err(|_| LinkDown::Protocol("trunk protocol error"))?;
                        have = 0;
                    }
                }
                if header.frame_type.is_final() && have != 0 {
                    return Err(LinkDown::Protocol("trunk frame split across messages"));
                }
            }
            FrameType::Ping => {
                let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
                let n = usize::try_from(remaining).unwrap_or(usize::MAX);
                if n > MAX_CONTROL_PAYLOAD {
                    return Err(LinkDown::Protocol("ping too long"));
                }
                tls.read_exact(&mut payload[..n]).await.map_err(exact_failed)?;
                *pong.borrow_mut() = Some((payload, n));
                hub.wake_link(link);
            }
            FrameType::Pong => {
                let mut scratch = [0u8; 32];
                while remaining > 0 {
                    let n = (remaining as usize).min(scratch.len());
                    tls.read_exact(&mut scratch[..n]).await.map_err(exact_failed)?;
                    remaining -= n as u64;
                }
            }
            FrameType::Close => return Err(LinkDown::Closed),
            FrameType::Text(_) => return Err(LinkDown::Protocol("text frame on a trunk")),
        }
    }
}

/// Sends what the hub has for this link, whenever it has something or its next deadline passes.
async fn write_half<S: Write, R: RngCore>(
    hub: &Hub<'_>,
    link: usize,
    tls: &mut S,
    tx: &mut [u8; TX_LEN],
    pong: &RefCell<Option<([u8; MAX_CONTROL_PAYLOAD], usize)>>,
    rng: &RefCell<R>,
) -> Result<(), LinkDown> {
    loop {
        let mut sent = false;
        while let Some(n) =
            hub.poll_transmit(link, trunk_now(), tx).map_err(|_| LinkDown::Protocol("link timed out"))?
        {
            let mask = rng.borrow_mut().next_u32();
            send(tls, FrameType::Binary(false), &mut tx[..n], mask).await?;
            sent = true;
        }
        let due = pong.borrow_mut().take();
        if let Some((mut payload, n)) = due {
            let mask = rng.borrow_mut().next_u32();
            send(tls, FrameType::Pong, &mut payload[..n], mask).await?;
            sent = true;
        }
        if sent {
            tls.flush().await.map_err(|_| LinkDown::Io)?;
        }
        let now = trunk_now();
        let deadline = hub.poll_timeout().instant(now).unwrap_or(now + trunk::time::Duration::from_secs(1));
        select(hub.link_event(link), Timer::at(Instant::from_millis(deadline.as_millis()))).await;
    }
}

/// One masked client frame (RFC 6455 section 5.3: every frame from a client is masked).
async fn send<S: Write>(
    tls: &mut S,
    frame_type: FrameType,
    payload: &mut [u8],
    mask: u32,
) -> Result<(), LinkDown> {
    let header = FrameHeader { frame_type, payload_len: payload.len() as u64, mask_key: Some(mask) };
    let mut head = [0u8; FrameHeader::MAX_LEN];
    let n = header.serialize(&mut head).map_err(|_| LinkDown::Protocol("frame header"))?;
    header.mask(payload, 0);
    tls.write_all(&head[..n]).await.map_err(|_| LinkDown::Io)?;
    tls.write_all(payload).await.map_err(|_| LinkDown::Io)
}
