//! Virtual gateways: G gateways of P phone sessions each, speaking the trunk protocol
//! ([`trunk::gateway::Gateway`]) over K WebSocket links to the aggregator, so the central tier
//! can be loaded with a million sessions without a million sockets.
//!
//! Each gateway is one task that owns its sans-IO state machine; each link's socket is read by a
//! small task that forwards messages to it. The gateway task feeds every event to the machine
//! (`connected`, `handle_message`, `disconnected`), calls `poll_transmit` until it has nothing
//! more after every event and at `poll_timeout`, and reconnects lost links after
//! `reconnect_delay`. Sessions send bytes at random intervals (`record(id, 1)`), learn what is
//! durable from `poll_durable`, and at the end close normally; the run waits until every close is
//! acknowledged (`live_sessions() == 0`) or the drain timeout.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use trunk::backoff::Backoff;
use trunk::frame::{CloseReason, MAX_DEVICE_ID_LEN, MAX_GATEWAY_ID_LEN, NONCE_LEN, PATH, SUBPROTOCOL};
use trunk::gateway::{Gateway, GatewayConfig, Identity, LinkError, LinkPhase, SessionId, SessionSlot};
use trunk::time::Instant as TrunkInstant;

use crate::cli::{decode_hex, GatewaysArgs};
use crate::net::{Connector, Failure, FailureKind, Target, Ws};
use crate::phone::Phase;
use crate::report::{self, Parts, Report};
use cli_env::Interrupts;

use crate::run::Monitor;
use crate::stats::{rss_bytes, CpuWindow, DeviceCounters, DeviceTotals, Memory, Stats};

/// Largest message accepted from the aggregator (its acknowledgements).
const MAX_MESSAGE: usize = 1 << 20;
/// The transmit buffer: as large as the aggregator's default message bound.
const TRANSMIT_BUFFER: usize = 64 * 1024;
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// One line of the gateways file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayEntry {
    pub name: String,
    pub secret: Vec<u8>,
}

/// Reads `NAME HEXSECRET` lines (blank lines and `#` comments are skipped).
pub fn read_gateways_file(path: &Path) -> anyhow::Result<Vec<GatewayEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_gateways(&text).with_context(|| format!("in {}", path.display()))
}

pub fn parse_gateways(text: &str) -> anyhow::Result<Vec<GatewayEntry>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, hex] = fields[..] else {
            bail!("line {}: expected `NAME HEXSECRET`", n + 1);
        };
        let secret = decode_hex(hex).with_context(|| format!("line {}: the secret is not hex", n + 1))?;
        ensure!(
            !secret.is_empty() && secret.len() <= trunk::gateway::MAX_SECRET_LEN,
            "line {}: the secret must be 1 to {} bytes",
            n + 1,
            trunk::gateway::MAX_SECRET_LEN
        );
        ensure!(
            name.len() <= MAX_GATEWAY_ID_LEN,
            "line {}: the name is longer than {MAX_GATEWAY_ID_LEN}",
            n + 1
        );
        out.push(GatewayEntry { name: name.to_string(), secret });
    }
    Ok(out)
}

/// What all gateway tasks share.
struct Shared {
    args: GatewaysArgs,
    stats: Arc<Stats>,
    devices: Vec<DeviceCounters>,
    targets: Vec<Target>,
    connector: Connector,
    permits: Semaphore,
    start: Instant,
    gateways: usize,
}

impl Shared {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> tokio::time::Instant {
        (self.start + Duration::from_millis(ms)).into()
    }
}

/// The device id of session `p` of gateway `name`.
fn device_id(prefix: &str, name: &str, p: usize) -> String {
    format!("{prefix}{name}-{p}")
}

