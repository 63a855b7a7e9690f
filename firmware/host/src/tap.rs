//! The gateway on embassy-net (smoltcp) over a Linux TAP device: the firmware's own network stack,
//! on a laptop. Phones are served by a fixed set of listening sockets, as on a board.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{bail, Context, Result};
use edge_nal::TcpBind;
use edge_nal_embassy::{Tcp, TcpBuffers};
use embassy_executor::Spawner;
use embassy_net::{Ipv4Cidr, Runner, StackResources, StaticConfigV4};
use embassy_net_tuntap::TunTapDevice;
use gateway_core::link::LinkBuffers;
use gateway_core::phone::Phones;
use rand_core::{OsRng, RngCore};

use crate::cli::Serve;
use crate::gateway::{link_buffers, Parts};

/// Most phone sockets on the TAP stack (a board has tens).
pub const MAX_SOCKETS: usize = 256;
/// Each phone socket's TCP buffers, as on the QEMU board: phones send a few bytes at a time.
pub const PHONE_TX: usize = 256;
pub const PHONE_RX: usize = 256;
/// Each trunk socket's TCP buffers.
pub const TRUNK_TX: usize = 4096;
pub const TRUNK_RX: usize = 4096;
const STACK_SOCKETS: usize = MAX_SOCKETS + trunk::gateway::MAX_LINKS + 1;

pub fn start(spawner: Spawner, parts: Parts, settings: &Serve) -> Result<()> {
    if settings.tap_sockets == 0 || settings.tap_sockets > MAX_SOCKETS {
        bail!("--tap-sockets must be 1..={MAX_SOCKETS}");
    }
    let (addr, prefix) = settings.tap_address.split_once('/').context("--tap-address is ADDRESS/PREFIX")?;
    let addr: Ipv4Addr = addr.parse().context("--tap-address")?;
    let prefix: u8 = prefix.parse().context("--tap-address prefix")?;
    let device =
        TunTapDevice::new(&settings.tap).with_context(|| format!("opening TAP device {}", settings.tap))?;
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(addr, prefix),
        gateway: None,
        dns_servers: Default::default(),
    });
    let resources = Box::leak(Box::new(StackResources::<STACK_SOCKETS>::new()));
    let (stack, runner) = embassy_net::new(device, config, resources, OsRng.next_u64());
    spawner.spawn(net(runner)?);
    let phone_buffers = Box::leak(Box::new(TcpBuffers::<MAX_SOCKETS, PHONE_TX, PHONE_RX>::new()));
    let trunk_buffers =
        Box::leak(Box::new(TcpBuffers::<{ trunk::gateway::MAX_LINKS }, TRUNK_TX, TRUNK_RX>::new()));
    let phones = Tcp::new(stack, phone_buffers);
    let trunks = Tcp::new(stack, trunk_buffers);
    let port = settings.listen.port();
    tracing::info!(tap = %settings.tap, %addr, port, sockets = settings.tap_sockets, "phones connect to ws://{addr}:{port}/ws?device=ID");
    for _ in 0..settings.tap_sockets {
        spawner.spawn(phone_worker(phones, port, parts.phones)?);
    }
    for link in 0..parts.links {
        spawner.spawn(trunk_link(trunks, parts, link, link_buffers())?);
    }
    Ok(())
}

#[embassy_executor::task]
async fn net(mut runner: Runner<'static, TunTapDevice>) -> ! {
    runner.run().await
}

#[embassy_executor::task(pool_size = MAX_SOCKETS)]
async fn phone_worker(tcp: Tcp<'static>, port: u16, phones: &'static Phones<'static, 'static>) {
    let Ok(acceptor) = tcp.bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)).await else {
        tracing::error!(port, "cannot listen on the TAP stack");
        return;
    };
    gateway_core::phone::worker(&acceptor, phones).await
}

#[embassy_executor::task(pool_size = trunk::gateway::MAX_LINKS)]
async fn trunk_link(tcp: Tcp<'static>, parts: Parts, link: usize, bufs: &'static mut LinkBuffers) {
    gateway_core::link::run(parts.hub, link, &tcp, parts.trunk, bufs, parts.rng).await
}
