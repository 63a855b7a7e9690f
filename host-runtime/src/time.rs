//! The host build's embassy-time driver: a monotonic microsecond clock, and the [`Wheel`] as
//! its timer queue. No thread of its own: the executor sleeps in `epoll_wait` until the wheel's
//! next deadline (see [`super::run`]).

use core::ptr::NonNull;
use core::task::Waker;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Instant as StdInstant;

use embassy_executor_timer_queue::TimerQueueItem;
use embassy_time_driver::Driver;

use super::wheel::{Entry, Wheel};

/// Ticks per millisecond of the wheel (embassy-time counts microseconds here).
const TICKS_PER_MS: u64 = embassy_time_driver::TICK_HZ / 1000;
const _: () = assert!(embassy_time_driver::TICK_HZ == 1_000_000, "the host clock counts microseconds");

struct HostDriver {
    wheel: Mutex<Wheel>,
    /// Timers of wakers that are not embassy tasks' (none in the gateway; a test harness could
    /// poll a Timer from another executor): kept in a list, checked on every turn.
    foreign: Mutex<Vec<(u64, Waker)>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: HostDriver = HostDriver {
    wheel: Mutex::new(Wheel::new()),
    foreign: Mutex::new(Vec::new()),
});

static ZERO: OnceLock<StdInstant> = OnceLock::new();

unsafe extern "Rust" {
    // Defined by embassy-executor: the task's timer item, or `None` for a waker of another kind.
    fn __try_embassy_time_queue_item_from_waker(waker: &Waker) -> Option<&'static mut TimerQueueItem>;
}

/// Microseconds since the runtime's clock started.
pub fn now_us() -> u64 {
    let zero = *ZERO.get_or_init(StdInstant::now);
    u64::try_from(zero.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// `at` on the runtime's clock (what `embassy_time::Instant::from_micros` takes), for code
/// that reckons in `std::time::Instant`; a moment before the clock started is its start.
pub fn us_at(at: StdInstant) -> u64 {
    let zero = *ZERO.get_or_init(StdInstant::now);
    u64::try_from(at.saturating_duration_since(zero).as_micros()).unwrap_or(u64::MAX)
}

/// Milliseconds on the wheel's clock.
pub fn now_ms() -> u64 {
    now_us() / TICKS_PER_MS
}

impl Driver for HostDriver {
    fn now(&self) -> u64 {
        now_us()
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        // Rounded up: a timer woken at its millisecond has always expired, so no task is woken
        // only to find its timer a few microseconds short and ask again.
        let deadline = at.div_ceil(TICKS_PER_MS);
        // SAFETY: the item belongs to the waker's task and is only ever used through this
        // driver, under its mutex; task storage is static, so the entry never moves.
        match unsafe { __try_embassy_time_queue_item_from_waker(waker) } {
            Some(item) => {
                let entry = NonNull::from(unsafe { item.as_mut::<Entry>() });
                let mut wheel = self.wheel.lock().unwrap_or_else(PoisonError::into_inner);
                unsafe { wheel.schedule(entry, deadline, waker) };
            }
            None => {
                let mut foreign = self.foreign.lock().unwrap_or_else(PoisonError::into_inner);
                match foreign.iter_mut().find(|(_, w)| w.will_wake(waker)) {
                    Some(t) => t.0 = t.0.min(deadline),
                    None => foreign.push((deadline, waker.clone())),
                }
            }
        }
        // A timer set from another thread may be earlier than what the executor sleeps until.
        super::notify_from_other_thread();
    }
}

/// Wakes every task whose timer is due; returns the next time (ms) something is due.
pub fn advance() -> Option<u64> {
    let now = now_ms();
    let next = {
        let mut wheel = DRIVER.wheel.lock().unwrap_or_else(PoisonError::into_inner);
        wheel.advance(now);
        wheel.next_due()
    };
    let mut due = Vec::new();
    let mut foreign = DRIVER.foreign.lock().unwrap_or_else(PoisonError::into_inner);
    if foreign.is_empty() {
        return next;
    }
    foreign.retain(|(at, w)| {
        let keep = *at > now;
        if !keep {
            due.push(w.clone());
        }
        keep
    });
    let next_foreign = foreign.iter().map(|(at, _)| *at).min();
    drop(foreign);
    due.into_iter().for_each(Waker::wake);
    match (next, next_foreign) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Timers queued in the wheel (for tests and the status line).
pub fn queued() -> usize {
    DRIVER.wheel.lock().unwrap_or_else(PoisonError::into_inner).len()
}
