//! The world of the randomised simulation (shared by `tests/simulation.rs` and
//! `examples/simulate.rs`): a randomised simulation of one gateway with several links and one aggregator, driven only
//! through the crate's public, sans-IO API.
//!
//! The network drops links, delays messages, and delivers messages of different links in any
//! order (each link keeps its own order, as TCP does). The aggregator's database commits fail at
//! random, and the aggregator itself crashes (losing its memory and every link, keeping its
//! database) between a commit and its acknowledgements, and it sends links away (go-away, then
//! close) as it does when it shuts down. Phones open, send bytes and close all
//! along.
//!
//! Checked at every step: whatever the gateway was told is durable is in the database.
//! Checked at the end, after a calm period: every session's committed total equals what its phone
//! sent (nothing lost, nothing counted twice), every close is committed, and the gateway has
//! forgotten every closed session.

use std::collections::{BTreeMap, HashMap, VecDeque};

use trunk::frame::{AckEntry, CloseReason};
use trunk::gateway::{Gateway, GatewayConfig, Identity, LinkPhase, SessionId, SessionSlot};
use trunk::harness::{Rng, GATEWAY_ID, GATEWAY_NUMBER, SECRET};
use trunk::ledger::{Ledger, LedgerSlot, SessionKey};
use trunk::server::{self, Handshake, ServerConfig, ServerLink};
use trunk::time::{Duration, Instant};

const LINKS: usize = 3;
const SESSIONS: usize = 48;
const MESSAGE: usize = 256;

/// The aggregator's end of one transport connection.
enum ServerEnd {
    Handshaking(Handshake),
    Up(ServerLink),
}

/// One transport connection carrying link `link`: two ordered queues, one per direction.
struct Connection {
    link: usize,
    route: u32,
    /// The aggregator asked the gateway to go away and will close at this time.
    closing_at: Option<Instant>,
    server: ServerEnd,
    to_server: VecDeque<Vec<u8>>,
    to_gateway: VecDeque<Vec<u8>>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct DbRow {
    total: u64,
    device: Option<Vec<u8>>,
    closed: bool,
}

/// What the phones did: the truth the database must end up holding.
#[derive(Debug, Default, Clone)]
struct Phone {
    sent: u64,
    device: Option<Vec<u8>>,
    closed: bool,
}

struct World {
    rng: Rng,
    now: Instant,
    gateway: Gateway<Vec<SessionSlot>>,
    config: ServerConfig,
    ledger: Ledger<Vec<LedgerSlot>>,
    db: BTreeMap<SessionKey, DbRow>,
    connections: Vec<Connection>,
    next_route: u32,
    reconnect_at: [Instant; LINKS],
    phones: HashMap<SessionId, Phone>,
    open: Vec<SessionId>,
    acks_pending: HashMap<u32, Vec<AckEntry>>,
    stats: Stats,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub drops: u32,
    pub go_aways: u32,
    pub crashes: u32,
    pub failed_commits: u32,
    pub commits: u32,
    pub acks: u64,
    pub max_message: usize,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, s: Stats) {
        self.drops += s.drops;
        self.go_aways += s.go_aways;
        self.crashes += s.crashes;
        self.failed_commits += s.failed_commits;
        self.commits += s.commits;
        self.acks += s.acks;
        self.max_message = self.max_message.max(s.max_message);
    }
}

impl World {
    fn new(seed: u64) -> Self {
        let identity = Identity { gateway_id: GATEWAY_ID, secret: SECRET, boot_epoch: seed ^ 0xb007 };
        let gw_config =
            GatewayConfig { flush_interval: Duration::from_millis(50), ..GatewayConfig::default() };
        let gateway = Gateway::new(gw_config, identity, LINKS, vec![SessionSlot::FREE; SESSIONS]).unwrap();
        let config = ServerConfig { max_message_len: MESSAGE, ..ServerConfig::default() };
        World {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            now: Instant::from_secs(1),
            gateway,
            config,
            ledger: Ledger::new(vec![LedgerSlot::EMPTY; 512], seed),
            db: BTreeMap::new(),
            connections: Vec::new(),
            next_route: 1,
            reconnect_at: [Instant::ZERO; LINKS],
            phones: HashMap::new(),
            open: Vec::new(),
            acks_pending: HashMap::new(),
            stats: Stats::default(),
        }
    }

    fn key(&self, id: SessionId) -> SessionKey {
        SessionKey { gateway: GATEWAY_NUMBER, boot_epoch: self.gateway.boot_epoch(), session: id.0 }
    }

    // ----- phones -----

    fn phones_act(&mut self) {
        let r = self.rng.below(100);
        if r < 8 {
            let device = self.rng.chance(70).then(|| format!("dev-{}", self.rng.below(1000)).into_bytes());
            if let Ok(id) = self.gateway.open(device.as_deref()) {
                self.phones.insert(id, Phone { device, ..Phone::default() });
                self.open.push(id);
            }
        } else if r < 12 && !self.open.is_empty() {
            let i = self.rng.below(self.open.len() as u64) as usize;
            let id = self.open.swap_remove(i);
            self.gateway.close(id, CloseReason::NORMAL).unwrap();
            self.phones.get_mut(&id).unwrap().closed = true;
        } else if !self.open.is_empty() {
            for _ in 0..=self.rng.below(4) {
                let id = self.open[self.rng.below(self.open.len() as u64) as usize];
                let bytes = 1 + self.rng.below(3);
                self.gateway.record(id, bytes).unwrap();
                self.phones.get_mut(&id).unwrap().sent += bytes;
            }
        }
    }

