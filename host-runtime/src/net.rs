//! The kernel's TCP as an `edge-nal` stack on the [`Reactor`]: what the firmware core's phone
//! and link code run on in the host build. A socket is its file descriptor (4 bytes in the
//! phone's task); its readiness and wakers live in the reactor's table.

use core::future::{poll_fn, Future};
use core::net::{IpAddr, SocketAddr};
use core::pin::Pin;
use core::task::{Context, Poll};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use edge_nal::{Close, Readable, TcpAccept, TcpBind, TcpConnect, TcpShutdown, TcpSplit};
use embedded_io_async::{ErrorType, Read, Write};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SendFlags, Shutdown, SocketFlags, SocketType};

use super::reactor::{Dir, Reactor};

/// Connections the kernel queues for the listener before the gateway accepts them (the kernel
/// caps it at `net.core.somaxconn`): phones arrive in bursts of thousands after a site outage.
pub const LISTEN_BACKLOG: i32 = 4096;

/// The kernel's TCP/IP, through the executor thread's reactor.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stack;

/// A listening socket.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

/// A connected TCP socket.
#[derive(Debug)]
pub struct TcpSocket {
    fd: OwnedFd,
}

/// The reading half of a [`TcpSocket`] (the trunk link reads and writes from two futures).
#[derive(Debug)]
pub struct ReadHalf<'a>(&'a OwnedFd);

/// The writing half of a [`TcpSocket`].
#[derive(Debug)]
pub struct WriteHalf<'a>(&'a OwnedFd);

fn family(addr: &SocketAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    }
}

const FLAGS: SocketFlags = SocketFlags::NONBLOCK.union(SocketFlags::CLOEXEC);

fn forget(fd: &OwnedFd) {
    if let Ok(reactor) = Reactor::current() {
        reactor.forget(fd.as_raw_fd());
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        forget(&self.fd);
    }
}

impl Drop for TcpSocket {
    fn drop(&mut self) {
        forget(&self.fd);
    }
}

impl Listener {
    /// The address it listens on (the port the kernel chose, for port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        let addr = rustix::net::getsockname(&self.fd)?;
        SocketAddr::try_from(addr).map_err(|_| io::Error::other("not an IP address"))
    }
}

impl TcpSocket {
    /// The socket's file descriptor (registered with the reactor), for the TLS layer above it.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Takes the socket out of the reactor and gives its descriptor (for a
    /// [`crate::socket_set::SocketSet`]); [`TcpSocket::adopt`] brings it back.
    pub fn into_fd(self) -> io::Result<OwnedFd> {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: the descriptor is read out once and `this` is never dropped, so it is owned
        // exactly once (by the value returned, or dropped below on an error).
        let fd = unsafe { core::ptr::read(&this.fd) };
        Reactor::current()?.deregister(fd.as_fd())?;
        Ok(fd)
    }

    /// A connected socket's descriptor (from [`TcpSocket::into_fd`]), registered again.
    pub fn adopt(fd: OwnedFd) -> io::Result<Self> {
        Reactor::current()?.register(fd.as_fd(), true)?;
        Ok(Self { fd })
    }

    /// Adopts a connected socket (tests, and sockets made elsewhere).
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        let fd = OwnedFd::from(stream);
        Reactor::current()?.register(fd.as_fd(), true)?;
        Ok(Self { fd })
    }
}

/// A read: hand-written rather than an `async fn` so that it is only its fields (24 bytes): it
/// sits in every phone's task, in the wait for the phone's next bytes.
#[derive(Debug)]
pub struct ReadFuture<'f, 'b> {
    fd: &'f OwnedFd,
    buf: &'b mut [u8],
}

impl Future for ReadFuture<'_, '_> {
    type Output = io::Result<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let reactor = match Reactor::current() {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let (fd, want) = (this.fd, this.buf.len());
        let buf = &mut *this.buf;
        reactor.poll_io(
            fd.as_raw_fd(),
            Dir::Read,
            cx,
            || rustix::io::read(fd, &mut *buf),
            |&n| n > 0 && n < want,
        )
    }
}

/// A write (see [`ReadFuture`]).
#[derive(Debug)]
pub struct WriteFuture<'f, 'b> {
    fd: &'f OwnedFd,
    buf: &'b [u8],
}

impl Future for WriteFuture<'_, '_> {
    type Output = io::Result<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let (fd, buf) = (self.fd, self.buf);
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let reactor = match Reactor::current() {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Err(e)),
        };
        // MSG_NOSIGNAL: a phone that reset its connection is an error to return, not a SIGPIPE.
        let send = || rustix::net::send(fd, buf, SendFlags::NOSIGNAL);
        reactor.poll_io(fd.as_raw_fd(), Dir::Write, cx, send, |&n| n < buf.len())
    }
}

fn read<'f, 'b>(fd: &'f OwnedFd, buf: &'b mut [u8]) -> ReadFuture<'f, 'b> {
    ReadFuture { fd, buf }
}

fn write<'f, 'b>(fd: &'f OwnedFd, buf: &'b [u8]) -> WriteFuture<'f, 'b> {
    WriteFuture { fd, buf }
}

async fn readable(fd: &OwnedFd) -> io::Result<()> {
    let reactor = Reactor::current()?;
    poll_fn(|cx| reactor.poll_ready(fd.as_raw_fd(), Dir::Read, cx)).await
}

impl ErrorType for TcpSocket {
    type Error = io::Error;
}

impl Read for TcpSocket {
    fn read<'s, 'b>(
        &'s mut self,
        buf: &'b mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + use<'s, 'b> {
        read(&self.fd, buf)
    }
}

