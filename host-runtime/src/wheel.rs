//! A hierarchical timing wheel: the host build's embassy-time queue.
//!
//! embassy-time's own `std` driver keeps every task's timer in one linked list and walks all of
//! it on each queue update (`queue_integrated`): with a timer per phone (the idle timeout), that
//! walk is what an idle host gateway spent its CPU on (81 % at 18,000 phones). Here each update
//! is O(1), whatever the number of timers, and finding the next deadline is O(LEVELS) plus the
//! timers of one 64 ms slot ([`Wheel::next_due`]).
//!
//! Layout: [`LEVELS`] levels of 64 slots. A slot at level `k` spans 64^k milliseconds. A timer
//! goes to the lowest level at which its deadline and `elapsed` (the wheel's time) share every
//! higher 6-bit group of bits, so everything in level 0 is due within 64 ms, level 1 within
//! 4 s, and so on; 11 levels cover all of `u64`, so no deadline ever overflows the wheel. When
//! time reaches a slot of a higher level, its timers move down (each timer moves at most
//! `LEVELS` times in its life); a slot of level 0 holds timers of exactly one millisecond.
//!
//! A slot is a list of `(deadline, entry)` pairs, not a list linked through the entries: moving
//! a slot's timers down a level reads and writes only that list, never the entries themselves.
//! An entry (in the task's own timer item, which embassy-executor reserves in every task header:
//! no allocation per timer) is read only when its deadline comes. Why: in a load generator's
//! hold (`lab hold`, issue #17) each phone's timer comes due about once a minute, so its entry
//! is always cold; walking a linked slot was a chain of cache misses, one per timer per level it
//! moved down, and linking one wrote to the cold entry at the slot's head. `Wheel::advance` and
//! `Wheel::schedule` were 15 % of mobile-sim's CPU (`perf record` of a 200,000-phone hold).
//!
//! Like embassy's queues, a task has at most one deadline here: the earliest asked for. A later
//! deadline asked while an earlier one is queued changes nothing; the task is woken at the
//! earlier one, finds its timer not yet expired, and asks again. So a phone's idle deadline,
//! pushed back by every byte it sends, costs nothing until it is first reached. An earlier
//! deadline adds a pair and leaves the old one in its slot, stale: a pair wakes its entry only
//! if the entry is still queued for exactly that deadline, so a stale pair is dropped when its
//! slot comes (or wakes the task at a time it asked for again, which is no harm).

use core::ptr::NonNull;
use core::task::Waker;

/// Bits of time per level: 64 slots, one bit each in a `u64` occupancy mask.
const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
/// Levels: 11 × 6 bits ≥ 64 bits, so every `u64` deadline has a level.
pub const LEVELS: usize = 11;
/// A slot's list keeps its memory for the next timers when it held at most this many (the
/// lowest levels, which turn over every few milliseconds); a longer one (a level that holds a
/// few seconds of a load generator's phones) gives it back.
const KEEP_CAPACITY: usize = 256;

/// One task's timer: lives in the task header's timer item (6 machine words), zeroed when the
/// task storage is created, never moved. A zeroed `Entry` is valid and not queued (`Option<Waker>`
/// is `None` when its vtable pointer is null).
#[repr(C)]
#[derive(Debug)]
pub struct Entry {
    /// Deadline, in milliseconds on the wheel's clock; meaningful while queued.
    deadline: u64,
    /// The task to wake. `Some` exactly while the entry is queued.
    waker: Option<Waker>,
}

impl Entry {
    /// An entry that is not queued (tests; the executor provides zeroed ones).
    pub const fn new() -> Self {
        Self { deadline: 0, waker: None }
    }
}

impl Default for Entry {
    fn default() -> Self {
        Self::new()
    }
}

/// A timer in a slot: the deadline it was queued for, and its entry.
#[derive(Debug, Clone, Copy)]
struct Pending {
    deadline: u64,
    entry: NonNull<Entry>,
}

/// The wheel. It links entries that the caller owns and never frees (task headers live for the
/// whole process).
#[derive(Debug)]
pub struct Wheel {
    /// Milliseconds: every deadline at or before it has been woken.
    elapsed: u64,
    /// Bit `s` of `occupied[k]` is set when slot `s` of level `k` holds a timer.
    occupied: [u64; LEVELS],
    slots: [[Vec<Pending>; SLOTS]; LEVELS],
    /// Entries queued (stale pairs not counted).
    len: usize,
}

// The entries are only touched under the driver's mutex, and a waker may be woken from any thread.
unsafe impl Send for Wheel {}

impl Default for Wheel {
    fn default() -> Self {
        Self::new()
    }
}

impl Wheel {
    pub const fn new() -> Self {
        Self {
            elapsed: 0,
            occupied: [0; LEVELS],
            slots: [const { [const { Vec::new() }; SLOTS] }; LEVELS],
            len: 0,
        }
    }

