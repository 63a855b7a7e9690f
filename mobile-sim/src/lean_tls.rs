//! A TLS client stream over rustls's unbuffered API that holds no buffers while idle.
//!
//! tokio-rustls drives rustls's buffered `ClientConnection`, which keeps a 4 KiB receive buffer
//! for the whole life of a connection. For a phone that receives a few dozen bytes a minute that
//! buffer is most of what it costs, so held phones use this stream instead: received TLS bytes,
//! bytes to send and decrypted bytes each live in a `Vec` that is released as soon as it is empty.
//! An idle connection keeps only rustls's own state (keys, peer certificate, ...) and the socket.
//!
//! Order is kept as TLS requires: bytes rustls encoded (handshake, alerts, key updates) and
//! encrypted application data all go out through one queue, written before anything newer.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::unbuffered::{ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedStatus};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket at least at a time.
const READ_CHUNK: usize = 1024;
/// TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;

pub struct LeanTlsStream {
    tcp: TcpStream,
    conn: UnbufferedClientConnection,
    /// Received TLS bytes not yet processed.
    incoming: Vec<u8>,
    /// TLS bytes to send; the first `out_sent` of them are written.
    outgoing: Vec<u8>,
    out_sent: usize,
    /// Decrypted bytes; the first `plain_read` of them were read.
    plaintext: Vec<u8>,
    plain_read: usize,
    /// The peer closed (close_notify, or the socket ended).
    eof: bool,
    /// We sent close_notify.
    closed: bool,
}

impl std::fmt::Debug for LeanTlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeanTlsStream")
            .field("tcp", &self.tcp)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &(self.outgoing.len() - self.out_sent))
            .field("plaintext", &(self.plaintext.len() - self.plain_read))
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

/// Where the connection stands after processing what was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pumped {
    /// The handshake needs more bytes from the peer.
    Handshaking,
    /// Application data may flow; more may be read from the peer.
    Established,
    /// The peer closed.
    Closed,
}

fn tls_error<E: Into<Box<dyn std::error::Error + Send + Sync>>>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl LeanTlsStream {
    /// Runs the TLS handshake over `tcp`.
    pub async fn connect(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        let mut s = Self {
            tcp,
            conn,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            out_sent: 0,
            plaintext: Vec::new(),
            plain_read: 0,
            eof: false,
            closed: false,
        };
        loop {
            let pumped = s.pump()?;
            poll_fn(|cx| s.poll_write_out(cx)).await?;
            match pumped {
                Pumped::Established => return Ok(s),
                Pumped::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    ))
                }
                Pumped::Handshaking => {
                    if poll_fn(|cx| s.poll_fill(cx)).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed during the TLS handshake",
                        ));
                    }
                }
            }
        }
    }

    /// Processes the received bytes: decrypted data goes to `plaintext`, whatever rustls wants to
    /// send goes to `outgoing`. Releases the receive buffer once it is empty.
    fn pump(&mut self) -> io::Result<Pumped> {
        let result = loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let state = state.map_err(tls_error)?;
            let step = match state {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut encode, &mut self.outgoing)?;
                    None
                }
                // The encoded bytes are queued in order ahead of anything sent later; the
                // queue is written before any new data.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Pumped::Handshaking),
                ConnectionState::WriteTraffic(_) => Some(Pumped::Established),
                ConnectionState::PeerClosed => {
                    self.eof = true;
                    None
                }
                ConnectionState::Closed => Some(Pumped::Closed),
                _ => return Err(tls_error("unexpected state")),
            };
            self.incoming.drain(..discard);
            if let Some(step) = step {
                break step;
            }
        };
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        Ok(if self.eof && result == Pumped::Established { Pumped::Closed } else { result })
    }

    /// Encrypts `data` into the send queue.
    fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        loop {
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(&mut self.incoming);
            let state = state.map_err(tls_error)?;
            let done = match state {
                ConnectionState::WriteTraffic(mut traffic) => {
                    let mut need = data.len() + 64;
                    loop {
                        let start = self.outgoing.len();
                        match traffic.encrypt(data, spare(&mut self.outgoing, need)) {
                            Ok(n) => {
                                self.outgoing.truncate(start + n);
                                break;
                            }
                            Err(EncryptError::InsufficientSize(e)) => {
                                self.outgoing.truncate(start);
                                need = e.required_size;
                            }
                            Err(e) => return Err(tls_error(e)),
                        }
                    }
                    true
                }
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(tls_error)?;
                        self.plaintext.extend_from_slice(record.payload);
                    }
                    false
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    encode_into(&mut encode, &mut self.outgoing)?;
                    false
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    false
                }
                ConnectionState::PeerClosed => {
                    self.eof = true;
                    false
                }
                ConnectionState::Closed => return Err(io::Error::from(io::ErrorKind::BrokenPipe)),
                ConnectionState::BlockedHandshake => return Err(tls_error("handshake not complete")),
                _ => return Err(tls_error("unexpected state")),
            };
            self.incoming.drain(..discard);
            if done {
                return Ok(());
            }
        }
    }

    /// Writes the send queue; releases it once written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.out_sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_sent += n;
        }
        self.outgoing = Vec::new();
        self.out_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads more TLS bytes from the socket (at least the rest of the record begun, if known).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let len = self.incoming.len();
        let record_rest = if len >= RECORD_HEADER {
            let body = usize::from(u16::from_be_bytes([self.incoming[3], self.incoming[4]]));
            (RECORD_HEADER + body).saturating_sub(len)
        } else {
            0
        };
        let want = record_rest.max(READ_CHUNK);
        self.incoming.resize(len + want, 0);
        let mut buf = ReadBuf::new(&mut self.incoming[len..]);
        let result = Pin::new(&mut self.tcp).poll_read(cx, &mut buf);
        let n = buf.filled().len();
        self.incoming.truncate(len + n);
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        ready!(result)?;
        Poll::Ready(Ok(n))
    }
}

