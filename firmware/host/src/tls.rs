//! TLS 1.3 for phones at the host gateway (`wss://`): a [`TcpSocket`] with a rustls server
//! connection in front, as an `embedded-io-async` socket, so the firmware core serves phones over
//! it exactly as over plain TCP.
//!
//! The connection is rustls's unbuffered one, through the `lean-tls` crate (shared with
//! mobile-sim's phones): this socket owns the buffers, and each is released as soon as it is
//! empty. Received TLS bytes are kept only while a record is incomplete, decrypted bytes only
//! until the core reads them, bytes to send only until the kernel takes them. So an idle phone
//! costs its socket and rustls's own state (keys, the handshake's outcome), not the 4 KiB
//! receive buffer rustls's buffered `ServerConnection` keeps for the life of a connection
//! (`docs/benchmarks.md`, "TLS phones at the host gateway"). The handshake's larger buffers (the
//! ClientHello, the server's certificate flight) live while it runs.
//!
//! Everything is done inside `poll` on the executor's thread, and the handshake happens as the
//! core first reads, so the core's handshake timeout bounds it: a phone that stalls mid-handshake
//! or sends garbage is let go like one that never sends its upgrade request.

use core::future::{poll_fn, Future};
use core::task::{Context, Poll};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use edge_nal::{Close, TcpShutdown};
use embedded_io_async::{ErrorType, Read, Write};
use lean_tls::LeanTls;
use rustix::net::SendFlags;
use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;

use host_runtime::net::TcpSocket;
use host_runtime::reactor::{Dir, Reactor};

/// A phone's connection: TCP, and TLS over it.
#[derive(Debug)]
pub struct TlsSocket {
    tcp: TcpSocket,
    /// Boxed: the phone's task future holds this socket, and rustls's state is most of it
    /// (`tests/memory.rs` counts the task).
    tls: Box<LeanTls<UnbufferedServerConnection>>,
}

impl TlsSocket {
    /// TLS as the server of `config` on an accepted phone connection; the handshake happens as
    /// the phone's task first reads.
    pub fn new(tcp: TcpSocket, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Self { tcp, tls: Box::new(LeanTls::new(conn)) })
    }

    /// Writes the send queue until it is empty (`Ready`) or the kernel is full (`Pending`: its
    /// write readiness wakes the task).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tls.unsent().is_empty() {
            return Poll::Ready(Ok(()));
        }
        let reactor = Reactor::current()?;
        let fd = self.tcp.fd();
        loop {
            let rest = self.tls.unsent();
            if rest.is_empty() {
                return Poll::Ready(Ok(()));
            }
            let send = || rustix::net::send(fd, rest, SendFlags::NOSIGNAL);
            match reactor.poll_io(fd.as_raw_fd(), Dir::Write, cx, send, |&n| n < rest.len()) {
                Poll::Ready(Ok(n)) => self.tls.sent(n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            // What rustls owes the phone (its handshake answers, first of all) goes out first; if
            // the kernel is full, reading goes on (its write readiness wakes this task too).
            if let Poll::Ready(Err(e)) = self.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if self.tls.has_plaintext() || buf.is_empty() {
                return Poll::Ready(Ok(self.tls.read_plaintext(buf)));
            }
            if self.tls.peer_closed() {
                return Poll::Ready(Ok(0)); // close_notify, or the socket ended
            }
            let reactor = Reactor::current()?;
            let fd = self.tcp.fd();
            let read = self.tls.fill(|space| {
                let want = space.len();
                let read = || rustix::io::read(fd, &mut *space);
                match reactor.poll_io(fd.as_raw_fd(), Dir::Read, cx, read, |&n| n > 0 && n < want) {
                    Poll::Ready(Ok(n)) => (n, Poll::Ready(Ok(n))),
                    other => (0, other),
                }
            });
            match read {
                Ok(Poll::Ready(Ok(0))) => self.tls.set_peer_closed(),
                Ok(Poll::Ready(Ok(_))) => {}
                Ok(Poll::Ready(Err(e))) => return Poll::Ready(Err(e)),
                Ok(Poll::Pending) => return Poll::Pending,
                Err(e) => return self.fail(cx, e),
            }
            if let Err(e) = self.tls.process() {
                return self.fail(cx, e);
            }
        }
    }

    /// The phone broke TLS: tell it why (the alert rustls queued, if the kernel takes it now),
    /// then give up on it.
    fn fail<T>(&mut self, cx: &mut Context<'_>, e: io::Error) -> Poll<io::Result<T>> {
        let _ = self.poll_send(cx);
        Poll::Ready(Err(e))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.tls.is_handshaking() {
            // The core reads the upgrade request before it writes, so the handshake is done.
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "TLS handshake not done")));
        }
        // Earlier output the kernel did not take goes first: a phone that does not read is held
        // here until the core's write timeout ends it, and the queue never grows past one write.
        if self.poll_send(cx)?.is_pending() {
            return Poll::Pending;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.tls.encrypt(buf)?;
        match self.poll_send(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())), // taken; the rest goes out as the kernel takes it
        }
    }
}

impl ErrorType for TlsSocket {
    type Error = io::Error;
}

impl Read for TlsSocket {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read(cx, buf)).await
    }
}

impl Write for TlsSocket {
    fn write(&mut self, buf: &[u8]) -> impl Future<Output = io::Result<usize>> {
        poll_fn(move |cx| self.poll_write(cx, buf))
    }

    async fn flush(&mut self) -> io::Result<()> {
        poll_fn(|cx| self.poll_send(cx)).await
    }
}

impl TcpShutdown for TlsSocket {
    async fn close(&mut self, what: Close) -> io::Result<()> {
        if matches!(what, Close::Write | Close::Both) {
            self.tls.queue_close_notify();
            let _ = poll_fn(|cx| self.poll_send(cx)).await;
        }
        self.tcp.close(what).await
    }

    async fn abort(&mut self) -> io::Result<()> {
        self.tcp.abort().await
    }
}