/// Runs the `gateways` command.
pub async fn run_gateways(args: GatewaysArgs) -> anyhow::Result<ExitCode> {
    let common = args.common.clone();
    common.validate()?;
    ensure!(
        (1..=trunk::gateway::MAX_LINKS).contains(&args.links),
        "--links must be 1 to {}",
        trunk::gateway::MAX_LINKS
    );
    ensure!(args.sessions_per_gateway > 0, "--sessions-per-gateway must be at least 1");
    ensure!(args.rate >= 0.0 && args.rate.is_finite(), "--rate must be 0 or more");
    let mut entries = read_gateways_file(&args.gateways_file)?;
    let g = args.gateways.unwrap_or(entries.len());
    ensure!(g > 0, "no gateways: --gateways-file is empty");
    ensure!(
        g <= entries.len(),
        "--gateways {g} but {} lists only {}",
        args.gateways_file.display(),
        entries.len()
    );
    entries.truncate(g);
    let p = args.sessions_per_gateway;
    for e in &entries {
        let longest = device_id(&common.device_prefix, &e.name, p - 1);
        ensure!(
            longest.len() <= MAX_DEVICE_ID_LEN,
            "device id {longest:?} is longer than the trunk's {MAX_DEVICE_ID_LEN} bytes: use a shorter \
             --device-prefix or gateway name"
        );
    }
    let mut targets = Vec::new();
    for url in &common.targets {
        targets.push(Target::resolve(url, Some(PATH)).await?);
    }
    let tls = crate::tls::for_urls(common.ca.as_deref(), targets.iter().map(|t| t.url.as_str()))?;
    let connector = Connector::new(tls, common.connect_timeout, Some(SUBPROTOCOL), MAX_MESSAGE);
    let sessions = (g * p) as u64;
    let links_total = (g * args.links) as u64;

    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let shared = Arc::new(Shared {
        devices: (0..sessions).map(|_| DeviceCounters::default()).collect(),
        stats: stats.clone(),
        targets,
        connector,
        permits: Semaphore::new(common.concurrent),
        start,
        gateways: g,
        args: args.clone(),
    });
    let mut monitor = Monitor::new(start, links_total, sessions, "links", common.output.quiet);
    let mut interrupts = Interrupts::catch()?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Run);
    let rss_before = rss_bytes();
    let mut cpu = CpuWindow::new();
    let mut tasks = Vec::with_capacity(g);
    for (index, entry) in entries.iter().enumerate() {
        let sim = GatewaySim::new(shared.clone(), index, entry)?;
        tasks.push(tokio::spawn(sim.run(phase_rx.clone())));
    }

    // The CPU window starts once every trunk link is up; what is held is the sessions.
    let snapshot = || {
        let snap = stats.snapshot();
        cpu.observe(&snap, snap.connected >= links_total, sessions);
        snap
    };
    let end = monitor.run_phase(common.duration, common.messages.is_some(), &mut interrupts, snapshot).await;
    let run = start.elapsed();
    let at_end_of_run = stats.snapshot();
    let cpu = cpu.finish(&at_end_of_run, sessions);
    let memory = rss_before.zip(rss_bytes()).map(|(before, held)| Memory {
        rss_before: before,
        rss_held: held,
        held: sessions,
    });
    let drain_started = Instant::now();
    let deadline = drain_started + common.drain_timeout;
    phase_tx.send_replace(Phase::Drain { deadline });
    let done = || stats.done.load(Relaxed) >= g as u64;
    let calm = monitor
        .drain_phase("draining", deadline + CLOSE_GRACE, &mut interrupts, || stats.snapshot(), done)
        .await;
    if !calm || !done() {
        phase_tx.send_replace(Phase::Stop);
    }
    for task in tasks {
        if tokio::time::timeout(CLOSE_GRACE, task).await.is_err() {
            eprintln!("warning: a gateway did not stop in time");
        }
    }
    monitor.finish();

    let totals: Vec<(String, DeviceTotals)> = entries
        .iter()
        .enumerate()
        .flat_map(|(gi, e)| {
            let shared = &shared;
            let prefix = &common.device_prefix;
            (0..p).map(move |pi| {
                let d = &shared.devices[gi * p + pi];
                let t = DeviceTotals { sent: d.sent.load(Relaxed), durable: d.durable.load(Relaxed) };
                (device_id(prefix, &e.name, pi), t)
            })
        })
        .collect();
    let parts = Parts {
        mode: "gateways",
        engine: None,
        targets: shared.targets.iter().map(|t| t.url.clone()).collect(),
        devices: sessions,
        connections: links_total,
        gateways: Some(g as u64),
        links_per_gateway: Some(args.links as u64),
        processes: 1,
        end,
        run,
        drain: drain_started.elapsed(),
        // A virtual gateway's drain ends with its sessions closed: there is no separate close.
        close: Duration::ZERO,
        at_end_of_run,
        last: stats.snapshot(),
        histogram: stats.histogram(),
        memory,
        cpu,
        samples: std::mem::take(&mut monitor.samples),
        all_connected_after: monitor.all_connected_after,
        peak_connect_rate: monitor.peak_connect_rate,
    };
    let report = Report::new(parts, &totals);
    let tls = crate::workers::tls_for_verify(&common)?;
    report::conclude(report, links_total, &totals, &common, tls).await
}

