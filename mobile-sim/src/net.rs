//! Opening one WebSocket: TCP from a chosen source address, TLS when the target is wss://, the
//! HTTP upgrade; and naming what went wrong when it fails.
//!
//! A held phone is mostly this connection, so its buffers are kept small: tungstenite reads into a
//! buffer of [`READ_BUFFER`] bytes and writes each frame straight through.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, error::ProtocolError};
use tokio_tungstenite::WebSocketStream;
use ws_handshake::client::{self, Response, ResponseParser};

/// Bytes tungstenite's read buffer starts with: a phone only ever receives short `{"durable":N}`
/// texts (longer messages still arrive: the buffer grows for them).
pub const READ_BUFFER: usize = 128;

/// A connection target, resolved once at the start.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as connected to (scheme, authority, path and query).
    pub url: String,
    pub tls: bool,
    pub addr: SocketAddr,
    pub server_name: ServerName<'static>,
}

impl Target {
    /// Parses and resolves `url` (ws:// or wss://). `default_path` replaces an empty or `/` path.
    pub async fn resolve(url: &str, default_path: Option<&str>) -> anyhow::Result<Self> {
        let uri: Uri = url.trim().parse().with_context(|| format!("target {url:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => bail!("target {url:?}: the scheme must be ws:// or wss://"),
        };
        let authority = uri.authority().ok_or_else(|| anyhow!("target {url:?} has no host"))?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let mut path_and_query = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
        if let Some(default_path) = default_path {
            let path = uri.path();
            if path.is_empty() || path == "/" {
                path_and_query = match uri.query() {
                    Some(q) => format!("{default_path}?{q}"),
                    None => default_path.to_string(),
                };
            }
        }
        if path_and_query.is_empty() {
            path_and_query = "/".into();
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| anyhow!("{host} has no address"))?;
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("{host} is not a valid TLS server name"))?;
        let scheme = if tls { "wss" } else { "ws" };
        Ok(Self { url: format!("{scheme}://{authority}{path_and_query}"), tls, addr, server_name })
    }

    /// The URL with `device=ID` added to its query.
    pub fn url_with_device(&self, device: &str) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}device={}", self.url, percent_encode(device))
    }

    pub fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A TCP connection, with TLS or without. The TLS state is boxed so that plain connections do
/// not carry its size.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<LeanTlsStream>),
}

/// A phone's TLS: the shared `lean-tls` stream (no buffers held while idle), as a client.
type LeanTlsStream = lean_tls::tokio_io::LeanTlsStream<TcpStream, rustls::client::UnbufferedClientConnection>;

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type Ws = WebSocketStream<Stream>;

/// Opens WebSockets: the TLS configuration, buffer sizes, timeout and subprotocol they share.
#[derive(Clone)]
pub struct Connector {
    tls: Option<Arc<rustls::ClientConfig>>,
    ws_config: WebSocketConfig,
    timeout: Duration,
    subprotocol: Option<&'static str>,
}

impl Connector {
    pub fn new(
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
        subprotocol: Option<&'static str>,
        max_message: usize,
    ) -> Self {
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(max_message.max(64 * 1024) * 2)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        Self { tls, ws_config, timeout, subprotocol }
    }

    /// TCP connect (bound to `source` when given), TLS for wss://, then the WebSocket upgrade of
    /// `url`. Returns the WebSocket and how long all of that took.
    pub async fn connect(
        &self,
        target: &Target,
        url: &str,
        source: Option<IpAddr>,
    ) -> Result<(Ws, Duration), Failure> {
        let started = Instant::now();
        match tokio::time::timeout(self.timeout, self.open(target, url, source)).await {
            Err(_) => Err(Failure::new(FailureKind::Timeout, "connection attempt timed out")),
            Ok(Err(e)) => Err(e),
            Ok(Ok(ws)) => Ok((ws, started.elapsed())),
        }
    }

    async fn open(&self, target: &Target, url: &str, source: Option<IpAddr>) -> Result<Ws, Failure> {
        let socket = if target.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .map_err(Failure::io)?;
        if let Some(source) = source {
            host_runtime::net::bind_address_no_port(&socket);
            socket.bind(SocketAddr::new(source, 0)).map_err(Failure::io)?;
        }
        let tcp = socket.connect(target.addr).await.map_err(Failure::io)?;
        tcp.set_nodelay(true).map_err(Failure::io)?;
        let stream = match (&self.tls, target.tls) {
            (Some(tls), true) => {
                let tls = LeanTlsStream::connect(tls.clone(), target.server_name.clone(), tcp)
                    .await
                    .map_err(Failure::tls_io)?;
                Stream::Tls(Box::new(tls))
            }
            (None, true) => return Err(Failure::new(FailureKind::Tls, "wss:// target without --ca")),
            (_, false) => Stream::Plain(tcp),
        };
        upgrade(stream, url, self.subprotocol, self.ws_config).await
    }
}

