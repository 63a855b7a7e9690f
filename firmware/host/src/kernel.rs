//! The gateway on the kernel's TCP (the host runtime's sockets, `host_runtime::net`): one task per
//! phone, for scale.

use std::net::SocketAddr;
use std::sync::Arc;

use ::gateway::tls::TlsSocket;
use address_limits::{AddressLimits, Slot};
use anyhow::{Context as _, Result};
use edge_nal::{TcpAccept, TcpBind};
use embassy_executor::Spawner;
use embassy_time::Timer;
use gateway_core::link::LinkBuffers;
use gateway_core::phone::Phones;
use host_runtime::net::{Stack, TcpSocket};
use host_runtime::tasks::TaskPool;

use crate::cli::Serve;
use crate::gateway::{link_buffers, Parts};

/// Phone tasks this process can hold: the open-file limit of these machines (20,000), since each
/// phone is a socket. Allocated in chunks as phones first need them.
pub const MAX_PHONE_TASKS: usize = 20_000;
/// Tasks kept beyond --capacity to answer 503 to phones over capacity.
pub const OVERFLOW: usize = 64;

pub fn start(spawner: Spawner, parts: Parts, settings: &Serve) -> Result<()> {
    let listener = std::net::TcpListener::bind(settings.listen)?;
    drop(listener); // only a check that the address is free, with a clear error before starting
    let tls = match (&settings.phone_tls_cert, &settings.phone_tls_key) {
        (Some(cert), Some(key)) => Some(tls_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    tracing::info!(listen = %settings.listen, "phones connect to {scheme}://{}/ws?device=ID&token=T", settings.listen);
    // A phone is a session once accepted here (its token is checked by the core as its request
    // is read, within --handshake-timeout-ms): only the bound on connections applies.
    let limits = AddressLimits::new(address_limits::Bounds {
        connections: settings.max_connections_per_address,
        handshakes: u32::MAX,
        exempt: settings.address_limit_exempt.clone(),
    });
    spawner.spawn(acceptor(spawner, settings.listen, parts.phones, tls, limits)?);
    for link in 0..parts.links {
        spawner.spawn(trunk_link(parts, link, link_buffers())?);
    }
    Ok(())
}

/// TLS 1.3 only, with the certificate chain and key the gateway was given (PEM files).
fn tls_config(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--phone-tls-cert {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("--phone-tls-key {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the phones' certificate and key")?;
    Ok(Arc::new(config))
}

#[embassy_executor::task]
async fn acceptor(
    spawner: Spawner,
    listen: SocketAddr,
    phones: &'static Phones<'static, 'static>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Arc<AddressLimits>,
) {
    let stack = Stack;
    let acceptor = match stack.bind(listen).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(%listen, error = %e, "cannot listen for phones");
            std::process::exit(1);
        }
    };
    // Pools that find a free task without trying every busy one first (`host_runtime::tasks`); their
    // tasks are allocated as phones first need them.
    let plain = TaskPool::new(MAX_PHONE_TASKS);
    let secure = TaskPool::new(MAX_PHONE_TASKS);
    loop {
        match acceptor.accept().await {
            Ok((peer, socket)) => {
                let slot = match limits.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        tracing::debug!(%peer, "phone refused: {refusal}");
                        continue; // the socket is closed as it drops
                    }
                };
                let spawned = match &tls {
                    None => plain.spawn(|| phone(socket, phones, slot)).map(|token| spawner.spawn(token)),
                    Some(config) => match TlsSocket::new(socket, config.clone()) {
                        Ok(socket) => {
                            secure.spawn(|| tls_phone(socket, phones, slot)).map(|token| spawner.spawn(token))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "TLS for a phone failed");
                            continue;
                        }
                    },
                };
                if spawned.is_err() {
                    tracing::warn!("no phone task free: connection dropped");
                }
            }
            Err(e) => {
                // Out of file descriptors, most likely: wait for phones to leave.
                tracing::warn!(error = %e, "accept failed");
                Timer::after_millis(100).await;
            }
        }
    }
}

/// `_slot`: the connection's place under its address's bound, given back as the task ends.
async fn phone(mut socket: TcpSocket, phones: &'static Phones<'static, 'static>, _slot: Slot) {
    let outcome = gateway_core::phone::serve(&mut socket, phones).await;
    tracing::debug!(?outcome, "phone connection ended");
}

/// A phone over TLS (`--phone-tls-cert`): the same core, over [`TlsSocket`]. A pool of its own,
/// as the task's type differs.
async fn tls_phone(mut socket: TlsSocket, phones: &'static Phones<'static, 'static>, _slot: Slot) {
    let outcome = gateway_core::phone::serve(&mut socket, phones).await;
    tracing::debug!(?outcome, "phone connection (TLS) ended");
}

#[embassy_executor::task(pool_size = trunk::gateway::MAX_LINKS)]
async fn trunk_link(parts: Parts, link: usize, bufs: &'static mut LinkBuffers) {
    let stack = Stack;
    gateway_core::link::run(parts.hub, link, &stack, parts.trunk, bufs, parts.rng).await
}
