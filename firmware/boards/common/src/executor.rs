//! A thread-mode executor that sleeps with WFI, used by every board.
//!
//! embassy-executor's own Cortex-M executor (feature `platform-cortex-m`)
//! sleeps with WFE. QEMU does not halt on WFE (it treats it as a hint and
//! returns at once), so an idle emulated board would keep a host core busy.
//! WFI halts QEMU's vCPU until an interrupt, and works the same on silicon
//! (STM32: sleep mode). The usual race is closed by checking for work with
//! interrupts masked: WFI still wakes on an interrupt that becomes pending
//! while PRIMASK is set.
//!
//! This module defines embassy-executor's `__pender`, so no package of this
//! workspace may enable an embassy-executor `platform-*` feature (cargo
//! would unify it into every board and the symbol would be defined twice).

use core::sync::atomic::{AtomicBool, Ordering};

use embassy_executor::{raw, Spawner};
use static_cell::StaticCell;

/// Set by the pender (any context), cleared before each poll.
static WORK: AtomicBool = AtomicBool::new(true);
static EXECUTOR: StaticCell<raw::Executor> = StaticCell::new();

#[unsafe(export_name = "__pender")]
fn pender(_context: *mut ()) {
    WORK.store(true, Ordering::Release);
}

/// Creates the executor, lets `init` spawn the first tasks, and polls
/// forever.
pub fn run(init: impl FnOnce(Spawner)) -> ! {
    let executor: &'static raw::Executor = EXECUTOR.init(raw::Executor::new(core::ptr::null_mut()));
    init(executor.spawner());
    loop {
        WORK.store(false, Ordering::Release);
        // SAFETY: poll is only ever called from this loop, never reentrantly.
        unsafe { executor.poll() };
        cortex_m::interrupt::disable();
        if !WORK.load(Ordering::Acquire) {
            cortex_m::asm::wfi();
        }
        // SAFETY: interrupts were enabled before this loop's disable().
        unsafe { cortex_m::interrupt::enable() };
    }
}
