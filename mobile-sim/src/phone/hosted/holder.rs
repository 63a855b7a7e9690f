//! The held phones of a process, served by one loop instead of a task each.
//!
//! A phone's task connects it (the ramp, the permit, the upgrade, backoff after a loss) and then
//! hands the connection to the [`Holder`] until the connection ends. The holder keeps what a
//! held phone needs in one 64-byte [`Slot`] per phone, in a dense table indexed like the
//! process's devices: its socket, its counters, when its next byte is due. Its sockets sit in a
//! [`SocketSet`], so a phone's answer comes to the holder as the phone's index; its bytes come
//! due from a [`Calendar`] of send times.
//!
//! Why (issue #17): with a task per held phone, each byte and each answer went through the
//! phone's timer entry, its task header, the executor's run queue, its future's state and the
//! reactor's slot, each a cold cache line in a task nobody had touched for a minute; that was
//! more than half of mobile-sim's CPU in a 200,000-phone hold (`perf record`). Here a byte or an
//! answer touches the phone's slot and its device counters.
//!
//! What the phone does while held is the task engine's `hold`, and the same bookkeeping
//! ([`Shared`]): a byte is counted as sent before its write; a `{"durable":N}` answer sets the
//! device's durable count; from the drain on no byte is sent; once closing, a phone whose bytes
//! are all confirmed ends (and its task closes it with 1000); at the drain's deadline, or on
//! stop, every held phone ends. One difference: a byte's write that cannot go at once (the
//! socket's send buffer full, which takes hours of a server not reading a phone's 7-byte
//! frames) loses the connection instead of waiting for room; the phone reconnects.

use core::future::{poll_fn, Future};
use core::pin::pin;
use core::task::{Poll, Waker};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use embassy_time::Timer;
use host_runtime::net::TcpSocket;
use host_runtime::socket_set::SocketSet;
use rustix::io::Errno;
use rustix::net::SendFlags;

use super::{at, Connection, Frame, Frames, OPCODE_BINARY, OPCODE_PONG};
use crate::net::{Failure, FailureKind};
use crate::phone::{far_future, wants_more, Ended, Phase, Progress, Session, Shared};

/// A slot's `due` when no byte of it is queued.
const NOT_DUE: u32 = u32::MAX;

/// How long the holder pauses after its socket set failed to report (never seen; a bug in the
/// making), so a broken epoll does not spin the thread.
const AFTER_FAILURE: Duration = Duration::from_millis(100);

/// The held phones of a process (see the module's documentation). Lives on the runtime's
/// thread for the life of the process.
pub(super) struct Holder {
    shared: &'static Shared,
    set: RefCell<SocketSet>,
    table: RefCell<Table>,
}

/// Where a slot is in a connection's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No connection of this phone is held.
    Free,
    Held,
    /// The holder ended it; the phone's task has not yet taken it back.
    Ended,
}

/// One phone while held: a cache line, so that a byte or an answer costs one cold load here (and
/// one for the device's counters).
#[repr(align(64))]
pub(super) struct Slot {
    /// The connection's socket (taken out of the runtime's reactor, in the holder's set).
    socket: Option<OwnedFd>,
    /// The calendar's key under which its next byte is queued ([`NOT_DUE`]: none). The
    /// calendar may hold older keys for it: only this one counts.
    due: u32,
    state: State,
    progress: Progress,
    session: Session,
    /// The phone's task, waiting for the connection to end.
    waker: Option<Waker>,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            socket: None,
            due: NOT_DUE,
            state: State::Free,
            progress: Progress { sent: 0, durable_before: 0 },
            session: Session::default(),
            waker: None,
        }
    }
}

#[derive(Default)]
struct Table {
    phones: Vec<Slot>,
    /// When each held phone's next byte is due.
    calendar: Calendar,
    /// The bytes due at this wakeup (kept for its memory).
    due_now: Vec<(u32, u32)>,
    /// Phones with part of a frame read (rare: an answer is one small segment).
    partial: HashMap<u32, Frames>,
    /// How phones whose connection was lost lost it, until their task takes it.
    lost: HashMap<u32, Failure>,
    /// The run left its Run phase: no more bytes; every phone ends at `deadline`.
    draining: bool,
    deadline: u32,
    /// The drain's deadline came: a phone held from now on ends at once.
    deadline_passed: bool,
    /// Close phase: a phone ends once all it sent is confirmed.
    closing: bool,
    stopped: bool,
    /// The loop's task and the time it sleeps until, so that a phone held meanwhile whose byte
    /// is due earlier wakes it.
    waker: Option<Waker>,
    sleeps_until: u32,
    rescan: bool,
}

