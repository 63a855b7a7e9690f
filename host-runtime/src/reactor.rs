//! Socket readiness on the executor's thread: one epoll instance, every socket registered once,
//! edge-triggered, for both directions.
//!
//! Each file descriptor has a [`Slot`] in a table indexed by the descriptor: the last readiness
//! epoll reported for each direction, and the waker of the task waiting on it. An operation is
//! tried only when its direction is ready; `EAGAIN` clears the readiness and parks the waker;
//! the next edge from epoll sets it and wakes the task. A short read or write (fewer bytes than
//! asked) also clears it: the kernel gave everything it had, and anything new raises a new edge
//! (new data, freed send space, the peer's FIN or an error all call epoll's wakeup callback
//! again). Once epoll reports hang-up or error, reads stay ready until they fail or return EOF,
//! because no new edge would come for a FIN that is already queued.
//!
//! Everything runs on the executor's thread (the table is a `RefCell`): readiness is only
//! dispatched between polls, so a task cannot miss an edge between trying and parking.

use core::task::{Context, Poll, Waker};
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, CreateFlags, EventData, EventFlags};
use rustix::event::Timespec;
use rustix::io::Errno;

/// Readiness events taken from the kernel per `epoll_wait`: enough to drain a busy second of a
/// few thousand phones in a handful of calls; more wait for the next call.
pub const EVENTS_PER_WAIT: usize = 1024;
/// Largest file descriptor the table reserves room for up front (address space only: a slot's
/// memory is touched when its descriptor is first used). Beyond it the table grows.
pub const RESERVED_FDS: usize = 32_768;
/// Longest single sleep: `epoll_wait` takes milliseconds in an `i32`.
const MAX_SLEEP_MS: u64 = i32::MAX as u64;
/// epoll user data of the executor's eventfd (sockets use their descriptor).
const NOTIFY_KEY: u64 = u64::MAX;

/// Which half of a socket an operation waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

/// Memory per socket in the reactor's table.
pub const SLOT_BYTES: usize = core::mem::size_of::<Slot>();

/// One descriptor's readiness and waiting tasks: 40 bytes.
#[derive(Debug, Default)]
struct Slot {
    read: Option<Waker>,
    write: Option<Waker>,
    readable: bool,
    writable: bool,
    /// epoll reported hang-up or error: reads must not trust a short read to have drained it.
    hung_up: bool,
}

/// The executor thread's epoll instance and descriptor table.
pub struct Reactor {
    epoll: OwnedFd,
    slots: RefCell<Vec<Slot>>,
    events: RefCell<Vec<epoll::Event>>,
}

impl core::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Reactor").field("epoll", &self.epoll).finish_non_exhaustive()
    }
}

thread_local! {
    static CURRENT: Cell<Option<&'static Reactor>> = const { Cell::new(None) };
}

fn no_reactor() -> io::Error {
    io::Error::other("sockets of the host runtime are used only on its executor's thread")
}