impl Write for TcpSocket {
    fn write<'s, 'b>(&'s mut self, buf: &'b [u8]) -> impl Future<Output = io::Result<usize>> + use<'s, 'b> {
        write(&self.fd, buf)
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        core::future::ready(Ok(())) // the kernel sends what was written; nothing is buffered here
    }
}

impl Readable for TcpSocket {
    async fn readable(&mut self) -> io::Result<()> {
        readable(&self.fd).await
    }
}

impl TcpShutdown for TcpSocket {
    async fn close(&mut self, what: Close) -> io::Result<()> {
        let how = match what {
            Close::Read => Shutdown::Read,
            Close::Write => Shutdown::Write,
            Close::Both => Shutdown::Both,
        };
        rustix::net::shutdown(&self.fd, how)?;
        Ok(())
    }

    async fn abort(&mut self) -> io::Result<()> {
        Ok(()) // as with std sockets: dropping the socket closes it
    }
}

impl TcpSplit for TcpSocket {
    type Read<'a> = ReadHalf<'a>;
    type Write<'a> = WriteHalf<'a>;

    fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        (ReadHalf(&self.fd), WriteHalf(&self.fd))
    }
}

impl ErrorType for ReadHalf<'_> {
    type Error = io::Error;
}

impl<'a> Read for ReadHalf<'a> {
    fn read<'s, 'b>(
        &'s mut self,
        buf: &'b mut [u8],
    ) -> impl Future<Output = io::Result<usize>> + use<'a, 's, 'b> {
        read(self.0, buf)
    }
}

impl Readable for ReadHalf<'_> {
    async fn readable(&mut self) -> io::Result<()> {
        readable(self.0).await
    }
}

impl ErrorType for WriteHalf<'_> {
    type Error = io::Error;
}

impl<'a> Write for WriteHalf<'a> {
    fn write<'s, 'b>(
        &'s mut self,
        buf: &'b [u8],
    ) -> impl Future<Output = io::Result<usize>> + use<'a, 's, 'b> {
        write(self.0, buf)
    }

    fn flush(&mut self) -> impl Future<Output = io::Result<()>> {
        core::future::ready(Ok(()))
    }
}

impl TcpBind for Stack {
    type Error = io::Error;
    type Accept<'a> = Listener;

    async fn bind(&self, local: SocketAddr) -> io::Result<Listener> {
        let fd = rustix::net::socket_with(family(&local), SocketType::STREAM, FLAGS, None)?;
        rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
        rustix::net::bind(&fd, &local)?;
        rustix::net::listen(&fd, LISTEN_BACKLOG)?;
        Reactor::current()?.register(fd.as_fd(), true)?;
        Ok(Listener { fd })
    }
}

impl TcpAccept for Listener {
    type Error = io::Error;
    type Socket<'a> = TcpSocket;

    async fn accept(&self) -> io::Result<(SocketAddr, TcpSocket)> {
        let reactor = Reactor::current()?;
        let (fd, peer) = poll_fn(|cx| {
            reactor.poll_io(
                self.fd.as_raw_fd(),
                Dir::Read,
                cx,
                || rustix::net::acceptfrom_with(&self.fd, FLAGS),
                |_| false, // only EAGAIN says the queue is empty
            )
        })
        .await?;
        let peer = peer
            .and_then(|a| SocketAddr::try_from(a).ok())
            .unwrap_or(SocketAddr::new(core::net::Ipv4Addr::UNSPECIFIED.into(), 0));
        reactor.register(fd.as_fd(), true)?;
        Ok((peer, TcpSocket { fd }))
    }
}

impl TcpConnect for Stack {
    type Error = io::Error;
    type Socket<'a> = TcpSocket;

    async fn connect(&self, remote: SocketAddr) -> io::Result<TcpSocket> {
        self.connect_from(None, remote).await
    }
}

impl Stack {
    /// Connects to `remote` from the address `source` (any port), or from the kernel's choice.
    /// With a source, the port is chosen at connect (`IP_BIND_ADDRESS_NO_PORT`), so one source
    /// address serves ~28,000 connections per destination rather than ~28,000 in all (mobile-sim's
    /// phones spread over 127.0.0.2 and up).
    pub async fn connect_from(&self, source: Option<IpAddr>, remote: SocketAddr) -> io::Result<TcpSocket> {
        let reactor = Reactor::current()?;
        let fd = rustix::net::socket_with(family(&remote), SocketType::STREAM, FLAGS, None)?;
        if let Some(source) = source {
            bind_address_no_port(&fd);
            rustix::net::bind(&fd, &SocketAddr::new(source, 0))?;
        }
        let connected = match rustix::net::connect(&fd, &remote) {
            Ok(()) => true,
            Err(Errno::INPROGRESS) | Err(Errno::INTR) => false,
            Err(e) => return Err(e.into()),
        };
        // Registered once the connect is under way (an unconnected socket would report a
        // hang-up): not yet writable, so the first write-readiness (or error) that epoll
        // reports says the connect finished.
        reactor.register(fd.as_fd(), connected)?;
        let socket = TcpSocket { fd };
        if connected {
            return Ok(socket);
        }
        poll_fn(|cx| reactor.poll_ready(socket.fd.as_raw_fd(), Dir::Write, cx)).await?;
        rustix::net::sockopt::socket_error(&socket.fd)??;
        Ok(socket)
    }
}

/// Asks Linux to choose the source port at connect rather than at bind, so that one source
/// address serves ~28,000 connections per destination instead of ~28,000 in all. Failure (an
/// old kernel) only means the port is chosen at bind. (rustix has no call for this option;
/// mobile-sim's tokio phones use this one too.)
pub fn bind_address_no_port(fd: impl AsFd) {
    let fd = fd.as_fd();
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to a c_int that lives across the call
    // with its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            core::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