/// Encodes a handshake record into the send queue.
fn encode_into(encode: &mut EncodeTlsData<'_, ClientConnectionData>, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    let mut need = 256;
    loop {
        match encode.encode(spare(out, need)) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(e)) => {
                out.truncate(start);
                need = e.required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(tls_error(e));
            }
        }
    }
}

/// `buf` grown by `extra` zeroed bytes (at least what its capacity already allows), for rustls to
/// write into; the caller truncates to what was written.
fn spare(buf: &mut Vec<u8>, extra: usize) -> &mut [u8] {
    let start = buf.len();
    let room = (buf.capacity() - start).max(extra);
    buf.resize(start + room, 0);
    &mut buf[start..]
}

impl AsyncRead for LeanTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_read < this.plaintext.len() {
                let available = &this.plaintext[this.plain_read..];
                let n = available.len().min(buf.remaining());
                buf.put_slice(&available[..n]);
                this.plain_read += n;
                if this.plain_read == this.plaintext.len() {
                    this.plaintext = Vec::new();
                    this.plain_read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            this.pump()?;
            // Whatever rustls queued (a key update answer, an alert) goes out with no delay; a
            // full socket will wake this task again.
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
            if !this.plaintext.is_empty() || this.eof {
                continue;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                this.eof = true;
            }
        }
    }
}

impl AsyncWrite for LeanTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Older bytes first; and no unbounded queue behind a full socket.
        ready!(this.poll_write_out(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.encrypt(data)?;
        match this.poll_write_out(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Accepted: the rest of the queue goes out on the next write or flush.
            _ => Poll::Ready(Ok(data.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closed {
            this.closed = true;
            let UnbufferedStatus { discard, state } = this.conn.process_tls_records(&mut this.incoming);
            if let Ok(ConnectionState::WriteTraffic(mut traffic)) = state {
                let start = this.outgoing.len();
                match traffic.queue_close_notify(spare(&mut this.outgoing, 64)) {
                    Ok(n) => this.outgoing.truncate(start + n),
                    Err(_) => this.outgoing.truncate(start),
                }
            }
            this.incoming.drain(..discard);
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pki() -> (Arc<ClientConfig>, Arc<rustls::ServerConfig>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert =
            CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key_der)
            .unwrap();
        (Arc::new(client), Arc::new(server))
    }

    /// Against tokio-rustls's server: bytes both ways, small and large, then close_notify.
    #[tokio::test]
    async fn talks_to_a_rustls_server() {
        let (client, server) = pki();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await.unwrap();
            let mut buf = vec![0u8; 100_000];
            tls.read_exact(&mut buf[..5]).await.unwrap();
            assert_eq!(&buf[..5], b"hello");
            let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
            tls.write_all(&big).await.unwrap();
            tls.write_all(b"!").await.unwrap();
            tls.flush().await.unwrap();
            tls.read_exact(&mut buf[..70_000]).await.unwrap();
            assert_eq!(&buf[..70_000], &big[..]);
            tls.shutdown().await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = LeanTlsStream::connect(client, name, tcp).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.flush().await.unwrap();
        let mut got = vec![0u8; 70_001];
        tls.read_exact(&mut got).await.unwrap();
        assert!(got[..70_000].iter().enumerate().all(|(i, &b)| b == i as u8));
        assert_eq!(got[70_000], b'!');
        assert!(tls.incoming.capacity() == 0 && tls.plaintext.capacity() == 0, "idle: no buffers");
        tls.write_all(&got[..70_000]).await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(tls.outgoing.capacity(), 0);
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server_task.await.unwrap();
    }

    #[tokio::test]
    async fn an_unknown_ca_fails_the_handshake() {
        let (_, server) = pki();
        let (other_client, _) = pki();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let err = LeanTlsStream::connect(other_client, name, tcp).await.unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<rustls::Error>()), "{err}");
    }
}
