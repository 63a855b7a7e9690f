//! [`LeanTls`] driven by tokio (feature `tokio`): a TLS stream, client or server, that holds no
//! buffers while idle. mobile-sim's phones use the client ([`LeanTlsStream::connect`]), the
//! aggregator's listener the server ([`LeanTlsStream::accept`]); the host gateway drives
//! [`LeanTls`] from its own reactor instead.
//!
//! tokio-rustls drives rustls's buffered connections, which keep a 4 KiB receive buffer for the
//! whole life of a connection. For a phone that sends or receives a few dozen bytes a minute that
//! buffer is most of what TLS costs, so held connections use this stream instead: received TLS
//! bytes, bytes to send and decrypted bytes each live in a `Vec` that is released as soon as it
//! is empty. An idle connection keeps only rustls's own state (keys, ...) and the socket.
//!
//! The handshake is a future of its own ([`LeanTlsStream::connect`], [`LeanTlsStream::accept`]),
//! for the caller to bound with its own timeout; what one peer can make this side hold meanwhile
//! is bounded by [`crate::MAX_INCOMING`].

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{tls_error, LeanTls, Progress, Unbuffered};

/// TLS over `io` (a `TcpStream`, usually): `C` is rustls's unbuffered client or server connection.
pub struct LeanTlsStream<IO, C> {
    io: IO,
    tls: LeanTls<C>,
}