/// What a link task tells its gateway.
enum LinkEvent {
    Connected {
        link: usize,
        generation: u64,
        sink: SplitSink<Ws, Message>,
    },
    Message {
        link: usize,
        generation: u64,
        data: Bytes,
    },
    /// An established link ended (`None`: closed by us, or cleanly).
    Lost {
        link: usize,
        generation: u64,
        failure: Failure,
    },
    /// The connection attempt failed.
    Failed {
        link: usize,
        generation: u64,
        failure: Failure,
    },
}

#[derive(Default)]
struct LinkSlot {
    sink: Option<SplitSink<Ws, Message>>,
    task: Option<JoinHandle<()>>,
    generation: u64,
    /// When to start the next connection attempt (ms since the start).
    reconnect_at: Option<u64>,
    /// Attempts that failed before the trunk came up.
    failures: u32,
    /// Counted in the connected gauge: its trunk came up (Welcome), not only its WebSocket, so
    /// a refused trunk never counts as connected.
    up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    Open,
    Send,
}

struct Session {
    id: Option<SessionId>,
    sent: u64,
    durable: u64,
}

struct GatewaySim {
    shared: Arc<Shared>,
    index: usize,
    name: String,
    gw: Gateway<Vec<SessionSlot>>,
    sessions: Vec<Session>,
    /// Session number by slot index.
    by_slot: Vec<u32>,
    queue: BinaryHeap<Reverse<(u64, Due, u32)>>,
    links: Vec<LinkSlot>,
    tx: mpsc::UnboundedSender<LinkEvent>,
    rx: mpsc::UnboundedReceiver<LinkEvent>,
    buf: Vec<u8>,
    running: bool,
}

impl GatewaySim {
    fn new(shared: Arc<Shared>, index: usize, entry: &GatewayEntry) -> anyhow::Result<Self> {
        let args = &shared.args;
        let p = args.sessions_per_gateway;
        let config = GatewayConfig {
            flush_interval: trunk::time::Duration::from_millis(args.flush_interval.as_millis().max(1) as u64),
            ..GatewayConfig::default()
        };
        let identity =
            Identity { gateway_id: entry.name.as_bytes(), secret: &entry.secret, boot_epoch: rand::random() };
        let gw = Gateway::new(config, identity, args.links, vec![SessionSlot::FREE; p])
            .map_err(|e| anyhow::anyhow!("gateway {}: {e}", entry.name))?;
        let mut queue = BinaryHeap::with_capacity(p);
        for s in 0..p {
            // Sessions open in the order s * G + g over all gateways, at --rate.
            let due = if args.rate > 0.0 {
                ((s * shared.gateways + index) as f64 / args.rate * 1000.0) as u64
            } else {
                0
            };
            queue.push(Reverse((due, Due::Open, s as u32)));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Self {
            index,
            name: entry.name.clone(),
            gw,
            sessions: (0..p).map(|_| Session { id: None, sent: 0, durable: 0 }).collect(),
            by_slot: vec![u32::MAX; p],
            queue,
            links: (0..args.links).map(|_| LinkSlot::default()).collect(),
            tx,
            rx,
            buf: vec![0; TRANSMIT_BUFFER],
            running: true,
            shared,
        })
    }

