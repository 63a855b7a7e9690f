//! Clients for the tests, built like the real ones: phones are tokio-tungstenite WebSocket
//! clients over TLS 1.3 pinned to the aggregator's CA; a gateway is the trunk crate's
//! `Gateway` state machine on WebSocket links with subprotocol `trunk.v1`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use trunk::gateway::{Gateway, GatewayConfig, Identity, SessionSlot};

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

#[allow(unused_imports)] // each test file uses its own part
pub use testkit::phones::wait_durable;
pub use testkit::tcp_from;

pub async fn tls(addr: SocketAddr, ca: &Path) -> TlsStream<TcpStream> {
    tls_from(None, addr, ca).await.expect("a TLS connection")
}

/// A TLS connection from `from` (see [`tcp_from`]).
pub async fn tls_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    ca: &Path,
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = lean_tls::pinned::client_config(ca).unwrap();
    let tcp = tcp_from(from, addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// A WebSocket on `path` (with `protocol` offered, if any).
pub async fn websocket(
    addr: SocketAddr,
    ca: &Path,
    path: &str,
    protocol: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    websocket_from(None, addr, ca, path, protocol).await
}

/// [`websocket`] from the local address `from`.
pub async fn websocket_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    ca: &Path,
    path: &str,
    protocol: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let stream = tls_from(from, addr, ca).await?;
    let mut request = format!("wss://localhost:{}{path}", addr.port()).into_client_request().unwrap();
    if let Some(p) = protocol {
        request.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
    }
    tokio_tungstenite::client_async(request, stream).await.map(|(ws, _)| ws)
}

/// The aggregator's /metrics page (Prometheus text), over TLS.
pub async fn metrics_text(addr: SocketAddr, ca: &Path) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tls(addr, ca).await;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok();
    body
}

/// A phone for `device`, with a device token signed by the key in the aggregator's data folder
/// `data` (where its CA is too).
pub async fn phone(addr: SocketAddr, data: &Path, device: &str) -> Ws {
    phone_from(None, addr, data, device).await.expect("phone connects")
}

/// [`phone`] from the local address `from`, or why it could not connect.
pub async fn phone_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    data: &Path,
    device: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let token = testkit::process::device_token(data, device);
    websocket_from(from, addr, &data.join("ca.pem"), &format!("/ws?device={device}&token={token}"), None)
        .await
}

/// A gateway on the trunk crate, its links driven by hand so a test can cut them.
pub struct TestGateway {
    pub gw: Gateway<Vec<SessionSlot>>,
    links: Vec<Option<Ws>>,
    addr: SocketAddr,
    /// The local address its links come from (`None`: the system's choice).
    pub source: Option<IpAddr>,
    ca: std::path::PathBuf,
    started: Instant,
    pub refusals: u32,
    /// The code of the latest refusal.
    pub refused_with: Option<trunk::frame::RefuseCode>,
    /// The longest message it sent the aggregator, and the longest it got, in bytes.
    pub largest_sent: usize,
    pub largest_received: usize,
}

impl TestGateway {
    pub fn new(
        addr: SocketAddr,
        ca: &Path,
        name: &[u8],
        secret: &[u8],
        sessions: usize,
        links: usize,
    ) -> Self {
        let identity = Identity { gateway_id: name, secret, boot_epoch: rand::random() };
        let config = GatewayConfig {
            flush_interval: trunk::time::Duration::from_millis(50),
            ..GatewayConfig::default()
        };
        let gw = Gateway::new(config, identity, links, vec![SessionSlot::FREE; sessions]).unwrap();
        TestGateway {
            gw,
            links: (0..links).map(|_| None).collect(),
            addr,
            source: None,
            ca: ca.to_owned(),
            started: Instant::now(),
            refusals: 0,
            refused_with: None,
            largest_sent: 0,
            largest_received: 0,
        }
    }

    pub fn now(&self) -> trunk::time::Instant {
        trunk::time::Instant::from_millis(self.started.elapsed().as_millis() as u64)
    }

    pub fn set_target(&mut self, addr: SocketAddr) {
        self.addr = addr;
    }

    /// Opens the transport of link `link` (the trunk handshake then runs in `pump`).
    pub async fn connect(&mut self, link: usize) -> bool {
        let tcp = match tcp_from(self.source, self.addr).await {
            Ok(tcp) => tcp,
            Err(_) => return false,
        };
        let config = lean_tls::pinned::client_config(&self.ca).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let Ok(stream) = TlsConnector::from(config).connect(name, tcp).await else { return false };
        let mut request =
            format!("wss://localhost:{}/trunk", self.addr.port()).into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", trunk::frame::SUBPROTOCOL.parse().unwrap());
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((ws, _)) => {
                self.links[link] = Some(ws);
                self.gw.connected(link, self.now(), rand::random());
                true
            }
            Err(_) => false,
        }
    }

    /// Cuts link `link` without a close handshake, like a reset.
    pub fn drop_link(&mut self, link: usize) {
        if self.links[link].take().is_some() {
            self.gw.disconnected(link, self.now());
        }
    }

    fn lost(&mut self, link: usize) {
        self.links[link] = None;
        self.gw.disconnected(link, self.now());
    }

    /// Sends what the gateway has to send and handles what arrived, on every link, for `d`;
    /// reconnects lost links when `reconnect` is set.
    pub async fn pump(&mut self, d: Duration, reconnect: bool) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.step(reconnect).await;
        }
    }

    /// Pumps until `done` holds; panics after `limit`.
    pub async fn pump_until(&mut self, limit: Duration, done: impl Fn(&Gateway<Vec<SessionSlot>>) -> bool) {
        let until = Instant::now() + limit;
        while !done(&self.gw) {
            assert!(Instant::now() < until, "gateway did not get there in {limit:?}: {:?}", self.gw);
            self.step(true).await;
        }
    }

    async fn step(&mut self, reconnect: bool) {
        let mut buf = vec![0u8; 64 * 1024];
        for link in 0..self.links.len() {
            if self.links[link].is_none() {
                if reconnect && !self.connect(link).await {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                continue;
            }
            loop {
                match self.gw.poll_transmit(link, self.now(), &mut buf) {
                    Ok(Some(n)) => {
                        self.largest_sent = self.largest_sent.max(n);
                        let ws = self.links[link].as_mut().unwrap();
                        if ws.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                            self.lost(link);
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.lost(link);
                        break;
                    }
                }
            }
            let Some(ws) = self.links[link].as_mut() else { continue };
            match tokio::time::timeout(Duration::from_millis(5), ws.next()).await {
                Err(_) => {}
                Ok(Some(Ok(Message::Binary(b)))) => {
                    self.largest_received = self.largest_received.max(b.len());
                    let now = self.now();
                    if let Err(e) = self.gw.handle_message(link, &b, now) {
                        if let trunk::gateway::LinkError::Refused(code) = e {
                            self.refusals += 1;
                            self.refused_with = Some(code);
                        }
                        self.lost(link);
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(None) | Ok(Some(Err(_))) => self.lost(link),
            }
        }
    }
}
