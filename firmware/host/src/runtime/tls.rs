//! TLS 1.3 for phones at the host gateway (`wss://`): a [`TcpSocket`] with a rustls server
//! connection in front, as an `embedded-io-async` socket, so the firmware core serves phones over
//! it exactly as over plain TCP.
//!
//! Everything is done inside `poll` on the executor's thread: bytes read from the kernel go
//! through a buffer on the stack into rustls, and what rustls has to send (handshake, alerts,
//! records) is written to the kernel as soon as it can take it. Nothing of this is kept across an
//! await in the phone's task; what an idle phone costs is its socket and the connection's state
//! on the heap (`docs/benchmarks.md`, "TLS phones at the host gateway").

use core::future::{poll_fn, Future};
use core::task::{Context, Poll};
use std::io::{self, Read as _, Write as _};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use edge_nal::{Close, TcpShutdown};
use embedded_io_async::{ErrorType, Read, Write};
use rustix::net::SendFlags;
use rustls::{ServerConfig, ServerConnection};

use super::net::TcpSocket;
use super::reactor::{Dir, Reactor};

/// Bytes read from the kernel at a time (on the stack, during a poll): a phone sends records of
/// a few dozen bytes; a larger one is read in pieces.
const READ_CHUNK: usize = 2048;

/// A phone's connection: TCP, and TLS over it.
#[derive(Debug)]
pub struct TlsSocket {
    tcp: TcpSocket,
    tls: Box<ServerConnection>,
    /// TLS bytes rustls produced that the kernel has not taken yet (from `sent` on); released
    /// when empty, so an idle phone holds no buffer.
    out: Vec<u8>,
    sent: usize,
    /// The peer closed the TCP connection.
    eof: bool,
}

impl TlsSocket {
    /// TLS as the server of `config` on an accepted phone connection; the handshake happens as
    /// the phone's task first reads.
    pub fn new(tcp: TcpSocket, config: Arc<ServerConfig>) -> io::Result<Self> {
        let tls = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Self { tcp, tls: Box::new(tls), out: Vec::new(), sent: 0, eof: false })
    }

    /// Writes what rustls has to send until nothing is left (`Ready`) or the kernel is full
    /// (`Pending`: its write readiness wakes the task).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let reactor = Reactor::current()?;
        let fd = self.tcp.fd();
        loop {
            if self.sent == self.out.len() {
                if !self.tls.wants_write() {
                    self.out = Vec::new();
                    self.sent = 0;
                    return Poll::Ready(Ok(()));
                }
                self.out.clear();
                self.sent = 0;
                self.tls.write_tls(&mut self.out)?;
            }
            let rest = &self.out[self.sent..];
            let send = || rustix::net::send(fd, rest, SendFlags::NOSIGNAL);
            match reactor.poll_io(fd.as_raw_fd(), Dir::Write, cx, send, |&n| n < rest.len()) {
                Poll::Ready(Ok(n)) => self.sent += n,
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
            match self.tls.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)), // 0: the phone sent close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.eof {
                return Poll::Ready(Ok(0));
            }
            let reactor = Reactor::current()?;
            let fd = self.tcp.fd();
            let mut chunk = [0u8; READ_CHUNK];
            let read = || rustix::io::read(fd, &mut chunk);
            let n = match reactor.poll_io(fd.as_raw_fd(), Dir::Read, cx, read, |&n| n > 0 && n < READ_CHUNK) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if n == 0 {
                self.eof = true;
                continue;
            }
            let mut input = &chunk[..n];
            while !input.is_empty() {
                self.tls.read_tls(&mut input)?;
                let processed = self.tls.process_new_packets();
                if let Err(e) = processed {
                    // Tell the phone why (the alert rustls queued), then give up on it.
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.tls.is_handshaking() {
            // The core reads the upgrade request before it writes, so the handshake is done.
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::NotConnected, "TLS handshake not done")));
        }
        // Earlier output the kernel did not take goes first: a phone that does not read is held
        // here until the core's write timeout ends it.
        if self.poll_send(cx)?.is_pending() {
            return Poll::Pending;
        }
        let n = self.tls.writer().write(buf)?;
        match self.poll_send(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(n)), // taken; the rest goes out as the kernel takes it
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
            self.tls.send_close_notify();
            let _ = poll_fn(|cx| self.poll_send(cx)).await;
        }
        self.tcp.close(what).await
    }

    async fn abort(&mut self) -> io::Result<()> {
        self.tcp.abort().await
    }
}