impl Reactor {
    /// Creates this thread's reactor; `notify` (an eventfd) interrupts its waits from other threads.
    pub fn install(notify: &OwnedFd) -> io::Result<&'static Reactor> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        // Level-triggered: it stays readable until drained, so no wake from another thread is lost.
        epoll::add(&epoll, notify, EventData::new_u64(NOTIFY_KEY), EventFlags::IN)?;
        let reactor: &'static Reactor = Box::leak(Box::new(Reactor {
            epoll,
            slots: RefCell::new(Vec::with_capacity(RESERVED_FDS)),
            events: RefCell::new(Vec::with_capacity(EVENTS_PER_WAIT)),
        }));
        CURRENT.with(|c| c.set(Some(reactor)));
        Ok(reactor)
    }

    /// This thread's reactor.
    pub fn current() -> io::Result<&'static Reactor> {
        CURRENT.with(Cell::get).ok_or_else(no_reactor)
    }

    /// Registers a new socket for both directions, once for its whole life. `writable` is false
    /// for a socket still connecting (its first write-readiness says the connect finished).
    pub fn register(&self, fd: BorrowedFd<'_>, writable: bool) -> io::Result<()> {
        let index = usize::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))?;
        {
            let mut slots = self.slots.borrow_mut();
            if slots.len() <= index {
                slots.resize_with(index + 1, Slot::default);
            }
            slots[index] = Slot { read: None, write: None, readable: true, writable, hung_up: false };
        }
        let interest = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
        epoll::add(&self.epoll, fd, EventData::new_u64(index as u64), interest)?;
        Ok(())
    }

    /// The socket is being closed: drop its wakers (closing the descriptor removes it from epoll).
    pub fn forget(&self, fd: RawFd) {
        let slot =
            usize::try_from(fd).ok().and_then(|i| self.slots.borrow_mut().get_mut(i).map(core::mem::take));
        drop(slot); // its wakers, outside the borrow
    }

    /// Takes a socket out of the reactor without closing it (it moves to a
    /// [`crate::socket_set::SocketSet`]): its wakers are dropped and epoll forgets it.
    pub fn deregister(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.forget(fd.as_raw_fd());
        epoll::delete(&self.epoll, fd)?;
        Ok(())
    }

    /// Tries `op` if `dir` is ready; parks the task until it is otherwise. `drained` says whether
    /// a successful result took everything the kernel had (a short read or write).
    pub fn poll_io<T>(
        &self,
        fd: RawFd,
        dir: Dir,
        cx: &mut Context<'_>,
        mut op: impl FnMut() -> Result<T, Errno>,
        drained: impl Fn(&T) -> bool,
    ) -> Poll<io::Result<T>> {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = usize::try_from(fd).ok().and_then(|i| slots.get_mut(i)) else {
            return Poll::Ready(Err(io::Error::other("socket not registered")));
        };
        loop {
            let ready = match dir {
                Dir::Read => slot.readable,
                Dir::Write => slot.writable,
            };
            if !ready {
                park(slot, dir, cx);
                return Poll::Pending;
            }
            match op() {
                Ok(v) => {
                    if drained(&v) && !(dir == Dir::Read && slot.hung_up) {
                        set_ready(slot, dir, false);
                    }
                    return Poll::Ready(Ok(v));
                }
                Err(Errno::INTR) => continue,
                Err(e) if e == Errno::AGAIN || e == Errno::WOULDBLOCK => set_ready(slot, dir, false),
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }

    /// Ready when `dir` is (a connect finished, or data can be read), without doing anything.
    pub fn poll_ready(&self, fd: RawFd, dir: Dir, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = usize::try_from(fd).ok().and_then(|i| slots.get_mut(i)) else {
            return Poll::Ready(Err(io::Error::other("socket not registered")));
        };
        let ready = match dir {
            Dir::Read => slot.readable,
            Dir::Write => slot.writable,
        };
        if ready {
            Poll::Ready(Ok(()))
        } else {
            park(slot, dir, cx);
            Poll::Pending
        }
    }

    /// Waits up to `timeout_ms` (`None`: until something happens) and wakes the tasks whose
    /// sockets became ready; returns how many sockets did.
    pub fn wait(&self, timeout_ms: Option<u64>, notify: Option<&OwnedFd>) -> io::Result<usize> {
        let timeout = timeout_ms.map(|ms| {
            let ms = ms.min(MAX_SLEEP_MS);
            Timespec { tv_sec: (ms / 1000) as i64, tv_nsec: ((ms % 1000) * 1_000_000) as i64 }
        });
        let mut events = self.events.borrow_mut();
        events.clear();
        match epoll::wait(&self.epoll, spare_capacity(&mut *events), timeout.as_ref()) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
        let mut slots = self.slots.borrow_mut();
        let mut sockets = 0;
        for event in events.iter() {
            let key = event.data.u64();
            if key == NOTIFY_KEY {
                if let Some(fd) = notify {
                    let mut count = [0u8; 8];
                    let _ = rustix::io::read(fd.as_fd(), &mut count);
                }
                continue;
            }
            let Some(slot) = usize::try_from(key).ok().and_then(|i| slots.get_mut(i)) else { continue };
            sockets += 1;
            let flags = event.flags;
            let broken = flags.intersects(EventFlags::HUP | EventFlags::ERR);
            if broken || flags.contains(EventFlags::RDHUP) {
                slot.hung_up = true;
            }
            if broken || flags.intersects(EventFlags::IN | EventFlags::RDHUP) {
                slot.readable = true;
                if let Some(w) = slot.read.take() {
                    w.wake();
                }
            }
            if broken || flags.contains(EventFlags::OUT) {
                slot.writable = true;
                if let Some(w) = slot.write.take() {
                    w.wake();
                }
            }
        }
        Ok(sockets)
    }
}

fn set_ready(slot: &mut Slot, dir: Dir, ready: bool) {
    match dir {
        Dir::Read => slot.readable = ready,
        Dir::Write => slot.writable = ready,
    }
}

fn park(slot: &mut Slot, dir: Dir, cx: &mut Context<'_>) {
    let waiting = match dir {
        Dir::Read => &mut slot.read,
        Dir::Write => &mut slot.write,
    };
    match waiting {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *waiting = Some(cx.waker().clone()),
    }
}
