//! The gateway on a board: the core's phone workers and trunk links on embassy-net, all of it in
//! static memory, with its budget here in named constants.
//!
//! RAM per phone session, everything counted: its TCP socket buffers ([`PHONE_RX`] +
//! [`PHONE_TX`]), smoltcp's socket, the worker task (the core's `phone::worker` future), the
//! trunk [`SessionSlot`] and a waker. `scripts/firmware.sh ram-per-phone` measures the total
//! by building the image with two values of [`PHONES`]. Shared by all phones, not counted per
//! phone: [`PARSERS`] request parsers, and the [`OVERFLOW`] sockets that answer 503.

use core::cell::RefCell;
use core::net::{Ipv4Addr, SocketAddr};

use edge_nal::TcpBind;
use edge_nal_embassy::{Tcp, TcpAccept, TcpBuffers};
use embassy_executor::Spawner;
use embassy_net::Stack;
use embassy_time::Timer;
use gateway_core::hub::PhoneWaker;
use gateway_core::link::LinkBuffers;
use gateway_core::phone::{DeviceAuth, Phones};
use gateway_core::provision::Provisioning;
use gateway_core::upgrade::RequestParser;
use gateway_core::{Hub, PhoneConfig, TrunkConfig};
use log::{error, info, warn};
use rand_core::RngCore;
use static_cell::{ConstStaticCell, StaticCell};
use trunk::gateway::{GatewayConfig, Identity, SessionSlot};

use crate::rng::Drbg;

/// Phone sessions the board holds (set at build time with `HOLDFAST_PHONES`, default 64).
pub const PHONES: usize = parse(option_env!("HOLDFAST_PHONES"), 64);
/// Phone sockets beyond [`PHONES`]: a phone over capacity is still answered (503), not reset.
pub const OVERFLOW: usize = 2;
/// Trunk links the board can run (a provisioning block may ask for fewer).
pub const LINKS: usize = 2;
/// TCP port phones connect to.
pub const PORT: u16 = 80;
/// Each phone socket's TCP receive buffer (the window the phone may fill): a phone sends a few
/// bytes at a time (a 1-byte message is a 7-byte frame, so 13 fit); its upgrade request
/// (200-500 bytes) streams through in a few windows, read 32 bytes at a time.
pub const PHONE_RX: usize = 96;
/// Each phone socket's TCP send buffer: the gateway sends a phone its 129-byte upgrade answer
/// once (in three pieces, each written as room frees), then frames of at most 34 bytes (durable
/// totals, close) and pongs (a ping's payload, up to 125 bytes, is echoed as it streams).
pub const PHONE_TX: usize = 64;
/// Upgrade requests read at once: each borrows a request parser (360 bytes: a request line
/// with a device token is up to 234 bytes) for the few milliseconds its request takes, instead of
/// every phone carrying one for hours.
pub const PARSERS: usize = 8;
/// Each trunk socket's TCP buffers (TLS records are buffered by embedded-tls, not here).
pub const TRUNK_RX: usize = 2048;
pub const TRUNK_TX: usize = 2048;
/// Sockets the network stack needs: phones, links, and DHCP.
pub const SOCKETS: usize = PHONES + OVERFLOW + LINKS + 1;

const fn parse(value: Option<&str>, default: usize) -> usize {
    let Some(value) = value else { return default };
    let bytes = value.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii_digit(), "HOLDFAST_PHONES must be a number");
        n = n * 10 + (bytes[i] - b'0') as usize;
        i += 1;
    }
    n
}

type PhoneTcp = Tcp<'static>;