    async fn run(mut self, mut phase: watch::Receiver<Phase>) {
        for link in 0..self.links.len() {
            self.start_link(link, 0);
        }
        let mut draining: Option<u64> = None;
        loop {
            match *phase.borrow_and_update() {
                Phase::Run => {}
                Phase::Drain { deadline } | Phase::Close { deadline } => {
                    if draining.is_none() {
                        let ms = deadline.saturating_duration_since(self.shared.start).as_millis() as u64;
                        draining = Some(ms);
                        self.begin_drain();
                    }
                }
                Phase::Stop => break,
            }
            let now = self.shared.now();
            if self.running {
                self.sessions_due(now);
            }
            self.transmit(now).await;
            self.reconnect_due(now);
            if draining.is_some() && self.gw.live_sessions() == 0 {
                break;
            }
            if draining.is_some_and(|d| now >= d) {
                break;
            }
            let mut wake = self
                .gw
                .poll_timeout()
                .instant(TrunkInstant::from_millis(now))
                .map_or(u64::MAX, |t| t.as_millis());
            if self.running {
                if let Some(Reverse((due, _, _))) = self.queue.peek() {
                    wake = wake.min(*due);
                }
            }
            for l in &self.links {
                if let Some(at) = l.reconnect_at {
                    wake = wake.min(at);
                }
            }
            if let Some(d) = draining {
                wake = wake.min(d);
            }
            let wake = wake.max(now + 1).min(now + 60_000);
            tokio::select! {
                event = self.rx.recv() => {
                    if let Some(event) = event {
                        self.handle(event);
                        // Take whatever else arrived before transmitting.
                        while let Ok(event) = self.rx.try_recv() {
                            self.handle(event);
                        }
                    }
                }
                _ = tokio::time::sleep_until(self.shared.at(wake)) => {}
                changed = phase.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        self.finish().await;
    }

    fn global(&self, s: usize) -> usize {
        self.index * self.sessions.len() + s
    }

    /// Opens sessions and sends bytes that are due.
    fn sessions_due(&mut self, now: u64) {
        let common = &self.shared.args.common;
        let stats = &self.shared.stats;
        while let Some(Reverse((due, what, s))) = self.queue.peek().copied() {
            if due > now {
                break;
            }
            self.queue.pop();
            let s = s as usize;
            match what {
                Due::Open => {
                    let device = device_id(&common.device_prefix, &self.name, s);
                    match self.gw.open(Some(device.as_bytes())) {
                        Ok(id) => {
                            self.sessions[s].id = Some(id);
                            let slot = (id.0 % self.sessions.len() as u64) as usize;
                            self.by_slot[slot] = s as u32;
                            if common.messages == Some(0) {
                                stats.finished_sending.fetch_add(1, Relaxed);
                            } else {
                                let next = now + common.next_interval().as_millis() as u64;
                                self.queue.push(Reverse((next, Due::Send, s as u32)));
                            }
                        }
                        Err(e) => {
                            stats.error(&Failure::new(FailureKind::Other, format!("open {device}: {e}")));
                        }
                    }
                }
                Due::Send => {
                    let Some(id) = self.sessions[s].id else { continue };
                    if self.gw.record(id, 1).is_err() {
                        continue;
                    }
                    let session = &mut self.sessions[s];
                    session.sent += 1;
                    let sent = session.sent;
                    self.shared.devices[self.global(s)].sent.fetch_add(1, Relaxed);
                    stats.bytes_sent.fetch_add(1, Relaxed);
                    if common.messages == Some(sent) {
                        stats.finished_sending.fetch_add(1, Relaxed);
                    } else {
                        let next = now + common.next_interval().as_millis() as u64;
                        self.queue.push(Reverse((next, Due::Send, s as u32)));
                    }
                }
            }
        }
    }

    /// Stop sending and close every open session normally.
    fn begin_drain(&mut self) {
        self.running = false;
        self.queue.clear();
        for s in &self.sessions {
            if let Some(id) = s.id {
                let _ = self.gw.close(id, CloseReason::NORMAL);
            }
        }
    }

    fn set_durable(&mut self, s: usize, durable: u64) {
        let session = &mut self.sessions[s];
        if durable != session.durable {
            self.shared.stats.add_durable(session.durable, durable);
            session.durable = durable;
            self.shared.devices[self.index * self.by_slot.len() + s].durable.store(durable, Relaxed);
        }
    }

    fn take_durable(&mut self) {
        while let Some((id, acked)) = self.gw.poll_durable() {
            let s = self.by_slot[(id.0 % self.by_slot.len() as u64) as usize];
            if s != u32::MAX {
                self.set_durable(s as usize, acked);
            }
        }
    }

    fn handle(&mut self, event: LinkEvent) {
        let now = self.shared.now();
        match event {
            LinkEvent::Connected { link, generation, sink } => {
                if self.links[link].generation != generation {
                    return;
                }
                self.links[link].sink = Some(sink);
                let mut nonce = [0u8; NONCE_LEN];
                rand::fill(&mut nonce);
                self.gw.connected(link, TrunkInstant::from_millis(now), nonce);
            }
            LinkEvent::Message { link, generation, data } => {
                if self.links[link].generation != generation || self.links[link].sink.is_none() {
                    return;
                }
                match self.gw.handle_message(link, &data, TrunkInstant::from_millis(now)) {
                    Ok(()) => {
                        if self.gw.link_phase(link) == LinkPhase::Up {
                            self.links[link].failures = 0;
                            if !self.links[link].up {
                                self.links[link].up = true;
                                self.shared.stats.connected.fetch_add(1, Relaxed);
                            }
                        }
                        self.take_durable();
                    }
                    Err(e) => self.drop_link(link, Some(trunk_failure(e)), true),
                }
            }
            LinkEvent::Lost { link, generation, failure } => {
                if self.links[link].generation == generation {
                    self.drop_link(link, Some(failure), false);
                }
            }
            LinkEvent::Failed { link, generation, failure } => {
                if self.links[link].generation != generation {
                    return;
                }
                tracing::debug!(gateway = %self.name, link, %failure, "trunk link attempt failed");
                let stats = &self.shared.stats;
                stats.failed.fetch_add(1, Relaxed);
                stats.error(&failure);
                let l = &mut self.links[link];
                l.task = None;
                l.failures = l.failures.saturating_add(1);
                self.schedule_reconnect(link, now);
            }
        }
    }

    /// The link is gone: tell the machine, count why, and plan the reconnect.
    fn drop_link(&mut self, link: usize, failure: Option<Failure>, abort: bool) {
        let now = self.shared.now();
        let l = &mut self.links[link];
        l.sink = None;
        // Events the old connection may still have queued are ignored from now on.
        l.generation += 1;
        if let Some(task) = l.task.take() {
            if abort {
                task.abort();
            }
        }
        let was_up = matches!(self.gw.link_phase(link), LinkPhase::Up | LinkPhase::Draining);
        if std::mem::take(&mut l.up) {
            self.shared.stats.connected.fetch_sub(1, Relaxed);
        }
        if !was_up {
            l.failures = l.failures.saturating_add(1);
        }
        self.gw.disconnected(link, TrunkInstant::from_millis(now));
        if let Some(failure) = failure {
            tracing::debug!(gateway = %self.name, link, %failure, "trunk link lost");
            let stats = &self.shared.stats;
            // A link that ends before its trunk came up (refused, or lost in the handshake) is a
            // failed attempt, not a dropped trunk: the WebSocket was up, the trunk never was.
            if was_up {
                stats.dropped.fetch_add(1, Relaxed);
            } else {
                stats.failed.fetch_add(1, Relaxed);
            }
            stats.error(&failure);
        }
        self.schedule_reconnect(link, now);
    }

    fn schedule_reconnect(&mut self, link: usize, now: u64) {
        let random: u32 = rand::random();
        let machine = self.gw.reconnect_delay(link, TrunkInstant::from_millis(now), random).as_millis();
        let ours = Backoff::TRUNK.delay(self.links[link].failures, random).as_millis();
        self.links[link].reconnect_at = Some(now + machine.max(ours));
    }

    fn reconnect_due(&mut self, now: u64) {
        for link in 0..self.links.len() {
            if self.links[link].reconnect_at.is_some_and(|at| at <= now) {
                self.start_link(link, now);
            }
        }
    }

    fn start_link(&mut self, link: usize, _now: u64) {
        let l = &mut self.links[link];
        l.reconnect_at = None;
        l.generation += 1;
        let generation = l.generation;
        let shared = self.shared.clone();
        let tx = self.tx.clone();
        // Gateways spread over the targets round-robin; a gateway's links go to the same one.
        let target = self.index % shared.targets.len();
        l.task = Some(tokio::spawn(link_task(shared, target, link, generation, tx)));
    }

    /// Everything the machine has to send, on every link that is connected.
    async fn transmit(&mut self, now: u64) {
        for link in 0..self.links.len() {
            if self.links[link].sink.is_none() {
                continue;
            }
            let mut failure = None;
            let mut wrote = false;
            loop {
                match self.gw.poll_transmit(link, TrunkInstant::from_millis(now), &mut self.buf) {
                    Ok(None) => break,
                    Ok(Some(n)) => {
                        let message = Message::Binary(Bytes::copy_from_slice(&self.buf[..n]));
                        let Some(sink) = self.links[link].sink.as_mut() else { break };
                        if let Err(e) = sink.feed(message).await {
                            failure = Some(Failure::ws(e));
                            break;
                        }
                        wrote = true;
                    }
                    Err(e) => {
                        failure = Some(trunk_failure(e));
                        break;
                    }
                }
            }
            if failure.is_none() && wrote {
                if let Some(sink) = self.links[link].sink.as_mut() {
                    if let Err(e) = sink.flush().await {
                        failure = Some(Failure::ws(e));
                    }
                }
            }
            if let Some(failure) = failure {
                self.drop_link(link, Some(failure), true);
            }
        }
    }

    /// The end: record final durable totals, close the links with 1000.
    async fn finish(&mut self) {
        for s in 0..self.sessions.len() {
            let Some(id) = self.sessions[s].id else { continue };
            // A session the machine forgot had its close acknowledged with its whole count.
            let durable = self.gw.durable(id).unwrap_or(self.sessions[s].sent);
            self.set_durable(s, durable);
        }
        for link in 0..self.links.len() {
            let l = &mut self.links[link];
            l.reconnect_at = None;
            if let Some(mut sink) = l.sink.take() {
                let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
                let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(Message::Close(Some(frame))))
                    .await;
            }
            if let Some(task) = l.task.take() {
                // Let the reader see the server's close, briefly; then stop it.
                let abort = task.abort_handle();
                if tokio::time::timeout(Duration::from_millis(500), task).await.is_err() {
                    abort.abort();
                }
            }
            if std::mem::take(&mut l.up) {
                self.shared.stats.connected.fetch_sub(1, Relaxed);
            }
            self.gw.disconnected(link, TrunkInstant::from_millis(self.shared.now()));
        }
        self.shared.stats.done.fetch_add(1, Relaxed);
    }
}

fn trunk_failure(e: LinkError) -> Failure {
    match e {
        LinkError::Refused(code) => {
            Failure::new(FailureKind::TrunkRefused, format!("refuse code {}", code.0))
        }
        LinkError::TimedOut => Failure::new(FailureKind::Timeout, "trunk link timed out"),
        other => Failure::new(FailureKind::Trunk, other.to_string()),
    }
}

/// Connects link `link` and forwards what it receives until it ends.
async fn link_task(
    shared: Arc<Shared>,
    target: usize,
    link: usize,
    generation: u64,
    tx: mpsc::UnboundedSender<LinkEvent>,
) {
    let target = &shared.targets[target];
    let attempt = async {
        let _permit =
            shared.permits.acquire().await.map_err(|_| Failure::new(FailureKind::Other, "closed"))?;
        shared.stats.attempts.fetch_add(1, Relaxed);
        shared.connector.connect(target, &target.url, None).await
    };
    let (ws, latency) = match attempt.await {
        Ok(ok) => ok,
        Err(failure) => {
            let _ = tx.send(LinkEvent::Failed { link, generation, failure });
            return;
        }
    };
    let stats = &shared.stats;
    stats.established.fetch_add(1, Relaxed);
    stats.handshake(latency);
    let (sink, mut stream) = ws.split();
    if tx.send(LinkEvent::Connected { link, generation, sink }).is_err() {
        return;
    }
    let failure = loop {
        match stream.next().await {
            Some(Ok(Message::Binary(data))) => {
                if tx.send(LinkEvent::Message { link, generation, data }).is_err() {
                    return;
                }
            }
            Some(Ok(Message::Text(_))) => {
                break Failure::new(FailureKind::Trunk, "text message on a trunk link");
            }
            Some(Ok(Message::Close(frame))) => {
                let detail = match frame {
                    Some(f) => format!("close {} {}", u16::from(f.code), f.reason),
                    None => "close without code".into(),
                };
                break Failure::new(FailureKind::ClosedByServer, detail);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Failure::ws(e),
            None => break Failure::new(FailureKind::ClosedByServer, "connection closed"),
        }
    };
    let _ = tx.send(LinkEvent::Lost { link, generation, failure });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_file() {
        let text = "# provisioned\nsite-1 00ff\n\n  site-2   abcd  \n";
        let g = parse_gateways(text).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0], GatewayEntry { name: "site-1".into(), secret: vec![0, 255] });
        assert_eq!(g[1].secret, vec![0xab, 0xcd]);
        assert!(parse_gateways("site-1").is_err());
        assert!(parse_gateways("site-1 xyz").is_err());
        assert!(parse_gateways("site-1 00 extra").is_err());
    }

    #[test]
    fn device_ids() {
        assert_eq!(device_id("sim-", "site-1", 42), "sim-site-1-42");
    }
}