/// The client side of the HTTP upgrade (RFC 6455 section 4), with `ws_handshake::client` (the
/// one client handshake, the gateway's trunks use it too) rather than tungstenite's: tungstenite's
/// client handshake hands its 4 KiB read buffer over to the connection, which would then keep it
/// for its whole life; here the connection starts with a [`READ_BUFFER`]-byte one.
async fn upgrade(
    mut stream: Stream,
    url: &str,
    subprotocol: Option<&'static str>,
    config: WebSocketConfig,
) -> Result<Ws, Failure> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (request, mut parser) = upgrade_request(url, subprotocol)?;
    stream.write_all(&request).await.map_err(Failure::io)?;
    stream.flush().await.map_err(Failure::io)?;
    drop(request);

    let mut chunk = [0u8; 512];
    let (n, consumed) = loop {
        let n = stream.read(&mut chunk).await.map_err(Failure::io)?;
        if let Some(consumed) = upgrade_answer(&mut parser, &chunk[..n])? {
            break (n, consumed);
        }
    };
    let ws = if consumed == n {
        WebSocketStream::from_raw_socket(stream, Role::Client, Some(config)).await
    } else {
        // Frames that came with the response: exactly those bytes are handed over.
        let tail = chunk[consumed..n].to_vec();
        WebSocketStream::from_partially_read(stream, tail, Role::Client, Some(config)).await
    };
    Ok(ws)
}

/// The upgrade request for `url` (its path, query and authority), and the parser of its answer:
/// both engines' phones send this and check the answer with [`upgrade_answer`].
pub fn upgrade_request(
    url: &str,
    subprotocol: Option<&'static str>,
) -> Result<(Vec<u8>, ResponseParser), Failure> {
    let uri: Uri = url.parse().map_err(|e| Failure::new(FailureKind::Protocol, format!("{url}: {e}")))?;
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let key = client::key(rand::random());
    let mut request = vec![0u8; client::MAX_REQUEST_LEN + path.len() + authority.len()];
    let n = client::write_request(path, authority, subprotocol, &key, &mut request)
        .ok_or_else(|| Failure::new(FailureKind::Protocol, "upgrade request too long"))?;
    request.truncate(n);
    Ok((request, ResponseParser::new(&key, subprotocol)))
}

/// Feeds what one read of the answer brought (`data`; empty: the server closed): `Some(n)` once
/// the server switched protocols, whose first `n` bytes of `data` were the answer's end (the rest
/// are frames); `None` while more is needed.
pub fn upgrade_answer(parser: &mut ResponseParser, data: &[u8]) -> Result<Option<usize>, Failure> {
    if data.is_empty() {
        return Err(Failure::new(FailureKind::Reset, "connection closed during the WebSocket upgrade"));
    }
    match parser.feed(data) {
        Response::More => Ok(None),
        Response::Switched { consumed } => Ok(Some(consumed)),
        Response::Failed(why) => Err(answer_failure(parser, why)),
    }
}

/// What a refused upgrade counts as: an HTTP status other than 101 by its code (a busy server's
/// 503 is told apart from a broken one), anything else as a protocol failure.
fn answer_failure(parser: &ResponseParser, why: &str) -> Failure {
    match parser.status() {
        Some(code) if code != 101 && code != 0 => {
            Failure::new(FailureKind::Http(code), format!("HTTP {code}: {why}"))
        }
        _ => Failure::new(FailureKind::Protocol, why.to_string()),
    }
}

