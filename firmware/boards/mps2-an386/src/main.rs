//! holdfast gateway firmware for the Arm MPS2 board with the AN386 image
//! (Cortex-M4F), as QEMU emulates it: `qemu-system-arm -M mps2-an386`.
//!
//! Boot: UART0 log, timers (time.rs), the WFI executor (board_common::executor); then,
//! in the `boot` task, the LAN9118 Ethernet controller (IRQ 13), the RNG
//! (emulator-only entropy, see `board_common::entropy`), embassy-net with
//! DHCPv4, and finally `app::app`, the seam where the gateway core plugs in.
//!
//! A panic or a fault prints on UART0 and ends QEMU with exit status 1
//! through semihosting (QEMU runs with `-semihosting-config enable=on`).
#![no_std]
#![no_main]

mod app;
mod time;
mod uart;
mod vectors;

use board_common::entropy::JitterPool;
use board_common::rng::Drbg;
use cortex_m::interrupt::InterruptNumber;
use cortex_m_rt::{entry, exception, ExceptionFrame};
use embassy_executor::Spawner;
use embassy_net::{Stack, StackResources};
use embassy_net_lan9118::Lan9118;
use log::{error, info};
use rand_core::RngCore;
use static_cell::StaticCell;

/// The LAN9118's registers on mps2-an385/an386 (its IRQ: vectors::ETHERNET_IRQ).
const LAN9118_BASE: usize = 0x4020_0000;
/// Log level (the `log` crate's), fixed at build time.
const LOG_LEVEL: log::LevelFilter = log::LevelFilter::Info;

/// Timer samples taken in the Ethernet interrupt handler (emulator entropy).
static JITTER: JitterPool = JitterPool::new();
static LOGGER: uart::Logger = uart::Logger;

/// An external interrupt number of this board, for the NVIC.
#[derive(Clone, Copy)]
pub struct Irq(pub u16);

// SAFETY: the numbers used are this board's (0..32), as InterruptNumber asks.
unsafe impl InterruptNumber for Irq {
    fn number(self) -> u16 {
        self.0
    }
}

#[entry]
fn main() -> ! {
    uart::Uart0::init();
    // set_logger fails only if called twice; this is the only call.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(LOG_LEVEL);

    let Some(mut core) = cortex_m::Peripherals::take() else { fatal("core peripherals taken twice") };
    time::init(&mut core.NVIC);
    info!("holdfast gateway, board mps2-an386, firmware {}", env!("CARGO_PKG_VERSION"));

    board_common::executor::run(|spawner| match boot(spawner) {
        Ok(token) => spawner.spawn(token),
        Err(_) => fatal("cannot spawn the boot task"),
    })
}

#[embassy_executor::task]
async fn boot(spawner: Spawner) {
    let provisioning = board_common::provisioning::block();
    board_common::provisioning::log_summary(provisioning);

    // SAFETY: LAN9118_BASE is the controller's register block; nothing else
    // uses it.
    let eth = match unsafe { Lan9118::new(LAN9118_BASE, None) } {
        Ok(eth) => eth,
        Err(e) => fatal_fmt(format_args!("LAN9118: {:?}", e)),
    };
    let mac = eth.mac_address();
    info!(
        "LAN9118 up, MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    // SAFETY: ETHERNET (below) is ready; unmasking cannot break a critical section
    // (critical sections here mask all interrupts with PRIMASK).
    unsafe { cortex_m::peripheral::NVIC::unmask(Irq(vectors::ETHERNET_IRQ)) };

    // Emulator-only entropy: the provisioning block (per-device secrets once
    // provisioned), the MAC, and the timer; more jitter is mixed in later.
    let now = time::raw_counter().to_le_bytes();
    let mut rng = Drbg::new(&[b"mps2-an386", provisioning, &mac, &now], Some(take_jitter));

    static RESOURCES: StaticCell<StackResources<{ app::SOCKETS }>> = StaticCell::new();
    let config = embassy_net::Config::dhcpv4(Default::default());
    let (stack, runner) =
        embassy_net::new(eth, config, RESOURCES.init(StackResources::new()), rng.next_u64());
    match net_task(runner) {
        Ok(token) => spawner.spawn(token),
        Err(_) => fatal("cannot spawn the network task"),
    }

    stack.wait_config_up().await;
    log_config(stack);
    // By now the DHCP exchange has fed the pool with arrival times.
    info!("entropy: {} timer samples from network interrupts", JITTER.samples());
    rng.mix(&time::raw_counter().to_le_bytes());

    app::app(spawner, stack, rng, provisioning).await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Lan9118>) -> ! {
    runner.run().await
}

fn log_config(stack: Stack<'static>) {
    if let Some(cfg) = stack.config_v4() {
        info!("IPv4 {} (gateway {:?})", cfg.address, cfg.gateway);
    }
}

/// The Drbg's entropy source: fresh jitter samples, if any arrived.
fn take_jitter(out: &mut [u8; 32]) -> bool {
    JITTER.take(out)
}

#[unsafe(no_mangle)]
extern "C" fn TIMER0() {
    time::on_timer0();
}

#[unsafe(no_mangle)]
extern "C" fn TIMER1() {
    time::on_timer1();
}

#[unsafe(no_mangle)]
extern "C" fn ETHERNET() {
    JITTER.feed(time::raw_counter());
    // SAFETY: LAN9118_BASE is the controller's register block.
    unsafe { embassy_net_lan9118::on_interrupt(LAN9118_BASE) };
}

/// Any other exception or interrupt: none is enabled, so this is a bug.
#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    fatal_fmt(format_args!("unexpected exception or interrupt {}", irqn))
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    fatal_fmt(format_args!("hard fault at pc {:#010x}", frame.pc()))
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    fatal_fmt(format_args!("panic: {}", info))
}

fn fatal(msg: &str) -> ! {
    fatal_fmt(format_args!("{}", msg))
}

/// Prints the reason and ends QEMU with exit status 1 (semihosting).
fn fatal_fmt(args: core::fmt::Arguments) -> ! {
    cortex_m::interrupt::disable();
    error!("FATAL: {}", args);
    loop {
        cortex_m_semihosting::debug::exit(cortex_m_semihosting::debug::EXIT_FAILURE);
    }
}
