//! The gateway on the kernel's TCP (the host runtime's sockets, `runtime::net`): one task per
//! phone, for scale.

use std::net::SocketAddr;

use ::gateway::runtime::net::{Stack, TcpSocket};
use anyhow::Result;
use edge_nal::{TcpAccept, TcpBind};
use embassy_executor::Spawner;
use embassy_time::Timer;
use gateway_core::link::LinkBuffers;
use gateway_core::phone::Phones;

use crate::cli::Serve;
use crate::gateway::{link_buffers, Parts};

/// Phone tasks this process can hold: the open-file limit of these machines (20,000), since each
/// phone is a socket. Their memory is reserved but untouched until used.
pub const MAX_PHONE_TASKS: usize = 20_000;
/// Tasks kept beyond --capacity to answer 503 to phones over capacity.
pub const OVERFLOW: usize = 64;

pub fn start(spawner: Spawner, parts: Parts, settings: &Serve) -> Result<()> {
    let listener = std::net::TcpListener::bind(settings.listen)?;
    tracing::info!(listen = %settings.listen, "phones connect to ws://{}/ws?device=ID", settings.listen);
    drop(listener); // only a check that the address is free, with a clear error before starting
    spawner.spawn(acceptor(spawner, settings.listen, parts.phones)?);
    for link in 0..parts.links {
        spawner.spawn(trunk_link(parts, link, link_buffers())?);
    }
    Ok(())
}

#[embassy_executor::task]
async fn acceptor(spawner: Spawner, listen: SocketAddr, phones: &'static Phones<'static, 'static>) {
    let stack = Stack;
    let acceptor = match stack.bind(listen).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot listen for phones");
            std::process::exit(1);
        }
    };
    loop {
        match acceptor.accept().await {
            Ok((_, socket)) => match phone(socket, phones) {
                Ok(token) => spawner.spawn(token),
                Err(_) => tracing::warn!("no phone task free: connection dropped"),
            },
            Err(e) => {
                // Out of file descriptors, most likely: wait for phones to leave.
                tracing::warn!(error = %e, "accept failed");
                Timer::after_millis(100).await;
            }
        }
    }
}

#[embassy_executor::task(pool_size = MAX_PHONE_TASKS)]
async fn phone(mut socket: TcpSocket, phones: &'static Phones<'static, 'static>) {
    let outcome = gateway_core::phone::serve(&mut socket, phones).await;
    tracing::debug!(?outcome, "phone connection ended");
}

#[embassy_executor::task(pool_size = trunk::gateway::MAX_LINKS)]
async fn trunk_link(parts: Parts, link: usize, bufs: &'static mut LinkBuffers) {
    let stack = Stack;
    gateway_core::link::run(parts.hub, link, &stack, parts.trunk, bufs, parts.rng).await
}