    /// Timers queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Wake `waker` at `deadline` (ms), through `entry`: the timer item of the waker's task.
    ///
    /// # Safety
    ///
    /// `entry` must stay valid and in place for as long as the wheel exists (a stale pair may
    /// still point at it after it was woken), and be used only with this wheel and only for
    /// wakers of one task.
    pub unsafe fn schedule(&mut self, entry: NonNull<Entry>, deadline: u64, waker: &Waker) {
        let e = unsafe { &mut *entry.as_ptr() };
        if e.waker.is_some() {
            if deadline >= e.deadline {
                return; // woken earlier; the task asks again then
            }
            // Earlier: the pair queued for the old deadline goes stale.
        } else {
            e.waker = Some(waker.clone());
            self.len += 1;
        }
        if deadline <= self.elapsed {
            // Already due: wake now rather than queue behind the wheel's time.
            self.len -= 1;
            if let Some(w) = e.waker.take() {
                w.wake();
            }
            return;
        }
        e.deadline = deadline;
        self.push(Pending { deadline, entry });
    }

    /// When the executor must wake for the wheel (ms): the earliest deadline queued when it is
    /// within level 1 (64 ms slots); the time its slot moves down when it is higher. `None`: no
    /// timer at all.
    ///
    /// Not the time a slot of level 1 moves down: that comes every 64 ms while any timer waits
    /// there, and [`Wheel::advance`] moves slots in passing, so the executor wakes only when a
    /// timer of level 0 or 1 is due. (It did wake for the move, and a gateway holding 18,000
    /// phones woke every 64 ms to move timers and do nothing else: 15 of its 51 wakeups a second
    /// in a 200,000-phone hold, `strace -tt` of one gateway.) The scan is of one slot of level 1:
    /// the timers due in its 64 ms. A higher slot moves down every 4 s at most often, a wakeup not
    /// worth a scan of what may be every phone's idle timer (the stale pairs' included).
    pub fn next_due(&self) -> Option<u64> {
        let (level, slot, at) = self.next_slot()?;
        match level {
            1 => self.slots[1][slot].iter().map(|p| p.deadline).min(),
            _ => Some(at), // a slot of level 0 holds one millisecond's timers
        }
    }