/// Runs the gateway for ever; without a valid provisioning block, says so and waits.
pub async fn run(spawner: Spawner, stack: Stack<'static>, rng: Drbg, block: &'static [u8]) -> ! {
    let p = match Provisioning::parse(block) {
        Ok(p) => p,
        Err(e) => loop {
            error!("not provisioned ({e:?}): write a block made by `gateway provision` (firmware/README.md)");
            Timer::after_secs(60).await;
        },
    };
    static RNG: StaticCell<RefCell<Drbg>> = StaticCell::new();
    let rng = RNG.init(RefCell::new(rng));
    let links = usize::from(p.links).clamp(1, LINKS);
    let boot_epoch = rng.borrow_mut().next_u64();

    // Const-initialised cells: large values are placed by the linker, never built on the stack.
    static SLOTS: ConstStaticCell<[SessionSlot; PHONES]> = ConstStaticCell::new([SessionSlot::FREE; PHONES]);
    static WAKERS: ConstStaticCell<[PhoneWaker; PHONES]> = ConstStaticCell::new([const { None }; PHONES]);
    static HUB: StaticCell<Hub<'static>> = StaticCell::new();
    let identity = Identity { gateway_id: p.gateway_id.as_bytes(), secret: p.secret, boot_epoch };
    let slots = SLOTS.take();
    let wakers = WAKERS.take();
    let hub = match Hub::new(GatewayConfig::default(), identity, links, slots, wakers) {
        Ok(hub) => HUB.init(hub),
        Err(e) => loop {
            error!("provisioning block rejected: {e:?}");
            Timer::after_secs(60).await;
        },
    };
    static TRUNK: StaticCell<TrunkConfig<'static>> = StaticCell::new();
    let trunk = TRUNK.init(TrunkConfig::new(p.aggregator, p.server_name, p.ca_der));
    static PHONE_CONFIG: PhoneConfig = PhoneConfig::DEFAULT;
    static PARSER_POOL: ConstStaticCell<[RefCell<RequestParser>; PARSERS]> =
        ConstStaticCell::new([const { RefCell::new(RequestParser::new(0)) }; PARSERS]);
    // Phones prove their device with a token signed by the operator's key, when the block has the
    // key. The board has no clock: the signature and the device are checked, not the expiry.
    static DEVICE_KEY: StaticCell<device_token::PublicKey> = StaticCell::new();
    let auth = match p.device_key.map(|k| device_token::PublicKey::from_bytes(&k)) {
        Some(Ok(key)) => Some(DeviceAuth { key: DEVICE_KEY.init(key), clock: || None }),
        Some(Err(_)) => loop {
            error!("provisioning block rejected: its device key is not an Ed25519 public key");
            Timer::after_secs(60).await;
        },
        None => {
            warn!("no device key provisioned: phones are not asked to prove their device");
            None
        }
    };
    static PHONES_SHARED: StaticCell<Phones<'static, 'static>> = StaticCell::new();
    let phones_shared = PHONES_SHARED.init(Phones::new(hub, &PHONE_CONFIG, auth, PARSER_POOL.take()));

    static TRUNK_BUFFERS: ConstStaticCell<TcpBuffers<LINKS, TRUNK_TX, TRUNK_RX>> =
        ConstStaticCell::new(TcpBuffers::new());
    static LINK_BUFFERS: ConstStaticCell<[LinkBuffers; LINKS]> =
        ConstStaticCell::new([LinkBuffers::NEW; LINKS]);
    let trunks = Tcp::new(stack, TRUNK_BUFFERS.take());
    for (link, bufs) in LINK_BUFFERS.take().iter_mut().enumerate().take(links) {
        spawn(spawner, trunk_link(trunks, hub, link, trunk, bufs, rng));
    }
    static PHONE_BUFFERS: ConstStaticCell<TcpBuffers<{ PHONES + OVERFLOW }, PHONE_TX, PHONE_RX>> =
        ConstStaticCell::new(TcpBuffers::new());
    // One acceptor for all workers (each accept takes a socket of its own from the pool): a
    // worker's task keeps only a reference to it.
    static PHONE_TCP: StaticCell<PhoneTcp> = StaticCell::new();
    static PHONE_ACCEPT: StaticCell<TcpAccept<'static>> = StaticCell::new();
    let phone_tcp: &'static PhoneTcp = PHONE_TCP.init(Tcp::new(stack, PHONE_BUFFERS.take()));
    match phone_tcp.bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), PORT)).await {
        Ok(acceptor) => {
            let acceptor = PHONE_ACCEPT.init(acceptor);
            for _ in 0..PHONES + OVERFLOW {
                spawn(spawner, phone_worker(acceptor, phones_shared));
            }
        }
        Err(_) => error!("cannot listen on port {PORT}"),
    }
    info!(
        "gateway {} up: {} phone sessions on port {PORT}, {links} trunk links to {} ({})",
        p.gateway_id, PHONES, p.aggregator, p.server_name
    );
    loop {
        Timer::after_secs(10).await;
        let (capacity, live, phases) = hub.status();
        let s = hub.stats();
        info!(
            "status: {live}/{capacity} sessions, {} bytes, accepted {} refused {} failed {}, links {:?}",
            s.bytes,
            s.phones_accepted,
            s.phones_refused,
            s.phones_failed,
            &phases[..links]
        );
    }
}

fn spawn<S>(spawner: Spawner, token: Result<embassy_executor::SpawnToken<S>, embassy_executor::SpawnError>) {
    match token {
        Ok(token) => spawner.spawn(token),
        Err(_) => error!("task pool exhausted"),
    }
}

#[embassy_executor::task(pool_size = PHONES + OVERFLOW)]
async fn phone_worker(acceptor: &'static TcpAccept<'static>, phones: &'static Phones<'static, 'static>) {
    gateway_core::phone::worker(acceptor, phones).await
}

#[embassy_executor::task(pool_size = LINKS)]
async fn trunk_link(
    tcp: Tcp<'static>,
    hub: &'static Hub<'static>,
    link: usize,
    config: &'static TrunkConfig<'static>,
    bufs: &'static mut LinkBuffers,
    rng: &'static RefCell<Drbg>,
) {
    gateway_core::link::run(hub, link, &tcp, config, bufs, rng).await
}