/// What woke the holder's loop.
enum Woke {
    Phase,
    Time,
    Ready,
    /// A phone was held whose byte is due before the loop's timer.
    Rescan,
    Failed(io::Error),
}

impl Holder {
    /// A holder for the process's phones; call from the runtime's thread (its socket set
    /// registers in the thread's reactor).
    pub(super) fn new(shared: &'static Shared) -> io::Result<Self> {
        let phones = (0..shared.devices.len()).map(|_| Slot::default()).collect();
        let table = Table { phones, sleeps_until: NOT_DUE, ..Table::default() };
        Ok(Self { shared, set: RefCell::new(SocketSet::new()?), table: RefCell::new(table) })
    }

    /// Holds phone `k`'s connection until it ends, and says how. We closed it: the connection
    /// comes back for the closing handshake. It was lost: the socket is closed.
    pub(super) async fn hold(
        &self,
        k: usize,
        conn: Box<Connection>,
        progress: &mut Progress,
    ) -> (Ended, Option<Box<Connection>>) {
        let Connection { socket, frames } = *conn;
        let fd = match socket.into_fd() {
            Ok(fd) => fd,
            Err(e) => return (Ended::Lost(Failure::io(e)), None),
        };
        if let Err(e) = self.set.borrow().insert(fd.as_fd(), k as u64) {
            return (Ended::Lost(Failure::io(e)), None);
        }
        {
            let mut t = self.table.borrow_mut();
            if frames.pending() {
                t.partial.insert(k as u32, frames);
            }
            let slot = &mut t.phones[k];
            slot.socket = Some(fd);
            slot.state = State::Held;
            slot.progress = Progress { sent: progress.sent, durable_before: progress.durable_before };
            slot.session = Session::default();
            slot.due = NOT_DUE;
            if t.draining {
                // The phase as the phone would see it first thing in its hold (closing: its
                // new connection has nothing unconfirmed).
                if t.stopped || t.closing || t.deadline_passed {
                    self.end(&mut t, k, Ended::Closed);
                }
            } else if wants_more(self.shared, progress.sent) {
                let due = self.ms(self.shared.plan.common.next_send(Instant::now(), self.shared.start));
                self.queue(&mut t, k, due);
                if due < t.sleeps_until {
                    t.rescan = true;
                    if let Some(w) = t.waker.take() {
                        w.wake();
                    }
                }
            }
        }
        poll_fn(|cx| {
            let mut t = self.table.borrow_mut();
            let slot = &mut t.phones[k];
            if slot.state == State::Ended {
                return Poll::Ready(());
            }
            match &slot.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
        let mut t = self.table.borrow_mut();
        let slot = &mut t.phones[k];
        slot.state = State::Free;
        slot.waker = None;
        *progress = Progress { sent: slot.progress.sent, durable_before: slot.progress.durable_before };
        progress.durable_before += slot.session.durable;
        let socket = slot.socket.take();
        let frames = t.partial.remove(&(k as u32)).unwrap_or_default();
        if let Some(failure) = t.lost.remove(&(k as u32)) {
            return (Ended::Lost(failure), None);
        }
        let conn = match socket.map(TcpSocket::adopt) {
            Some(Ok(socket)) => Some(Box::new(Connection { socket, frames })),
            // Closed by us without a socket to close (never: a closed connection keeps it).
            _ => None,
        };
        (Ended::Closed, conn)
    }

    /// The loop: sends the bytes that are due, reads the answers that arrive, follows the run's
    /// phase. For ever (the process ends it).
    pub(super) async fn run(&self) {
        let shared = self.shared;
        let phase_changed = shared.phase.notify.notified();
        let mut phase_changed = pin!(phase_changed);
        phase_changed.as_mut().enable();
        self.follow_phase();
        let mut timer = pin!(Timer::at(at(far_future())));
        loop {
            let wake = self.table.borrow().next_wake();
            let when = if wake == NOT_DUE {
                far_future()
            } else {
                shared.start + Duration::from_millis(wake.into())
            };
            timer.set(Timer::at(at(when)));
            let woke = poll_fn(|cx| {
                if phase_changed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Phase);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Time);
                }
                {
                    let mut t = self.table.borrow_mut();
                    if core::mem::take(&mut t.rescan) {
                        return Poll::Ready(Woke::Rescan);
                    }
                    t.waker = Some(cx.waker().clone());
                    t.sleeps_until = wake;
                }
                match self.set.borrow_mut().poll_ready(cx) {
                    Poll::Ready(Ok(())) => Poll::Ready(Woke::Ready),
                    Poll::Ready(Err(e)) => Poll::Ready(Woke::Failed(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            self.table.borrow_mut().sleeps_until = NOT_DUE;
            match woke {
                Woke::Phase => {
                    phase_changed.set(shared.phase.notify.notified());
                    phase_changed.as_mut().enable();
                    self.follow_phase();
                }
                Woke::Time => self.time_passed(),
                Woke::Ready => self.read_ready(),
                Woke::Rescan => {}
                Woke::Failed(e) => {
                    tracing::error!("the held phones' socket set: {e}");
                    Timer::after_millis(AFTER_FAILURE.as_millis() as u64).await;
                }
            }
        }
    }

    /// Milliseconds from the run's start to `at` (the calendar's keys).
    fn ms(&self, at: Instant) -> u32 {
        let ms = at.saturating_duration_since(self.shared.start).as_millis();
        u32::try_from(ms).unwrap_or(NOT_DUE - 1).min(NOT_DUE - 1)
    }

    fn queue(&self, t: &mut Table, k: usize, due: u32) {
        t.phones[k].due = due;
        t.calendar.push(due, k as u32);
    }

    /// Sends every byte that is due; ends every phone at the drain's deadline.
    fn time_passed(&self) {
        let now = Instant::now();
        let now_ms = self.ms(now);
        let mut t = self.table.borrow_mut();
        if t.draining {
            if now_ms >= t.deadline {
                t.deadline_passed = true;
                self.end_all(&mut t);
            }
            return;
        }
        let mut due = core::mem::take(&mut t.due_now);
        t.calendar.take_due(now_ms, &mut due);
        for &(at, k) in &due {
            self.send_byte(&mut t, k as usize, at, now);
        }
        due.clear();
        t.due_now = due; // its memory, for the next time
    }

    /// Phone `k`'s byte queued for `due`, if that is still its time.
    fn send_byte(&self, t: &mut Table, k: usize, due: u32, now: Instant) {
        let shared = self.shared;
        let slot = &mut t.phones[k];
        if slot.state != State::Held || slot.due != due {
            return; // an older key of the phone (ended, or queued again since)
        }
        slot.due = NOT_DUE;
        // Counted as sent before the write: a byte that may have left is never missed.
        shared.sending(k, &mut slot.progress, &mut slot.session);
        let mask: [u8; 4] = rand::random();
        let frame = [0x80 | OPCODE_BINARY, 0x80 | 1, mask[0], mask[1], mask[2], mask[3], b'.' ^ mask[0]];
        let sent = match &slot.socket {
            Some(fd) => send_all_now(fd, &frame),
            None => Err(Failure::new(FailureKind::Other, "held without a socket")),
        };
        let more = wants_more(shared, slot.progress.sent);
        match sent {
            Err(failure) => self.end(t, k, Ended::Lost(failure)),
            Ok(()) if more => {
                let due = self.ms(shared.plan.common.next_send(now, shared.start));
                self.queue(t, k, due);
            }
            Ok(()) => {}
        }
    }

    /// Reads what the ready sockets brought.
    fn read_ready(&self) {
        loop {
            let ready = self.set.borrow_mut().next_ready();
            let Some(ready) = ready else { return };
            let Ok(k) = usize::try_from(ready.key) else { continue };
            let mut t = self.table.borrow_mut();
            if t.phones.get(k).is_none_or(|slot| slot.state != State::Held) {
                continue; // ended since the kernel reported it
            }
            if let Some(ended) = self.read(&mut t, k, ready.hung_up) {
                self.end(&mut t, k, ended);
            }
        }
    }

    /// Reads phone `k`'s socket until it has all there was, and acts on the frames; `Some` when
    /// the connection ends.
    fn read(&self, t: &mut Table, k: usize, hung_up: bool) -> Option<Ended> {
        let mut frames = t.partial.remove(&(k as u32)).unwrap_or_default();
        let ended = loop {
            let Some(fd) = t.phones[k].socket.as_ref() else {
                break Some(Ended::Lost(Failure::new(FailureKind::Other, "held without a socket")));
            };
            let room = frames.room();
            let want = room.len();
            match rustix::io::read(fd, room) {
                Ok(0) => break Some(lost(FailureKind::ClosedByServer, "connection closed")),
                Ok(n) => {
                    frames.filled(n);
                    if let Some(ended) = self.take_frames(t, k, &mut frames) {
                        break Some(ended);
                    }
                    // A short read took all the kernel had; anything new raises a new edge
                    // (unless the peer hung up: then read on to the end of file).
                    if n < want && !hung_up {
                        break None;
                    }
                }
                Err(Errno::AGAIN) => break None,
                Err(Errno::INTR) => continue,
                Err(e) => break Some(Ended::Lost(Failure::io(e.into()))),
            }
        };
        if frames.pending() {
            t.partial.insert(k as u32, frames);
        }
        ended
    }

    /// Acts on the whole frames read for phone `k`.
    fn take_frames(&self, t: &mut Table, k: usize, frames: &mut Frames) -> Option<Ended> {
        loop {
            let frame = match frames.next() {
                Ok(Some(frame)) => frame,
                Ok(None) => return None,
                Err(failure) => return Some(Ended::Lost(failure)),
            };
            let closing = t.closing;
            let slot = &mut t.phones[k];
            match frame {
                Frame::Durable(durable) => {
                    self.shared.durable(k, &slot.progress, &mut slot.session, durable);
                    if closing && slot.session.durable >= slot.session.sent {
                        return Some(Ended::Closed);
                    }
                }
                Frame::Ping(payload) => {
                    let pong = slot.socket.as_ref().map(|fd| send_frame_now(fd, OPCODE_PONG, &payload));
                    if let Some(Err(failure)) = pong {
                        return Some(Ended::Lost(failure));
                    }
                }
                Frame::Close(failure) => return Some(Ended::Lost(failure)),
                Frame::Other => {}
            }
        }
    }

    /// Follows the run's phase: from the drain on no more bytes, and the deadline; once closing,
    /// the phones whose bytes are all confirmed end; on stop, all.
    fn follow_phase(&self) {
        let phase = self.shared.phase.get();
        let mut t = self.table.borrow_mut();
        let deadline = match phase {
            Phase::Run => return,
            Phase::Drain { deadline } | Phase::Close { deadline } => deadline,
            Phase::Stop => {
                t.draining = true;
                t.stopped = true;
                self.end_all(&mut t);
                return;
            }
        };
        if !t.draining {
            t.draining = true;
            t.deadline = self.ms(deadline);
            t.calendar.clear();
            for slot in &mut t.phones {
                slot.due = NOT_DUE;
            }
        }
        if matches!(phase, Phase::Close { .. }) && !t.closing {
            t.closing = true;
            for k in 0..t.phones.len() {
                let slot = &t.phones[k];
                if slot.state == State::Held && slot.session.durable >= slot.session.sent {
                    self.end(&mut t, k, Ended::Closed);
                }
            }
        }
    }

    fn end_all(&self, t: &mut Table) {
        for k in 0..t.phones.len() {
            if t.phones[k].state == State::Held {
                self.end(t, k, Ended::Closed);
            }
        }
    }

    /// Ends phone `k`'s connection and wakes its task. Closed: its socket stays, for the task's
    /// closing handshake. Lost: its socket is closed.
    fn end(&self, t: &mut Table, k: usize, ended: Ended) {
        let slot = &mut t.phones[k];
        slot.state = State::Ended;
        slot.due = NOT_DUE;
        if let Some(fd) = &slot.socket {
            // Closing the descriptor would remove it too, but a closed connection lives on.
            let _ = self.set.borrow().remove(fd.as_fd());
        }
        let waker = slot.waker.take();
        if let Ended::Lost(failure) = ended {
            slot.socket = None;
            t.partial.remove(&(k as u32));
            t.lost.insert(k as u32, failure);
        }
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// When each held phone's next byte is due: (milliseconds since the run's start, phone) pairs
/// in buckets of a second. Why a second: a phone's next byte is 10 to 110 s ahead, so a bucket
/// per send time (1,100 of them at the default 100 ms tick) would take each new pair in a cold
/// place, a cache miss per byte (the `BTreeMap` of send times was 8 % of mobile-sim's CPU in a
/// 200,000-phone hold); the ends of 110 one-second buckets stay warm. The first bucket is
/// scanned at each wakeup for what is due (a few hundred pairs a second, read in order).
/// A phone may have older pairs here: its slot says which one counts.
#[derive(Default)]
struct Calendar {
    seconds: BTreeMap<u32, Vec<(u32, u32)>>,
}

impl Calendar {
    fn push(&mut self, due: u32, k: u32) {
        self.seconds.entry(due / 1000).or_default().push((due, k));
    }

    /// The earliest time a byte is due (ms).
    fn next(&self) -> Option<u32> {
        let (_, first) = self.seconds.first_key_value()?;
        first.iter().map(|&(due, _)| due).min()
    }

    /// Moves every pair due by `now` (ms) to `out`.
    fn take_due(&mut self, now: u32, out: &mut Vec<(u32, u32)>) {
        while let Some(mut bucket) = self.seconds.first_entry() {
            if bucket.key().saturating_mul(1000) > now {
                return;
            }
            bucket.get_mut().retain(|&(due, k)| {
                let keep = due > now;
                if !keep {
                    out.push((due, k));
                }
                keep
            });
            if !bucket.get().is_empty() {
                return; // the rest of this second is still ahead
            }
            bucket.remove();
        }
    }

    fn clear(&mut self) {
        self.seconds.clear();
    }
}

impl Table {
    /// When the loop must wake next (ms since the run's start; [`NOT_DUE`]: only for sockets).
    fn next_wake(&self) -> u32 {
        if self.stopped || self.deadline_passed {
            NOT_DUE // nothing is held, nor will be for long
        } else if self.draining {
            self.deadline
        } else {
            self.calendar.next().unwrap_or(NOT_DUE)
        }
    }
}

fn lost(kind: FailureKind, why: &str) -> Ended {
    Ended::Lost(Failure::new(kind, why))
}

/// Writes `bytes` at once or fails: a phone writes a few bytes a minute, so a send buffer
/// without room for them means a server that stopped reading long ago.
fn send_all_now(fd: &OwnedFd, bytes: &[u8]) -> Result<(), Failure> {
    loop {
        // MSG_NOSIGNAL: a connection the server reset is an error to report, not a SIGPIPE.
        match rustix::net::send(fd, bytes, SendFlags::NOSIGNAL) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) | Err(Errno::AGAIN) => {
                return Err(Failure::new(
                    FailureKind::Other,
                    "the send buffer is full: the server stopped reading",
                ))
            }
            Err(Errno::INTR) => continue,
            Err(e) => return Err(Failure::io(e.into())),
        }
    }
}

/// One masked frame (a pong), written at once or failing (see [`send_all_now`]).
fn send_frame_now(fd: &OwnedFd, opcode: u8, payload: &[u8]) -> Result<(), Failure> {
    let mut frame = [0u8; 6 + 125];
    let len = super::mask_frame(&mut frame, opcode, payload);
    send_all_now(fd, &frame[..len])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop wakes for the next byte, then for the drain's deadline; once that came (every
    /// phone ended then) it waits for sockets only, rather than for a deadline in the past,
    /// which would spin the thread until the process ends.
    #[test]
    fn the_loop_wakes_for_bytes_then_the_deadline_then_only_for_sockets() {
        let mut t = Table { sleeps_until: NOT_DUE, ..Table::default() };
        t.calendar.push(7_300, 1);
        assert_eq!(t.next_wake(), 7_300);
        t.draining = true;
        t.deadline = 9_000;
        assert_eq!(t.next_wake(), 9_000);
        t.deadline_passed = true;
        assert_eq!(t.next_wake(), NOT_DUE);
    }

    #[test]
    fn the_calendar_gives_each_pair_once_at_its_time_and_not_before() {
        let mut calendar = Calendar::default();
        let mut pairs: Vec<(u32, u32)> = (0..5_000).map(|k| ((k * 7_919) % 120_000, k)).collect();
        for &(due, k) in &pairs {
            calendar.push(due, k);
        }
        let (mut got, mut out) = (Vec::new(), Vec::new());
        let mut now = 0;
        while now <= 120_000 {
            // Every pair due before `now` was taken at the step before: the rest are due from
            // `now - 99` on, and the earliest of them is the next.
            let earliest = pairs.iter().filter(|&&(due, _)| due + 100 > now).map(|&(due, _)| due).min();
            assert_eq!(calendar.next(), earliest, "at {now}");
            calendar.take_due(now, &mut out);
            for &(due, k) in &out {
                assert!(due <= now && now < due + 100, "{k} due {due} taken at {now}");
            }
            got.append(&mut out);
            now += 100;
        }
        got.sort_unstable();
        pairs.sort_unstable();
        assert_eq!(got, pairs);
        assert_eq!(calendar.next(), None);
    }
}