    /// Moves the wheel to `now` (ms), waking every timer due by then.
    pub fn advance(&mut self, now: u64) {
        while let Some((level, slot, at)) = self.next_slot() {
            if at > now {
                break;
            }
            self.elapsed = self.elapsed.max(at);
            let mut pending = core::mem::take(&mut self.slots[level][slot]);
            self.occupied[level] &= !(1u64 << slot);
            for p in pending.drain(..) {
                if p.deadline > self.elapsed {
                    self.push(p); // to a lower level; the entry is not touched
                    continue;
                }
                let e = unsafe { &mut *p.entry.as_ptr() };
                if e.waker.is_some() && e.deadline == p.deadline {
                    self.len -= 1;
                    if let Some(w) = e.waker.take() {
                        w.wake();
                    }
                } // else stale: queued again for another time, or woken already
            }
            // Pairs go to lower levels only, so the slot is still empty: its list keeps its
            // memory for the next ones, unless it was a long one.
            if pending.capacity() <= KEEP_CAPACITY {
                self.slots[level][slot] = pending;
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        // The lowest occupied level always holds the earliest slot: every slot of level k lies
        // within the current 64^(k+1) ms block, every slot of a higher level after it.
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let slot = self.occupied[level].trailing_zeros() as usize;
        let shift = BITS * level as u32;
        let above = shift + BITS;
        let block = if above >= 64 { 0 } else { (self.elapsed >> above) << above };
        Some((level, slot, block | ((slot as u64) << shift)))
    }

    fn level_of(&self, deadline: u64) -> usize {
        let differs = (self.elapsed ^ deadline) | (SLOTS as u64 - 1);
        let top_bit = 63 - differs.leading_zeros();
        (top_bit / BITS) as usize
    }

    fn push(&mut self, p: Pending) {
        let level = self.level_of(p.deadline);
        let slot = ((p.deadline >> (BITS * level as u32)) & (SLOTS as u64 - 1)) as usize;
        self.slots[level][slot].push(p);
        self.occupied[level] |= 1u64 << slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Timer {
        entry: Box<Entry>,
        woken: Arc<Count>,
        waker: Waker,
    }

    impl Timer {
        fn new() -> Self {
            let woken = Arc::new(Count(AtomicUsize::new(0)));
            Self { entry: Box::new(Entry::new()), waker: Waker::from(woken.clone()), woken }
        }
        fn at(&mut self, wheel: &mut Wheel, ms: u64) {
            unsafe { wheel.schedule(NonNull::from(&mut *self.entry), ms, &self.waker) }
        }
        fn woken(&self) -> usize {
            self.woken.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn timers_wake_at_their_millisecond_not_before() {
        let mut wheel = Wheel::new();
        let deadlines = [1u64, 63, 64, 65, 4095, 4096, 300_000, 300_001, 86_400_000, u64::MAX / 3];
        let mut timers: Vec<Timer> = deadlines.iter().map(|_| Timer::new()).collect();
        for (t, &d) in timers.iter_mut().zip(&deadlines) {
            t.at(&mut wheel, d);
        }
        assert_eq!(wheel.len(), deadlines.len());
        for (i, &d) in deadlines.iter().enumerate() {
            wheel.advance(d - 1);
            assert_eq!(timers[i].woken(), 0, "timer {d} woke early");
            // What the executor sleeps until is never after a queued deadline.
            assert!(wheel.next_due().unwrap() <= d);
            wheel.advance(d);
            assert_eq!(timers[i].woken(), 1, "timer {d} not woken at its time");
            assert!(timers[..i].iter().all(|t| t.woken() == 1));
            assert!(timers[i + 1..].iter().all(|t| t.woken() == 0));
        }
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_due(), None);
    }

    #[test]
    fn the_wheel_is_due_when_a_timer_is_not_when_a_slot_moves_down() {
        let mut wheel = Wheel::new();
        let mut idle = Timer::new();
        let mut other = Timer::new();
        idle.at(&mut wheel, 300_000); // level 3
        other.at(&mut wheel, 100); // level 1: its slot moves down at 64
        assert_eq!(wheel.next_due(), Some(100));
        wheel.advance(70); // moves the slot down without waking anybody
        assert_eq!(other.woken(), 0);
        assert_eq!(wheel.next_due(), Some(100));
        wheel.advance(100);
        assert_eq!(other.woken(), 1);
        // Above level 1: the slot's time (262,144 ms), not a scan of it.
        assert_eq!(wheel.next_due(), Some(262_144));
        wheel.advance(262_144);
        assert_eq!(idle.woken(), 0);
        assert_eq!(wheel.next_due(), Some(299_008), "level 2: its slot of 4,096 ms");
        wheel.advance(299_990);
        assert_eq!(wheel.next_due(), Some(300_000));
        wheel.advance(300_000);
        assert_eq!(idle.woken(), 1);
        assert_eq!(wheel.next_due(), None);
    }

    #[test]
    fn an_earlier_deadline_moves_the_timer_a_later_one_does_not() {
        let mut wheel = Wheel::new();
        let mut idle = Timer::new();
        idle.at(&mut wheel, 300_000);
        idle.at(&mut wheel, 300_500); // later: kept at 300,000
        idle.at(&mut wheel, 10_000); // earlier (a write timeout): moved
        assert_eq!(wheel.len(), 1);
        wheel.advance(9_999);
        assert_eq!(idle.woken(), 0);
        wheel.advance(10_000);
        assert_eq!(idle.woken(), 1);
        assert!(wheel.is_empty());
        wheel.advance(400_000);
        assert_eq!(idle.woken(), 1, "an unlinked timer stays unlinked");
    }

    #[test]
    fn a_stale_pair_wakes_nobody_and_a_pair_queued_again_wakes_once() {
        let mut wheel = Wheel::new();
        let mut t = Timer::new();
        t.at(&mut wheel, 300_000);
        t.at(&mut wheel, 10_000); // the pair for 300,000 goes stale
        wheel.advance(10_000);
        assert_eq!(t.woken(), 1);
        t.at(&mut wheel, 400_000); // later than the stale pair
        wheel.advance(399_999);
        assert_eq!(t.woken(), 1, "the stale pair at 300,000 woke a timer queued for 400,000");
        wheel.advance(400_000);
        assert_eq!(t.woken(), 2);
        t.at(&mut wheel, 500_000);
        t.at(&mut wheel, 450_000);
        wheel.advance(450_000);
        assert_eq!(t.woken(), 3);
        t.at(&mut wheel, 500_000); // again for the stale pair's time: two pairs, one wake
        assert_eq!(wheel.len(), 1);
        wheel.advance(600_000);
        assert_eq!(t.woken(), 4);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_due(), None, "no pair left behind");
    }

    #[test]
    fn a_past_deadline_wakes_at_once() {
        let mut wheel = Wheel::new();
        wheel.advance(1_000);
        let mut t = Timer::new();
        t.at(&mut wheel, 1_000);
        assert_eq!(t.woken(), 1);
        assert!(wheel.is_empty());
    }

    #[test]
    fn many_timers_in_random_order_each_wake_once_on_time() {
        // A small LCG: deterministic, no dependency.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            x >> 33
        };
        let mut wheel = Wheel::new();
        let mut timers: Vec<(Timer, u64)> = Vec::new();
        for _ in 0..2_000 {
            let mut t = Timer::new();
            let mut d = 1 + next() % 400_000;
            t.at(&mut wheel, d);
            if next() % 3 == 0 {
                let earlier = 1 + next() % d;
                t.at(&mut wheel, earlier);
                d = earlier;
            }
            timers.push((t, d));
        }
        let mut now = 0;
        while now < 400_000 {
            now += 1 + next() % 5_000;
            wheel.advance(now);
            for (t, d) in &timers {
                assert_eq!(t.woken(), usize::from(*d <= now), "deadline {d} at {now}");
            }
        }
        assert!(wheel.is_empty());
    }
}
