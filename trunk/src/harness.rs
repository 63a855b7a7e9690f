//! A test harness (feature `harness`, needs `std`): a gateway and the aggregator's end of its
//! links joined in memory, in simulated time, in the manner of quinn-proto's `Pair`.
//!
//! [`Pair`] owns a [`Gateway`], one [`ServerLink`] per gateway link, a [`Ledger`] and the clock
//! ([`Pair::now`], moved only by [`Pair::advance`]). Messages travel at once and in order;
//! [`Pair::drive`] passes them both ways until both ends are quiet, and [`Pair::commit`] plays
//! the aggregator's database commit (every row lands) and sends the acknowledgements. Tests that
//! need a rougher network (drops, races, crashes: `tests/support/sim.rs`) drive the parts
//! themselves, with [`bring_up`], [`transmit_all`] and [`Rng`] from here.
//!
//! Used by trunk's tests, benchmarks and examples, and by the fuzz crate's tests.

extern crate std;

use std::vec;
use std::vec::Vec;

use crate::frame::NONCE_LEN;
use crate::gateway::{Gateway, GatewayConfig, Identity, LinkPhase, SessionSlot};
use crate::ledger::{Ledger, LedgerSlot, SessionKey};
use crate::server::{self, Handshake, HandshakeError, Received, ServerConfig, ServerLink};
use crate::time::{Duration, Instant};

/// The gateway id a [`Pair`]'s gateway has.
pub const GATEWAY_ID: &[u8] = b"site-7";
/// The secret a [`Pair`]'s gateway has, and its aggregator knows.
pub const SECRET: &[u8] = b"correct horse battery staple";
/// A [`Pair`]'s gateway's boot epoch.
pub const BOOT_EPOCH: u64 = 77;
/// The aggregator's number for a [`Pair`]'s gateway ([`SessionKey::gateway`]).
pub const GATEWAY_NUMBER: u32 = 7;
/// Buffer size for one message: larger than any a default configuration sends.
pub const BUF: usize = 64 * 1024;

/// xorshift64*: a small deterministic generator, so that a failing seed can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator for `seed` (any value; zero is avoided).
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A fresh nonce.
    pub fn nonce(&mut self) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[..8].copy_from_slice(&self.next().to_le_bytes());
        n[8..].copy_from_slice(&self.next().to_le_bytes());
        n
    }
}

/// Runs link `link`'s handshake at `now` with trunk's own server end: the gateway connects, is
/// challenged and says Hello, and the server checks it against `server_secret` (`None`: the
/// gateway is unknown). The Welcome is not yet delivered: see [`bring_up`].
pub fn handshake<S: AsRef<[SessionSlot]> + AsMut<[SessionSlot]>>(
    gw: &mut Gateway<S>,
    link: usize,
    now: Instant,
    server_secret: Option<&[u8]>,
    config: &ServerConfig,
) -> Result<ServerLink, HandshakeError> {
    let mut buf = vec![0u8; 1024];
    gw.connected(link, now, [0xa0 ^ link as u8; NONCE_LEN]);
    let hs = Handshake::new([0xc0; NONCE_LEN], now);
    let n = hs.challenge(&mut buf).expect("a challenge fits");
    gw.handle_message(link, &buf[..n], now).expect("the gateway takes a challenge");
    let n = gw.poll_transmit(link, now, &mut buf).expect("a hello").expect("a hello");
    let hello = hs.hello(&buf[..n], config)?;
    hs.verify(&hello, server_secret, GATEWAY_NUMBER, now)
}

/// Brings link `link` up at `now`: [`handshake`] with the right `secret`, then the Welcome
/// delivered. Returns the server's end of the link. Panics if anything fails.
pub fn bring_up<S: AsRef<[SessionSlot]> + AsMut<[SessionSlot]>>(
    gw: &mut Gateway<S>,
    link: usize,
    now: Instant,
    secret: &[u8],
    config: &ServerConfig,
) -> ServerLink {
    let mut server = handshake(gw, link, now, Some(secret), config).expect("the secret verifies");
    let mut buf = vec![0u8; 1024];
    let n = server.poll_transmit(now, config, &mut buf).expect("not idle").expect("a welcome");
    gw.handle_message(link, &buf[..n], now).expect("the gateway takes its welcome");
    assert_eq!(gw.link_phase(link), LinkPhase::Up);
    server
}

