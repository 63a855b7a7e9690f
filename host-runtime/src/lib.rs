//! The host build's runtime: one thread that runs embassy's executor, its
//! timers and its sockets' readiness.
//!
//! What it replaces, and why (issue #17, "the host gateway's cost per phone"): embassy's `std`
//! platform woke the executor's thread through a mutex and condvar; its time driver kept every
//! task's timer in a list walked on each update, from an alarm thread of its own; and
//! `edge-nal-std` sockets went through async-io, whose reactor thread re-armed a one-shot epoll
//! registration for every wait and woke the executor from that other thread. Per phone byte that
//! was two threads, a cross-thread wakeup and an `epoll_ctl`; per idle phone, a timer walked on
//! every queue update.
//!
//! Here, one thread does it all, in a loop:
//! 1. poll the tasks that were woken ([`embassy_executor::raw::Executor::poll`]);
//! 2. wake the tasks whose timers are due ([`time`]: a timing wheel, O(1) per update);
//! 3. wait in `epoll_wait` for socket readiness, until the next timer, or not at all if a task
//!    was woken meanwhile; readiness wakes the sockets' tasks directly ([`reactor`]).
//!
//! Sockets are registered once, edge-triggered, for reading and writing, when they are created:
//! no `epoll_ctl` per wait, no allocation per socket beyond a 40-byte slot in a table indexed by
//! the file descriptor. A waker from another thread (the TAP device's async-io reader, a signal)
//! goes through an eventfd; wakes on the executor's own thread only set a flag.

pub mod net;
pub mod pacer;
pub mod reactor;
pub mod socket_set;
pub mod tasks;
pub mod time;
pub mod wheel;

use std::cell::Cell;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use embassy_executor::{raw, Spawner};
use rustix::event::{eventfd, EventfdFlags};
use rustix::fd::OwnedFd;

thread_local! {
    static ON_EXECUTOR: Cell<bool> = const { Cell::new(false) };
}

/// Set when a task was woken since the executor last polled: it must not sleep.
static PENDING: AtomicBool = AtomicBool::new(false);
/// Written by wakes from other threads, so the executor's `epoll_wait` returns.
static NOTIFY: OnceLock<OwnedFd> = OnceLock::new();

// The executor calls this whenever a task becomes ready to poll, from whatever thread woke it.
#[unsafe(export_name = "__pender")]
fn pender(_context: *mut ()) {
    PENDING.store(true, Ordering::Release);
    notify_from_other_thread();
}

/// If called off the executor's thread, makes its `epoll_wait` return.
fn notify_from_other_thread() {
    if !ON_EXECUTOR.with(Cell::get) {
        if let Some(fd) = NOTIFY.get() {
            // An eventfd write fails only when its counter would overflow: it is readable then.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }
}

/// How the runtime waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// While sockets keep becoming ready (again within this many microseconds), the executor's
    /// thread wakes at most once per this many microseconds: readiness that arrives meanwhile is
    /// taken in one `epoll_wait`, and one wakeup serves every phone that sent in that time,
    /// instead of one thread wakeup (a context switch) per phone message. Readiness in bursts
    /// further apart wakes it once per burst; after a window without readiness it blocks
    /// ([`pacer`]). It delays reading a phone's bytes by at most this much (their count waits for the
    /// trunk's flush, 250 ms, anyway). 0: wake for every readiness. Default 1,000 (1 ms).
    pub io_batch_us: u64,
}

impl RuntimeConfig {
    pub const DEFAULT: Self = Self { io_batch_us: 1_000 };
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Runs the executor on this thread for ever: `init` spawns the first tasks.
///
/// Only one runtime per process (embassy-time has one driver, and this is it).
pub fn run(config: RuntimeConfig, init: impl FnOnce(Spawner)) -> io::Result<Infallible> {
    let notify = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
    let reactor = reactor::Reactor::install(&notify)?;
    if NOTIFY.set(notify).is_err() {
        return Err(io::Error::other("the runtime runs once per process"));
    }
    ON_EXECUTOR.with(|on| on.set(true));
    let executor: &'static raw::Executor = Box::leak(Box::new(raw::Executor::new(core::ptr::null_mut())));
    init(executor.spawner());
    let mut pacer = pacer::Pacer::new(config.io_batch_us);
    loop {
        PENDING.store(false, Ordering::Release);
        // SAFETY: called only from this loop, never reentrantly (the pender only sets a flag).
        unsafe { executor.poll() };
        let next_timer = time::advance();
        if PENDING.load(Ordering::Acquire) {
            // Work to do: take whatever readiness is there without blocking.
            if reactor.wait(Some(0), NOTIFY.get())? > 0 {
                pacer.took(time::now_us());
            }
            continue;
        }
        let now = time::now_us();
        if let Some(mut rest) = pacer.sleep_for(now) {
            // A stream: let the rest of the window's readiness gather, then take it all at once
            // (never past the next timer).
            if let Some(due) = next_timer {
                rest = rest.min(due.saturating_mul(1000).saturating_sub(now));
            }
            std::thread::sleep(std::time::Duration::from_micros(rest));
            let found = reactor.wait(Some(0), NOTIFY.get())? > 0;
            pacer.window_ended(found.then(time::now_us));
            continue;
        }
        let timeout_ms = next_timer.map(|due| due.saturating_sub(time::now_ms()));
        if reactor.wait(timeout_ms, NOTIFY.get())? > 0 {
            pacer.woken(time::now_us());
        }
    }
}