// By hand: rustls's unbuffered connections have no `Debug`, and `LeanTls` needs none of `C`.
impl<IO: fmt::Debug, C> fmt::Debug for LeanTlsStream<IO, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeanTlsStream").field("io", &self.io).field("tls", &self.tls).finish()
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> LeanTlsStream<IO, UnbufferedClientConnection> {
    /// Runs the TLS handshake over `io` as the client of `config`, for the server `name`.
    pub async fn connect(config: Arc<ClientConfig>, name: ServerName<'static>, io: IO) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        Self { io, tls: LeanTls::new(conn) }.handshake().await
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> LeanTlsStream<IO, UnbufferedServerConnection> {
    /// Runs the TLS handshake over `io` as the server of `config` (its ALPN protocols, record
    /// size and certificate apply as rustls's buffered server would apply them).
    ///
    /// A peer that breaks the handshake (garbage, a ClientHello rustls refuses, a record over
    /// [`crate::MAX_RECORD`]) gets an error here, and the alert rustls queued for it, if any, is
    /// offered to the socket once (never waited for: the peer may not read). The caller bounds
    /// the whole handshake with its own timeout.
    pub async fn accept(config: Arc<ServerConfig>, io: IO) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        Self { io, tls: LeanTls::new(conn) }.handshake().await
    }
}

impl<IO, C> LeanTlsStream<IO, C> {
    /// The TLS state and its buffers (rustls's connection: `tls().conn()`).
    pub fn tls(&self) -> &LeanTls<C> {
        &self.tls
    }

    /// The transport under TLS.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Unbuffered> LeanTlsStream<IO, C> {
    async fn handshake(mut self) -> io::Result<Self> {
        loop {
            let progress = match self.tls.process() {
                Ok(progress) => progress,
                Err(e) => {
                    poll_fn(|cx| self.offer_alert(cx)).await;
                    return Err(e);
                }
            };
            poll_fn(|cx| self.poll_write_out(cx)).await?;
            match progress {
                Progress::Established => return Ok(self),
                Progress::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    ))
                }
                Progress::Handshaking => {
                    if poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed during the TLS handshake",
                        ));
                    }
                }
            }
        }
    }

    /// After a TLS error: what rustls queued for the peer (its alert) goes to the socket if the
    /// kernel takes it now; never waits.
    fn offer_alert(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = self.poll_write_out(cx);
        Poll::Ready(())
    }

    /// Writes the send queue; it is released once written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let rest = self.tls.unsent();
            if rest.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tls.sent(n);
        }
    }

    /// Reads more TLS bytes from the socket (at least the rest of the record begun, if known):
    /// how many, 0 at the socket's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let io = &mut self.io;
        self.tls.fill(|space| {
            let mut buf = ReadBuf::new(space);
            let result = Pin::new(io).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            (n, result.map_ok(|()| n))
        })?
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Unbuffered + Unpin> AsyncRead for LeanTlsStream<IO, C> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.tls.has_plaintext() {
                let available = this.tls.plaintext();
                let n = available.len().min(buf.remaining());
                buf.put_slice(&available[..n]);
                this.tls.consume_plaintext(n);
                return Poll::Ready(Ok(()));
            }
            if this.tls.peer_closed() {
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = this.tls.process() {
                let _ = this.offer_alert(cx);
                return Poll::Ready(Err(e));
            }
            // Whatever rustls queued (a key update answer, a ticket) goes out with no delay; a
            // full socket will wake this task again.
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
            if this.tls.has_plaintext() || this.tls.peer_closed() {
                continue;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                this.tls.set_peer_closed();
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin, C: Unbuffered + Unpin> AsyncWrite for LeanTlsStream<IO, C> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Older bytes first; and no unbounded queue behind a full socket.
        ready!(this.poll_write_out(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.tls.encrypt(data)?;
        match this.poll_write_out(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Accepted: the rest of the queue goes out on the next write or flush.
            _ => Poll::Ready(Ok(data.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.queue_close_notify(); // once
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use ::tokio::io::{AsyncReadExt, AsyncWriteExt};
    use ::tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn pki() -> (Arc<ClientConfig>, Arc<ServerConfig>) {
        testkit::pki::TestCa::new("lean-tls tokio").rustls_configs(&["localhost"])
    }

    fn localhost() -> ServerName<'static> {
        ServerName::try_from("localhost").unwrap()
    }

    /// The client against tokio-rustls's server: bytes both ways, small and large, then
    /// close_notify; no buffer held while idle.
    #[::tokio::test]
    async fn the_client_talks_to_a_rustls_server() {
        let (client, server) = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = ::tokio::spawn(async move {
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
        let mut tls = LeanTlsStream::connect(client, localhost(), tcp).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        tls.flush().await.unwrap();
        let mut got = vec![0u8; 70_001];
        tls.read_exact(&mut got).await.unwrap();
        assert!(got[..70_000].iter().enumerate().all(|(i, &b)| b == i as u8));
        assert_eq!(got[70_000], b'!');
        assert_eq!(tls.tls().buffered(), 0, "idle: no buffers");
        tls.write_all(&got[..70_000]).await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(tls.tls().buffered(), 0, "written: no buffers");
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        server_task.await.unwrap();
    }

    #[::tokio::test]
    async fn an_unknown_ca_fails_the_handshake() {
        let (_, server) = pki();
        let (other_client, _) = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        ::tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tokio_rustls::TlsAcceptor::from(server).accept(tcp).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let err = LeanTlsStream::connect(other_client, localhost(), tcp).await.unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<rustls::Error>()), "{err}");
    }

    /// The server against tokio-rustls's client (what the aggregator's phones and trunks may
    /// use), with ALPN: both ways, idle with no buffers, then close_notify.
    #[::tokio::test]
    async fn the_server_talks_to_a_rustls_client() {
        let (client, server) = pki();
        let mut server = (*server).clone();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut client = (*client).clone();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client_task = ::tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            let mut tls = connector.connect(localhost(), tcp).await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
            tls.write_all(b"GET /ws HTTP/1.1\r\n\r\n").await.unwrap();
            let mut big = vec![0u8; 50_000];
            tls.read_exact(&mut big).await.unwrap();
            assert!(big.iter().all(|&b| b == 9));
            tls.shutdown().await.unwrap();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = LeanTlsStream::accept(Arc::new(server), tcp).await.unwrap();
        assert_eq!(tls.tls().conn().alpn_protocol(), Some(&b"http/1.1"[..]));
        let mut request = [0u8; 20];
        tls.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"GET /ws HTTP/1.1\r\n\r\n");
        assert_eq!(tls.tls().buffered(), 0, "idle after the request: no buffers");
        tls.write_all(&[9u8; 50_000]).await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(tls.tls().buffered(), 0, "written: no buffers");
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "close_notify ends the stream");
        client_task.await.unwrap();
    }

    /// Not TLS: the server's handshake fails with an error (and its alert offered), no panic.
    #[::tokio::test]
    async fn the_server_refuses_garbage() {
        let (_, server) = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = ::tokio::spawn(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            answer
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let err = LeanTlsStream::accept(server, tcp).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let answer = client.await.unwrap();
        assert_eq!(answer.first(), Some(&0x15), "an alert record: {answer:x?}");
    }
}
