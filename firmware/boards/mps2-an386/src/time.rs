//! embassy-time driver for mps2-an386 on its two CMSDK APB timers (25 MHz).
//!
//! * TIMER0 (0x4000_0000, IRQ 8) counts down from 0xFFFF_FFFF forever; its
//!   interrupt, once per 2^32 cycles (171.8 s), adds one to `PERIODS`.
//!   `now` = PERIODS * 2^32 + (0xFFFF_FFFF - VALUE), in 25 MHz cycles.
//! * TIMER1 (0x4000_1000, IRQ 9) is the alarm: loaded with the cycles until
//!   the earliest deadline of embassy's timer queue, it interrupts then.
//!
//! Nothing ticks while nothing is due: between deadlines the CPU sleeps in
//! WFI (see board_common::executor), and QEMU idles with it. (SysTick would have worked
//! too, but its 24-bit counter wraps 1.5 times a second.)

use core::cell::{Cell, RefCell};
use core::ptr::{read_volatile, write_volatile};
use core::task::Waker;

use critical_section::{CriticalSection, Mutex};
use embassy_time_driver::{Driver, TICK_HZ};
use embassy_time_queue_utils::Queue;

/// The timers' clock (the board's SYSCLK).
pub const CLOCK_HZ: u64 = 25_000_000;
const CYCLES_PER_TICK: u64 = CLOCK_HZ / TICK_HZ;
const _: () = assert!(CLOCK_HZ.is_multiple_of(TICK_HZ), "embassy-time's tick rate must divide 25 MHz");

const TIMER0: usize = 0x4000_0000;
const TIMER1: usize = 0x4000_1000;
use crate::vectors::{TIMER0_IRQ, TIMER1_IRQ};

const CTRL: usize = 0x0;
const VALUE: usize = 0x4;
const RELOAD: usize = 0x8;
const INTSTATUS: usize = 0xc; // read: pending; write 1: clear
const CTRL_EN: u32 = 1 << 0;
const CTRL_IRQEN: u32 = 1 << 3;
/// Longest alarm programmed at once; a later deadline is reached in steps.
const MAX_ALARM_CYCLES: u64 = 0xF000_0000;

fn read(base: usize, offset: usize) -> u32 {
    // SAFETY: fixed, documented peripheral registers of this board.
    unsafe { read_volatile((base + offset) as *const u32) }
}

fn write(base: usize, offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { write_volatile((base + offset) as *mut u32, value) }
}

struct CmsdkTime {
    periods: Mutex<Cell<u32>>,
    queue: Mutex<RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: CmsdkTime = CmsdkTime {
    periods: Mutex::new(Cell::new(0)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

impl CmsdkTime {
    fn cycles(&self, cs: CriticalSection) -> u64 {
        // VALUE before INTSTATUS: if the counter wrapped after the VALUE read,
        // VALUE is small (old period) and the pending flag is ignored; if it
        // wrapped before, VALUE is large and the flag says "add one". The
        // TIMER0 handler runs long before half a period (86 s) has passed.
        let value = read(TIMER0, VALUE);
        let pending = read(TIMER0, INTSTATUS) & 1 != 0;
        let mut periods = u64::from(self.periods.borrow(cs).get());
        if pending && value >= 0x8000_0000 {
            periods += 1;
        }
        (periods << 32) | u64::from(0xFFFF_FFFF - value)
    }

    /// Programs TIMER1 for `at` (ticks); false when `at` has already passed.
    fn set_alarm(&self, cs: CriticalSection, at: u64) -> bool {
        write(TIMER1, CTRL, 0);
        write(TIMER1, INTSTATUS, 1);
        if at == u64::MAX {
            return true; // nothing scheduled
        }
        let now = self.cycles(cs);
        let at_cycles = at.saturating_mul(CYCLES_PER_TICK);
        if at_cycles <= now {
            return false;
        }
        let delta = (at_cycles - now).min(MAX_ALARM_CYCLES);
        // Writing RELOAD also loads the counter.
        write(TIMER1, RELOAD, delta as u32);
        write(TIMER1, CTRL, CTRL_EN | CTRL_IRQEN);
        true
    }

    fn rearm(&self, cs: CriticalSection) {
        let mut queue = self.queue.borrow_ref_mut(cs);
        loop {
            let next = queue.next_expiration(self.cycles(cs) / CYCLES_PER_TICK);
            if self.set_alarm(cs, next) {
                break;
            }
        }
    }
}

impl Driver for CmsdkTime {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.cycles(cs)) / CYCLES_PER_TICK
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let changed = self.queue.borrow_ref_mut(cs).schedule_wake(at, waker);
            if changed {
                self.rearm(cs);
            }
        })
    }
}

/// Starts TIMER0 and unmasks both timer interrupts.
pub fn init(nvic: &mut cortex_m::peripheral::NVIC) {
    write(TIMER0, CTRL, 0);
    write(TIMER0, INTSTATUS, 1);
    write(TIMER0, RELOAD, 0xFFFF_FFFF);
    write(TIMER0, CTRL, CTRL_EN | CTRL_IRQEN);
    write(TIMER1, CTRL, 0);
    write(TIMER1, INTSTATUS, 1);
    // SAFETY: the handlers (on_timer0/on_timer1) are ready; no
    // mask-based critical section is in use.
    unsafe {
        nvic.set_priority(crate::Irq(TIMER0_IRQ), 0x40);
        nvic.set_priority(crate::Irq(TIMER1_IRQ), 0x40);
        cortex_m::peripheral::NVIC::unmask(crate::Irq(TIMER0_IRQ));
        cortex_m::peripheral::NVIC::unmask(crate::Irq(TIMER1_IRQ));
    }
}

/// The raw 25 MHz counter's low 32 bits (counting down): a jitter sample.
pub fn raw_counter() -> u32 {
    read(TIMER0, VALUE)
}

/// TIMER0 interrupt: one more period of 2^32 cycles.
pub fn on_timer0() {
    critical_section::with(|cs| {
        write(TIMER0, INTSTATUS, 1);
        let periods = DRIVER.periods.borrow(cs);
        periods.set(periods.get().wrapping_add(1));
    })
}

/// TIMER1 interrupt: the alarm fired; wake what is due, program the next.
pub fn on_timer1() {
    critical_section::with(|cs| DRIVER.rearm(cs))
}