    // ----- links -----

    fn connect_links(&mut self) {
        for link in 0..LINKS {
            let down = self.gateway.link_phase(link) == LinkPhase::Down;
            if down && self.now >= self.reconnect_at[link] && !self.connections.iter().any(|c| c.link == link)
            {
                let nonce = self.rng.nonce();
                self.gateway.connected(link, self.now, nonce);
                let handshake = Handshake::new(self.rng.nonce(), self.now);
                let mut buf = [0u8; 64];
                let n = handshake.challenge(&mut buf).unwrap();
                let route = self.next_route;
                self.next_route += 1;
                self.connections.push(Connection {
                    link,
                    route,
                    closing_at: None,
                    server: ServerEnd::Handshaking(handshake),
                    to_server: VecDeque::new(),
                    to_gateway: VecDeque::from([buf[..n].to_vec()]),
                });
            }
        }
    }

    /// Closes connection `i` at both ends (a reset, a timeout, a refusal).
    fn drop_connection(&mut self, i: usize) {
        let c = self.connections.swap_remove(i);
        self.acks_pending.remove(&c.route);
        self.gateway.disconnected(c.link, self.now);
        let r = self.rng.next() as u32;
        self.reconnect_at[c.link] = self.now + self.gateway.reconnect_delay(c.link, self.now, r);
    }

    fn gateway_transmits(&mut self) {
        let mut i = 0;
        while i < self.connections.len() {
            let link = self.connections[i].link;
            let mut buf = [0u8; MESSAGE];
            match self.gateway.poll_transmit(link, self.now, &mut buf) {
                Ok(Some(n)) => {
                    self.stats.max_message = self.stats.max_message.max(n);
                    self.connections[i].to_server.push_back(buf[..n].to_vec());
                    continue; // poll again until nothing is left
                }
                Ok(None) => i += 1,
                Err(e) => {
                    assert!(matches!(e, trunk::gateway::LinkError::TimedOut), "gateway link error {e:?}");
                    self.drop_connection(i);
                }
            }
        }
    }

    /// Delivers one message, on a connection chosen at random: links race each other.
    fn deliver_one(&mut self) {
        if self.connections.is_empty() {
            return;
        }
        let i = self.rng.below(self.connections.len() as u64) as usize;
        let to_server = self.rng.chance(50);
        let c = &mut self.connections[i];
        if to_server {
            if !ServerLink::can_read(&self.ledger, &self.config) {
                return; // backpressure: leave it in the socket
            }
            let Some(msg) = c.to_server.pop_front() else { return };
            let route = c.route;
            let result = match &mut c.server {
                ServerEnd::Handshaking(h) => {
                    let hello = h.hello(&msg, &self.config).expect("a valid hello");
                    assert_eq!(hello.gateway_id, GATEWAY_ID);
                    let link = h.clone().verify(&hello, Some(SECRET), GATEWAY_NUMBER, self.now);
                    c.server = ServerEnd::Up(link.expect("the right secret verifies"));
                    Ok(())
                }
                ServerEnd::Up(link) => {
                    link.handle_message(&msg, self.now, &self.config, &mut self.ledger, route).map(|_| ())
                }
            };
            result.expect("the gateway speaks the protocol");
        } else if let Some(msg) = c.to_gateway.pop_front() {
            let link = c.link;
            if let Err(e) = self.gateway.handle_message(link, &msg, self.now) {
                panic!("gateway rejected a message: {e:?}");
            }
        }
    }

    fn server_transmits(&mut self) {
        for c in &mut self.connections {
            if let ServerEnd::Up(link) = &mut c.server {
                let mut buf = [0u8; MESSAGE];
                if let Some(n) = link
                    .poll_transmit(self.now, &self.config, &mut buf)
                    .expect("gateway keeps the link alive")
                {
                    c.to_gateway.push_back(buf[..n].to_vec());
                }
                if let Some(acks) = self.acks_pending.remove(&c.route) {
                    let mut iter = acks.into_iter().peekable();
                    loop {
                        let n = server::write_acks(&mut iter, &mut buf, &self.config);
                        if n == 0 {
                            break;
                        }
                        c.to_gateway.push_back(buf[..n].to_vec());
                    }
                }
            }
        }
    }

    // ----- the aggregator's ledger and database -----

