//! A TLS client stream that holds no buffers while idle: the `lean-tls` crate (shared with the
//! host gateway's phone listener) driven by tokio.
//!
//! tokio-rustls drives rustls's buffered `ClientConnection`, which keeps a 4 KiB receive buffer
//! for the whole life of a connection. For a phone that receives a few dozen bytes a minute that
//! buffer is most of what it costs, so held phones use this stream instead: received TLS bytes,
//! bytes to send and decrypted bytes each live in a `Vec` that is released as soon as it is empty
//! (`lean_tls::LeanTls`). An idle connection keeps only rustls's own state (keys, peer
//! certificate, ...) and the socket.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use lean_tls::{tls_error, LeanTls, Progress};
use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct LeanTlsStream {
    tcp: TcpStream,
    tls: LeanTls<UnbufferedClientConnection>,
}

impl LeanTlsStream {
    /// Runs the TLS handshake over `tcp`.
    pub async fn connect(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
        let mut s = Self { tcp, tls: LeanTls::new(conn) };
        loop {
            let progress = s.tls.process()?;
            poll_fn(|cx| s.poll_write_out(cx)).await?;
            match progress {
                Progress::Established => return Ok(s),
                Progress::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed during the TLS handshake",
                    ))
                }
                Progress::Handshaking => {
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

    /// Writes the send queue; it is released once written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let rest = self.tls.unsent();
            if rest.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tls.sent(n);
        }
    }

    /// Reads more TLS bytes from the socket (at least the rest of the record begun, if known).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let tcp = &mut self.tcp;
        self.tls.fill(|space| {
            let mut buf = ReadBuf::new(space);
            let result = Pin::new(tcp).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            (n, result.map_ok(|()| n))
        })?
    }
}

impl AsyncRead for LeanTlsStream {
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
            this.tls.process()?;
            // Whatever rustls queued (a key update answer, an alert) goes out with no delay; a
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

impl AsyncWrite for LeanTlsStream {
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
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.tls.queue_close_notify(); // once
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pki() -> (Arc<ClientConfig>, Arc<rustls::ServerConfig>) {
        testkit::pki::TestCa::new("mobile-sim").rustls_configs(&["localhost"])
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
        assert_eq!(tls.tls.buffered(), 0, "idle: no buffers");
        tls.write_all(&got[..70_000]).await.unwrap();
        tls.flush().await.unwrap();
        assert_eq!(tls.tls.buffered(), 0, "written: no buffers");
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
