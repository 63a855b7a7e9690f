//! Builds the gateway from its settings and starts it on the chosen stack; status and shutdown.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration as StdDuration;

use anyhow::{bail, Result};
use embassy_executor::Spawner;
use embassy_time::{Duration, Instant, Timer};
use gateway_core::hub::PhoneWaker;
use gateway_core::link::LinkBuffers;
use gateway_core::phone::{DeviceAuth, Phones};
use gateway_core::upgrade::RequestParser;
use gateway_core::{Hub, PhoneConfig, TrunkConfig};
use rand_core::{OsRng, RngCore};
use trunk::gateway::{GatewayConfig, Identity, SessionSlot, MAX_LINKS};

use crate::cli::{PhoneAuth, Serve, StackKind};
use crate::identity::Provisioned;

/// What every task shares, leaked once at start: the gateway lives as long as the process.
#[derive(Debug, Clone, Copy)]
pub struct Parts {
    pub hub: &'static Hub<'static>,
    pub phones: &'static Phones<'static, 'static>,
    pub trunk: &'static TrunkConfig<'static>,
    pub rng: &'static RefCell<OsRng>,
    pub links: usize,
}

/// Upgrade requests read at once (each borrows a parser of about 200 bytes for a few
/// milliseconds; see `gateway_core::phone::Phones`): enough for thousands of phones connecting
/// in the same second.
pub const PARSERS: usize = 256;

/// Set by SIGINT/SIGTERM (from a plain thread); the shutdown task polls it.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn start(spawner: Spawner, settings: &Serve) -> Result<()> {
    let p = Provisioned::resolve(&settings.identity)?;
    if settings.capacity == 0 || settings.capacity > crate::kernel::MAX_PHONE_TASKS - crate::kernel::OVERFLOW
    {
        bail!("--capacity must be 1..={}", crate::kernel::MAX_PHONE_TASKS - crate::kernel::OVERFLOW);
    }
    if settings.stack == StackKind::Tap && settings.phone_tls_cert.is_some() {
        bail!("--phone-tls-cert works with --stack kernel only");
    }
    if p.links == 0 || usize::from(p.links) > MAX_LINKS {
        bail!("--links must be 1..={MAX_LINKS}");
    }
    let gateway_config = GatewayConfig {
        flush_interval: trunk::time::Duration::from_millis(settings.flush_interval_ms),
        ..GatewayConfig::default()
    };
    let slots = Box::leak(vec![SessionSlot::FREE; settings.capacity].into_boxed_slice());
    let wakers: &mut [PhoneWaker] = Box::leak((0..settings.capacity).map(|_| None).collect());
    let identity =
        Identity { gateway_id: p.gateway_id.as_bytes(), secret: &p.secret, boot_epoch: OsRng.next_u64() };
    let hub = Hub::new(gateway_config, identity, usize::from(p.links), slots, wakers)
        .map_err(|e| anyhow::anyhow!("gateway settings: {e}"))?;
    let hub: &'static Hub<'static> = Box::leak(Box::new(hub));
    let phone_config: &'static PhoneConfig = Box::leak(Box::new(PhoneConfig {
        handshake_timeout_ms: settings.handshake_timeout_ms,
        idle_timeout_ms: settings.phone_idle_timeout_ms,
        max_message_len: settings.max_phone_message,
        ..PhoneConfig::default()
    }));
    let parsers = Box::leak((0..PARSERS).map(|_| RefCell::new(RequestParser::new(0))).collect());
    let auth = match (settings.phone_auth, p.device_key) {
        (PhoneAuth::Off, _) => {
            tracing::warn!("--phone-auth off: any phone may count bytes for any device id");
            None
        }
        (PhoneAuth::Required, None) => bail!(
            "phones must prove their device: give --device-public-key (the output of `aggregator device \
             public-key`), or --phone-auth off on a trusted test network"
        ),
        (PhoneAuth::Required, Some(key)) => {
            let key = device_token::PublicKey::from_bytes(&key)
                .map_err(|_| anyhow::anyhow!("the device public key is not an Ed25519 key"))?;
            Some(DeviceAuth { key: Box::leak(Box::new(key)), clock: unix_now })
        }
    };
    let parts = Parts {
        hub,
        phones: Box::leak(Box::new(Phones::new(hub, phone_config, auth, parsers))),
        trunk: Box::leak(Box::new(TrunkConfig::new(
            p.aggregator,
            String::leak(p.server_name.clone()),
            Vec::leak(p.ca_der.clone()),
        ))),
        rng: Box::leak(Box::new(RefCell::new(OsRng))),
        links: usize::from(p.links),
    };
    tracing::info!(
        gateway = %p.gateway_id, aggregator = %p.aggregator, links = p.links, capacity = settings.capacity,
        stack = ?settings.stack, "gateway starting"
    );
    tracing::debug!(
        session_slot = size_of::<SessionSlot>(),
        waker = size_of::<PhoneWaker>(),
        link_buffers = size_of::<LinkBuffers>(),
        "memory per phone session (trunk side) and per link"
    );
    match settings.stack {
        StackKind::Kernel => crate::kernel::start(spawner, parts, settings)?,
        StackKind::Tap => crate::tap::start(spawner, parts, settings)?,
    }
    watch_signals();
    spawner.spawn(status(parts.hub, settings.status_interval_s)?);
    spawner.spawn(shutdown(parts.hub)?);
    Ok(())
}

/// Now in Unix seconds: the host knows the time, so a token's expiry is checked.
fn unix_now() -> Option<u64> {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// One heap-allocated set of link buffers (41 KiB each).
pub fn link_buffers() -> &'static mut LinkBuffers {
    Box::leak(Box::new(LinkBuffers::NEW))
}

fn watch_signals() {
    // A blocking thread: the executor stays free of OS details; the flag is polled below.
    std::thread::spawn(|| {
        let mut signals =
            signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])
                .expect("signal handlers");
        if signals.forever().next().is_some() {
            STOP.store(true, Ordering::SeqCst);
        }
    });
}

/// On SIGINT/SIGTERM: refuse new phones, close every phone with 1001, wait (up to 5 s) until the
/// aggregator acknowledged every session's last count, then exit 0.
#[embassy_executor::task]
async fn shutdown(hub: &'static Hub<'static>) {
    while !STOP.load(Ordering::SeqCst) {
        Timer::after_millis(100).await;
    }
    tracing::info!("shutting down: closing phones, flushing counts");
    hub.stop();
    let give_up = Instant::now() + Duration::from_secs(5);
    while hub.status().1 > 0 && Instant::now() < give_up {
        Timer::after_millis(50).await;
    }
    let (_, live, _) = hub.status();
    tracing::info!(unacknowledged_sessions = live, "gateway stopped");
    std::thread::sleep(StdDuration::from_millis(10));
    std::process::exit(0);
}

#[embassy_executor::task]
async fn status(hub: &'static Hub<'static>, every_s: u64) {
    if every_s == 0 {
        return;
    }
    loop {
        Timer::after_secs(every_s).await;
        let (capacity, live, phases) = hub.status();
        let s = hub.stats();
        let links = &phases[..hub.link_count()];
        tracing::info!(
            live,
            capacity,
            accepted = s.phones_accepted,
            refused = s.phones_refused,
            failed = s.phones_failed,
            bytes = s.bytes,
            links_up = s.links_up,
            ?links,
            "status"
        );
    }
}