/// What kind of thing went wrong with a connection: the report counts errors by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FailureKind {
    Refused,
    Reset,
    Timeout,
    AddrNotAvailable,
    TooManyFiles,
    Tls,
    Http(u16),
    ClosedByServer,
    Protocol,
    /// The aggregator refused a trunk link (the code is in the detail).
    TrunkRefused,
    /// A trunk link broke the protocol or timed out at the trunk level.
    Trunk,
    Other,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused => f.write_str("refused"),
            Self::Reset => f.write_str("reset"),
            Self::Timeout => f.write_str("timeout"),
            Self::AddrNotAvailable => f.write_str("address not available"),
            Self::TooManyFiles => f.write_str("too many open files"),
            Self::Tls => f.write_str("tls"),
            Self::Http(code) => write!(f, "http {code}"),
            Self::ClosedByServer => f.write_str("closed by server"),
            Self::Protocol => f.write_str("protocol"),
            Self::TrunkRefused => f.write_str("trunk refused"),
            Self::Trunk => f.write_str("trunk"),
            Self::Other => f.write_str("other"),
        }
    }
}

/// A failed or lost connection: its kind and the error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }

    pub fn io(e: io::Error) -> Self {
        Self { kind: classify_io(&e), detail: e.to_string() }
    }

    /// An error of the TLS handshake: whatever is not plainly a network error is a TLS error.
    fn tls_io(e: io::Error) -> Self {
        let kind = match classify_io(&e) {
            FailureKind::Other => FailureKind::Tls,
            kind => kind,
        };
        Self { kind, detail: e.to_string() }
    }

    pub fn ws(e: tungstenite::Error) -> Self {
        use tungstenite::Error as E;
        let kind = match &e {
            E::Io(io) => classify_io(io),
            E::Tls(_) => FailureKind::Tls,
            E::Http(response) => FailureKind::Http(response.status().as_u16()),
            E::ConnectionClosed | E::AlreadyClosed => FailureKind::ClosedByServer,
            E::Protocol(ProtocolError::ResetWithoutClosingHandshake) => FailureKind::Reset,
            E::Protocol(_) | E::Utf8(_) | E::HttpFormat(_) | E::Url(_) => FailureKind::Protocol,
            _ => FailureKind::Other,
        };
        Self { kind, detail: e.to_string() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

fn classify_io(e: &io::Error) -> FailureKind {
    use io::ErrorKind as K;
    if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        return FailureKind::Tls;
    }
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => return FailureKind::TooManyFiles,
        Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => return FailureKind::AddrNotAvailable,
        _ => {}
    }
    match e.kind() {
        K::ConnectionRefused => FailureKind::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => FailureKind::Reset,
        K::TimedOut => FailureKind::Timeout,
        K::AddrNotAvailable | K::AddrInUse => FailureKind::AddrNotAvailable,
        _ => FailureKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_goes_into_the_query() {
        let t = Target {
            url: "ws://127.0.0.1:9/ws".into(),
            tls: false,
            addr: "127.0.0.1:9".parse().unwrap(),
            server_name: ServerName::try_from("localhost").unwrap(),
        };
        assert_eq!(t.url_with_device("sim-000001"), "ws://127.0.0.1:9/ws?device=sim-000001");
        let t = Target { url: "ws://127.0.0.1:9/ws?x=1".into(), ..t };
        assert_eq!(t.url_with_device("a b/c"), "ws://127.0.0.1:9/ws?x=1&device=a%20b%2Fc");
    }

    #[test]
    fn errors_are_classified() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(Failure::io(refused).kind, FailureKind::Refused);
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(Failure::io(emfile).kind, FailureKind::TooManyFiles);
        let notavail = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert_eq!(Failure::io(notavail).kind, FailureKind::AddrNotAvailable);
        assert_eq!(FailureKind::Http(503).to_string(), "http 503");
    }

    #[test]
    fn refused_upgrades_are_counted_by_status() {
        let key = client::key([1; 16]);
        let mut busy = ResponseParser::new(&key, None);
        let Response::Failed(why) = busy.feed(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") else {
            panic!("a 503 is not a switch")
        };
        assert_eq!(answer_failure(&busy, why).kind, FailureKind::Http(503));
        let mut wrong = ResponseParser::new(&key, None);
        let answer = b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n";
        let Response::Failed(why) = wrong.feed(answer) else { panic!("a wrong accept is not a switch") };
        assert_eq!(answer_failure(&wrong, why).kind, FailureKind::Protocol);
    }

    #[tokio::test]
    async fn default_path_for_trunks() {
        let t = Target::resolve("ws://127.0.0.1:7000", Some("/trunk")).await.unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:7000/trunk");
        let t = Target::resolve("ws://127.0.0.1:7000/other", Some("/trunk")).await.unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:7000/other");
        assert!(Target::resolve("http://127.0.0.1:7000", None).await.is_err());
    }
}