    fn flush(&mut self, crash_after_commit: bool, may_fail: bool) {
        let max_rows = 1 + self.rng.below(40) as usize;
        let mut keys = vec![SessionKey { gateway: 0, boot_epoch: 0, session: 0 }; max_rows];
        let flight = self.ledger.begin_flush(&mut keys, self.now);
        if flight.is_empty() {
            self.ledger.commit_succeeded(flight, |_, _, _| {});
            return;
        }
        if may_fail && self.rng.chance(20) {
            self.stats.failed_commits += 1;
            self.ledger.commit_failed(flight);
            return;
        }
        for row in self.ledger.rows(&flight) {
            let r = self.db.entry(row.key).or_default();
            r.total = r.total.max(row.total); // GREATEST(stored, written)
            if r.device.is_none() {
                r.device = row.device.map(<[u8]>::to_vec);
            }
            r.closed |= row.closed.is_some();
        }
        self.stats.commits += 1;
        if crash_after_commit {
            self.crash_aggregator();
            return;
        }
        let pending = &mut self.acks_pending;
        let live: Vec<u32> = self.connections.iter().map(|c| c.route).collect();
        let mut acks = 0;
        self.ledger.commit_succeeded(flight, |route, _key, entry| {
            acks += 1;
            if live.contains(&route) {
                pending.entry(route).or_default().push(entry);
            }
        });
        self.stats.acks += acks;
    }

    /// The aggregator drains one link, as it does before it shuts down: go-away, then close a
    /// little later.
    fn go_away(&mut self) {
        let now = self.now;
        let up: Vec<usize> = (0..self.connections.len())
            .filter(|&i| {
                matches!(self.connections[i].server, ServerEnd::Up(_))
                    && self.connections[i].closing_at.is_none()
            })
            .collect();
        if up.is_empty() {
            return;
        }
        let i = up[self.rng.below(up.len() as u64) as usize];
        let c = &mut self.connections[i];
        if let ServerEnd::Up(link) = &mut c.server {
            link.go_away(Duration::from_millis(300), trunk::frame::GoAwayReason::SHUTDOWN);
            c.closing_at = Some(now + Duration::from_millis(200 + self.rng.below(800)));
            self.stats.go_aways += 1;
        }
    }

    /// The aggregator process dies: its memory and every connection are gone, the database stays.
    fn crash_aggregator(&mut self) {
        self.stats.crashes += 1;
        self.ledger = Ledger::new(vec![LedgerSlot::EMPTY; 512], self.rng.next());
        while !self.connections.is_empty() {
            self.drop_connection(0);
        }
    }

    // ----- invariants -----

    fn check_acknowledged_counts_are_committed(&self) {
        for (&id, _) in self.phones.iter() {
            if let Some(durable) = self.gateway.durable(id) {
                let committed = self.db.get(&self.key(id)).map_or(0, |r| r.total);
                assert!(durable <= committed, "session {id}: told durable {durable}, committed {committed}");
            }
        }
    }

    fn step(&mut self, chaos: bool) {
        self.now += Duration::from_millis(1 + self.rng.below(if chaos { 120 } else { 30 }));
        if chaos {
            self.phones_act();
        }
        self.connect_links();
        self.gateway_transmits();
        for _ in 0..self.rng.below(6) {
            self.deliver_one();
        }
        if chaos && self.rng.chance(2) && !self.connections.is_empty() {
            self.stats.drops += 1;
            let i = self.rng.below(self.connections.len() as u64) as usize;
            self.drop_connection(i);
        }
        if chaos && self.rng.chance(1) {
            self.go_away();
        }
        while let Some(i) = self.connections.iter().position(|c| c.closing_at.is_some_and(|t| t <= self.now))
        {
            self.drop_connection(i);
        }
        if self.rng.chance(if chaos { 15 } else { 40 }) {
            let crash = chaos && self.rng.chance(3);
            self.flush(crash, chaos);
        }
        self.server_transmits();
        while self.gateway.poll_durable().is_some() {}
        self.check_acknowledged_counts_are_committed();
    }
}

pub fn run(seed: u64, steps: usize) -> Stats {
    let mut w = World::new(seed);
    for _ in 0..steps {
        w.step(true);
    }
    // The phones that are left hang up; then the network calms down and everything drains.
    for id in std::mem::take(&mut w.open) {
        w.gateway.close(id, CloseReason::SHUTDOWN).unwrap();
        w.phones.get_mut(&id).unwrap().closed = true;
    }
    for _ in 0..20_000 {
        w.step(false);
        if w.gateway.live_sessions() == 0 && w.ledger.is_empty() {
            break;
        }
    }
    assert_eq!(
        w.gateway.live_sessions(),
        0,
        "seed {seed}: the gateway still holds sessions: {:?}",
        w.gateway
    );
    for (&id, phone) in &w.phones {
        let row = w.db.get(&w.key(id)).unwrap_or_else(|| panic!("seed {seed}: session {id} never committed"));
        assert_eq!(row.total, phone.sent, "seed {seed}: session {id} committed total differs from sent");
        assert_eq!(row.device, phone.device, "seed {seed}: session {id} device");
        assert!(row.closed, "seed {seed}: session {id} close not committed");
    }
    assert_eq!(w.db.len(), w.phones.len(), "seed {seed}: rows for sessions that never existed");
    assert!(w.stats.max_message <= MESSAGE);
    w.stats
}
