//! Log output on CMSDK APB UART0 (0x4000_4000), which QEMU connects to its
//! first serial port: `-nographic` or `-serial stdio` prints it on the
//! terminal. Chosen over semihosting because it costs no debug trap per
//! write and exists on the real MPS2 board too; semihosting is only used to
//! end QEMU with an exit status (see main.rs).

use core::fmt::{self, Write};
use core::ptr::{read_volatile, write_volatile};

use embassy_time::Instant;

const UART0: usize = 0x4000_4000;
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const CTRL_TX_EN: u32 = 1 << 0;
/// 25 MHz / 217 = 115200 baud (QEMU ignores the rate; the board does not).
const BAUD_DIV: u32 = 217;
/// Bounded wait for room in the TX buffer, so a stuck UART cannot hang the
/// firmware: output is dropped instead.
const TX_SPINS: u32 = 100_000;

/// UART0 as a `core::fmt::Write` sink.
pub struct Uart0;

impl Uart0 {
    /// Enables the transmitter.
    pub fn init() {
        // SAFETY: UART0's documented registers; only this module touches them.
        unsafe {
            write_volatile((UART0 + BAUDDIV) as *mut u32, BAUD_DIV);
            write_volatile((UART0 + CTRL) as *mut u32, CTRL_TX_EN);
        }
    }

    fn put(byte: u8) {
        // SAFETY: as in `init`.
        unsafe {
            for _ in 0..TX_SPINS {
                if read_volatile((UART0 + STATE) as *const u32) & STATE_TX_FULL == 0 {
                    write_volatile((UART0 + DATA) as *mut u32, u32::from(byte));
                    return;
                }
            }
        }
    }
}

impl Write for Uart0 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                Self::put(b'\r');
            }
            Self::put(b);
        }
        Ok(())
    }
}

/// `log` backend: one line per record, with the time since boot.
pub struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let us = Instant::now().as_micros();
        // One record at a time, even if an interrupt handler logs.
        critical_section::with(|_| {
            let _ = writeln!(
                Uart0,
                "[{:>5}.{:06} {:<5} {}] {}",
                us / 1_000_000,
                us % 1_000_000,
                record.level(),
                record.target(),
                record.args()
            );
        });
    }

    fn flush(&self) {}
}
