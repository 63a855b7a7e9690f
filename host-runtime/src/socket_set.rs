//! Sockets served by one loop instead of a task each: their readiness comes to the loop as a
//! list of keys.
//!
//! Why (issue #17): a load generator's held phone does two things a minute, send a byte and
//! read its answer, and as a task each of them was a chain of cold loads: the timer entry in the
//! task's header, the wake, the run queue, the task's state, the reactor's slot. mobile-sim's
//! phones spent more of their CPU there than in the kernel. A [`SocketSet`] is a second epoll
//! instance, itself registered in the runtime's reactor like a socket: when any of its sockets
//! becomes readable the one task that owns the set is woken and takes the keys of every ready
//! socket at once, and looks up its own compact per-socket state by key.
//!
//! A socket moves into a set with [`SocketSet::insert`] (it leaves the reactor: no task hears of
//! it any more) and back out with [`SocketSet::remove`] and [`crate::net::TcpSocket::adopt`].
//! Registrations are edge-triggered, for reading only: the loop reads a ready socket until it
//! has all (a short read or `EAGAIN`), and writes when it has something to write.

use core::task::{Context, Poll};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::Timespec;
use rustix::io::Errno;

use crate::reactor::{Dir, Reactor, EVENTS_PER_WAIT};

/// A set of sockets whose readiness one task takes as keys (see the module's documentation).
/// For the executor's thread.
pub struct SocketSet {
    epoll: OwnedFd,
    events: Vec<epoll::Event>,
    /// Events of the last [`SocketSet::poll_ready`] not yet taken.
    taken: usize,
}

impl core::fmt::Debug for SocketSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SocketSet").field("epoll", &self.epoll).finish_non_exhaustive()
    }
}

impl SocketSet {
    /// An empty set, registered in this thread's reactor.
    pub fn new() -> io::Result<Self> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        // Not writable: the set is only ever waited on for reading.
        Reactor::current()?.register(epoll.as_fd(), false)?;
        Ok(Self { epoll, events: Vec::with_capacity(EVENTS_PER_WAIT), taken: 0 })
    }

    /// Adds a connected socket (already out of the reactor, see
    /// [`crate::net::TcpSocket::into_fd`]); its readiness is reported as `key`. A socket that
    /// already has data to read is reported at once.
    pub fn insert(&self, fd: BorrowedFd<'_>, key: u64) -> io::Result<()> {
        let interest = EventFlags::IN | EventFlags::RDHUP | EventFlags::ET;
        epoll::add(&self.epoll, fd, EventData::new_u64(key), interest)?;
        Ok(())
    }

    /// Takes a socket out of the set (closing its descriptor does that too). An event already
    /// taken from the kernel for it may still be among the keys of this wakeup.
    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        epoll::delete(&self.epoll, fd)?;
        Ok(())
    }

    /// Ready when some socket of the set is: then [`SocketSet::next_ready`] gives their keys.
    /// Pending (the task woken later) when none is.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.taken < self.events.len() {
            return Poll::Ready(Ok(()));
        }
        let reactor = match Reactor::current() {
            Ok(r) => r,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let (epoll, events) = (&self.epoll, &mut self.events);
        let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
        let took = reactor.poll_io(
            epoll.as_raw_fd(),
            Dir::Read,
            cx,
            || {
                events.clear();
                match epoll::wait(epoll, spare_capacity(&mut *events), Some(&zero)) {
                    Ok(0) => Err(Errno::AGAIN),
                    Ok(n) => Ok(n),
                    Err(e) => Err(e),
                }
            },
            // A full batch may leave more behind: the next poll asks the kernel again.
            |&n| n < EVENTS_PER_WAIT,
        );
        match took {
            Poll::Ready(Ok(_)) => {
                self.taken = 0;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next ready socket from the last [`SocketSet::poll_ready`].
    pub fn next_ready(&mut self) -> Option<Ready> {
        let event = self.events.get(self.taken)?;
        self.taken += 1;
        let flags = event.flags; // a copy: the kernel's event struct is packed
        let hung_up = flags.intersects(EventFlags::HUP | EventFlags::ERR | EventFlags::RDHUP);
        Some(Ready { key: event.data.u64(), hung_up })
    }
}

/// A socket of a [`SocketSet`] that became ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// The key it was inserted with.
    pub key: u64,
    /// The peer hung up or the socket failed: read until end of file or an error, even after a
    /// short read (no new edge will come for a FIN that is already queued).
    pub hung_up: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::TcpSocket;
    use std::io::Write;

    #[test]
    fn a_socket_in_the_set_is_reported_by_key_and_again_only_after_new_data() {
        // A reactor of its own on a thread of its own (the reactor is per thread), no executor.
        let events = std::thread::spawn(|| {
            let notify = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
            Reactor::install(&notify).unwrap();
            let mut set = SocketSet::new().unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut ours = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (theirs, _) = listener.accept().unwrap();
            let socket = TcpSocket::from_std(theirs).unwrap();
            let fd = socket.into_fd().unwrap();
            set.insert(fd.as_fd(), 7).unwrap();
            let waker = core::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut seen = Vec::new();
            // Nothing to read yet.
            seen.push(set.poll_ready(&mut cx).is_ready());
            ours.write_all(b"x").unwrap();
            // The reactor hears of the set's readiness only in its own wait.
            Reactor::current().unwrap().wait(Some(100), None).unwrap();
            seen.push(set.poll_ready(&mut cx).is_ready());
            let key = set.next_ready().map(|r| r.key);
            let again = set.next_ready().map(|r| r.key);
            let mut buf = [0u8; 8];
            let n = rustix::io::read(&fd, &mut buf).unwrap();
            // Read all there was; no new edge, so no new report.
            Reactor::current().unwrap().wait(Some(0), None).unwrap();
            seen.push(set.poll_ready(&mut cx).is_ready());
            (seen, key, again, n)
        })
        .join()
        .unwrap();
        assert_eq!(events, (vec![false, true, false], Some(7), None, 1));
    }
}
