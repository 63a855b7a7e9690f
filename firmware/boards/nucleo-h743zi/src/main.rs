//! holdfast gateway firmware for the ST NUCLEO-H743ZI (STM32H743ZI,
//! Cortex-M7F) with its on-board Ethernet (RMII, LAN8742A PHY).
//!
//! Boot: RTT log, the WFI executor (board_common::executor); then, in the
//! `boot` task, clocks (HSI -> PLL1, 400 MHz core; HSI48 for the RNG) and
//! embassy-stm32's time driver; then the hardware RNG, the
//! Ethernet MAC + PHY, embassy-net with DHCPv4, and `app::app`, the seam
//! where the gateway core plugs in.
//!
//! Only built here (no board attached): `scripts/firmware.sh build`. Flash
//! and run with `cargo run --release` in this folder (probe-rs).
#![no_std]
#![no_main]

mod app;

use core::cell::RefCell;

use board_common::rng::Drbg;
use critical_section::Mutex;
use embassy_executor::Spawner;
use embassy_net::StackResources;
use embassy_stm32::eth::{Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::peripherals::{ETH, ETH_SMA, RNG};
use embassy_stm32::rng::{self, Rng};
use embassy_stm32::{bind_interrupts, eth, Config};
use log::{error, info};
use rand_core::RngCore;
use static_cell::StaticCell;

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    RNG => rng::InterruptHandler<RNG>;
});

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

/// Ethernet DMA descriptors and buffers: 4 transmit and 4 receive frames.
const TX_FRAMES: usize = 4;
const RX_FRAMES: usize = 4;
/// Log level (the `log` crate's), fixed at build time.
const LOG_LEVEL: log::LevelFilter = log::LevelFilter::Info;

/// The hardware RNG, shared by the seed and the Drbg's refresh.
static HW_RNG: Mutex<RefCell<Option<Rng<'static, RNG>>>> = Mutex::new(RefCell::new(None));

#[cortex_m_rt::entry]
fn main() -> ! {
    rtt_target::rtt_init_log!(LOG_LEVEL);
    board_common::executor::run(|spawner| match boot(spawner) {
        Ok(token) => spawner.spawn(token),
        Err(_) => fatal("cannot spawn the boot task"),
    })
}

#[embassy_executor::task]
async fn boot(spawner: Spawner) {
    let p = embassy_stm32::init(clocks());
    info!("holdfast gateway, board nucleo-h743zi, firmware {}", env!("CARGO_PKG_VERSION"));
    let provisioning = board_common::provisioning::block();
    board_common::provisioning::log_summary(provisioning);

    let mut hw = Rng::new(p.RNG, Irqs);
    let mut seed = [0u8; 32];
    hw.fill_bytes(&mut seed);
    critical_section::with(|cs| HW_RNG.borrow_ref_mut(cs).replace(hw));
    let mut rng = Drbg::new(&[b"nucleo-h743zi", &seed, provisioning], Some(hw_entropy));

    let mac = mac_address();
    info!("MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    static PACKETS: StaticCell<PacketQueue<TX_FRAMES, RX_FRAMES>> = StaticCell::new();
    // NUCLEO-H743ZI RMII wiring (UM2407): REF_CLK PA1, CRS_DV PA7, RXD0 PC4,
    // RXD1 PC5, TXD0 PG13, TXD1 PB13, TX_EN PG11; MDIO PA2, MDC PC1.
    let device: Device = Ethernet::new(
        PACKETS.init(PacketQueue::new()),
        p.ETH,
        Irqs,
        p.PA1,
        p.PA7,
        p.PC4,
        p.PC5,
        p.PG13,
        p.PB13,
        p.PG11,
        mac,
        p.ETH_SMA,
        p.PA2,
        p.PC1,
    );

    static RESOURCES: StaticCell<StackResources<{ app::SOCKETS }>> = StaticCell::new();
    let config = embassy_net::Config::dhcpv4(Default::default());
    let (stack, runner) =
        embassy_net::new(device, config, RESOURCES.init(StackResources::new()), rng.next_u64());
    match net_task(runner) {
        Ok(token) => spawner.spawn(token),
        Err(_) => fatal("cannot spawn the network task"),
    }

    info!("waiting for DHCP");
    stack.wait_config_up().await;
    if let Some(cfg) = stack.config_v4() {
        info!("IPv4 {} (gateway {:?})", cfg.address, cfg.gateway);
    }
    app::app(spawner, stack, rng, provisioning).await
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, Device>) -> ! {
    runner.run().await
}

/// 400 MHz from the 64 MHz HSI (HSI / 4 * 50 / 2), buses at 200/100 MHz;
/// HSI48 feeds the RNG. The HSI is good enough for RMII: the 50 MHz
/// reference clock comes from the PHY.
fn clocks() -> Config {
    use embassy_stm32::rcc::{
        AHBPrescaler, APBPrescaler, HSIPrescaler, Pll, PllDiv, PllMul, PllPreDiv, PllSource, Sysclk,
        VoltageScale,
    };
    let mut config = Config::default();
    let rcc = &mut config.rcc;
    rcc.hsi = Some(HSIPrescaler::DIV1);
    rcc.csi = true;
    rcc.hsi48 = Some(Default::default());
    rcc.pll1 = Some(Pll {
        source: PllSource::HSI,
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL50,
        fracn: None,
        divp: Some(PllDiv::DIV2),
        divq: None,
        divr: None,
    });
    rcc.sys = Sysclk::PLL1_P;
    rcc.ahb_pre = AHBPrescaler::DIV2;
    rcc.apb1_pre = APBPrescaler::DIV2;
    rcc.apb2_pre = APBPrescaler::DIV2;
    rcc.apb3_pre = APBPrescaler::DIV2;
    rcc.apb4_pre = APBPrescaler::DIV2;
    rcc.voltage_scale = VoltageScale::Scale1;
    config
}

/// A locally administered unicast MAC address derived from the chip's
/// 96-bit unique ID: stable per board, unique in practice, no provisioning
/// needed.
fn mac_address() -> [u8; 6] {
    let uid = embassy_stm32::uid::uid();
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, b) in uid.iter().enumerate() {
        mac[1 + i % 5] ^= b.rotate_left(i as u32);
    }
    mac
}

/// The Drbg's entropy source: 32 fresh bytes from the hardware RNG.
fn hw_entropy(out: &mut [u8; 32]) -> bool {
    critical_section::with(|cs| match HW_RNG.borrow_ref_mut(cs).as_mut() {
        Some(rng) => {
            rng.fill_bytes(out);
            true
        }
        None => false,
    })
}

fn fatal(msg: &str) -> ! {
    error!("FATAL: {}", msg);
    halt_or_reset()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    error!("panic: {}", info);
    halt_or_reset()
}

/// With a debugger attached (probe-rs), stop at a breakpoint so the log and
/// the state can be read; without one, reset the board.
fn halt_or_reset() -> ! {
    const DHCSR: *const u32 = 0xE000_EDF0 as *const u32;
    const C_DEBUGEN: u32 = 1 << 0;
    // SAFETY: DHCSR is an architectural, always-readable debug register.
    let debugger = unsafe { core::ptr::read_volatile(DHCSR) } & C_DEBUGEN != 0;
    if debugger {
        loop {
            cortex_m::asm::bkpt();
        }
    }
    cortex_m::peripheral::SCB::sys_reset()
}