/// Calls [`Gateway::poll_transmit`] on `link` until it has nothing more, giving each message to
/// `each`; returns how many there were. Panics on a link error.
pub fn transmit_all<S: AsRef<[SessionSlot]> + AsMut<[SessionSlot]>>(
    gw: &mut Gateway<S>,
    link: usize,
    now: Instant,
    out: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> usize {
    let mut messages = 0;
    while let Some(n) = gw.poll_transmit(link, now, out).expect("the link stays up") {
        each(&out[..n]);
        messages += 1;
    }
    messages
}

/// A gateway and the aggregator's end of its links, joined in memory; see the module
/// documentation.
#[derive(Debug)]
pub struct Pair {
    /// The simulated time.
    pub now: Instant,
    /// The gateway ([`GATEWAY_ID`], [`SECRET`], [`BOOT_EPOCH`]).
    pub gateway: Gateway<Vec<SessionSlot>>,
    /// The aggregator's configuration of its link ends.
    pub server_config: ServerConfig,
    /// The aggregator's end of each gateway link, once [`Pair::connect`] brought it up. Its
    /// route in the ledger is the link's index.
    pub servers: Vec<Option<ServerLink>>,
    /// The aggregator's ledger.
    pub ledger: Ledger<Vec<LedgerSlot>>,
    buf: Vec<u8>,
}

impl Pair {
    /// A gateway with `links` links (all down) and `sessions` session slots, a ledger of 1,024
    /// slots, the clock at 1 s.
    pub fn new(config: GatewayConfig, links: usize, sessions: usize) -> Self {
        Self::with_server_config(config, ServerConfig::default(), links, sessions)
    }

    /// [`Pair::new`] with the aggregator's link configuration.
    pub fn with_server_config(
        config: GatewayConfig,
        server_config: ServerConfig,
        links: usize,
        sessions: usize,
    ) -> Self {
        let identity = Identity { gateway_id: GATEWAY_ID, secret: SECRET, boot_epoch: BOOT_EPOCH };
        let gateway = Gateway::new(config, identity, links, vec![SessionSlot::FREE; sessions])
            .expect("a valid gateway");
        Self {
            now: Instant::from_secs(1),
            gateway,
            server_config,
            servers: (0..links).map(|_| None).collect(),
            ledger: Ledger::new(vec![LedgerSlot::EMPTY; 1024], 0x5eed),
            buf: vec![0u8; BUF],
        }
    }

    /// Moves the clock on.
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Brings link `link` up (see [`bring_up`]).
    pub fn connect(&mut self, link: usize) {
        let server = bring_up(&mut self.gateway, link, self.now, SECRET, &self.server_config);
        self.servers[link] = Some(server);
    }

    /// Brings every link up.
    pub fn connect_all(&mut self) {
        for link in 0..self.servers.len() {
            self.connect(link);
        }
    }

    /// Closes link `link` at both ends (a reset).
    pub fn disconnect(&mut self, link: usize) {
        self.servers[link] = None;
        self.gateway.disconnected(link, self.now);
    }

    /// The ledger key of a gateway session.
    pub fn key(&self, session: crate::gateway::SessionId) -> SessionKey {
        SessionKey { gateway: GATEWAY_NUMBER, boot_epoch: BOOT_EPOCH, session: session.0 }
    }

    /// Everything the gateway sends on `link` now, delivered to the server's end; returns what
    /// the messages carried. Panics if either end finds fault.
    pub fn send_to_server(&mut self, link: usize) -> Received {
        let mut messages = Vec::new();
        transmit_all(&mut self.gateway, link, self.now, &mut self.buf, |m| messages.push(m.to_vec()));
        let mut total = Received::default();
        let Some(server) = self.servers[link].as_mut() else { return total };
        for m in messages {
            let r = server
                .handle_message(&m, self.now, &self.server_config, &mut self.ledger, link as u32)
                .expect("the gateway speaks the protocol");
            total.opens += r.opens;
            total.counts += r.counts;
            total.closes += r.closes;
            total.skipped += r.skipped;
        }
        total
    }

    /// What the server's end of `link` has to send now, delivered to the gateway; returns
    /// whether there was anything.
    pub fn send_to_gateway(&mut self, link: usize) -> bool {
        let Some(server) = self.servers[link].as_mut() else { return false };
        let mut any = false;
        while let Some(n) =
            server.poll_transmit(self.now, &self.server_config, &mut self.buf).expect("the link is not idle")
        {
            self.gateway.handle_message(link, &self.buf[..n], self.now).expect("the gateway takes it");
            any = true;
        }
        any
    }

    /// Passes messages both ways on every link until neither end has anything to send now.
    pub fn drive(&mut self) {
        loop {
            let mut moved = false;
            for link in 0..self.servers.len() {
                let r = self.send_to_server(link);
                moved |= r != Received::default();
                moved |= self.send_to_gateway(link);
            }
            if !moved {
                break;
            }
        }
    }

    /// The aggregator commits everything its ledger holds (the commit succeeds) and sends the
    /// acknowledgements, each on the link its session's report came by; returns the rows.
    pub fn commit(&mut self) -> Vec<(SessionKey, u64)> {
        let mut keys = vec![SessionKey { gateway: 0, boot_epoch: 0, session: 0 }; self.ledger.len()];
        let flight = self.ledger.begin_flush(&mut keys, self.now);
        let rows = self.ledger.rows(&flight).map(|r| (r.key, r.total)).collect();
        let mut acks: Vec<Vec<_>> = self.servers.iter().map(|_| Vec::new()).collect();
        self.ledger.commit_succeeded(flight, |route, _, entry| acks[route as usize].push(entry));
        for (link, entries) in acks.into_iter().enumerate() {
            if self.servers[link].is_none() {
                continue;
            }
            let mut entries = entries.into_iter().peekable();
            loop {
                let n = server::write_acks(&mut entries, &mut self.buf, &self.server_config);
                if n == 0 {
                    break;
                }
                self.gateway.handle_message(link, &self.buf[..n], self.now).expect("the gateway takes acks");
            }
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::CloseReason;

    #[test]
    fn a_pair_carries_counts_to_the_ledger_and_acknowledgements_back() {
        let mut p = Pair::new(GatewayConfig::default(), 2, 8);
        p.connect_all();
        let a = p.gateway.open(Some(b"phone-a")).unwrap();
        p.gateway.record(a, 10).unwrap();
        p.drive();
        assert_eq!(p.commit(), vec![(p.key(a), 10)]);
        assert_eq!(p.gateway.durable(a), Some(10));
        p.gateway.close(a, CloseReason::NORMAL).unwrap();
        p.advance(p.gateway.poll_timeout().delay(p.now).unwrap());
        p.drive();
        p.commit();
        assert_eq!(p.gateway.live_sessions(), 0);
    }
}
