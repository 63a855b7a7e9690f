//! Simulated phones: one small task per phone that connects (at its moment in the ramp), holds
//! its WebSocket, sends one byte at random intervals, keeps what the server confirms durable, and
//! reconnects with backoff and jitter when the connection is lost.
//!
//! A held phone costs its task (the state below, kept small: the connection attempt is boxed and
//! freed once done), its socket, and tungstenite's small read buffer. No per-phone buffers beyond
//! that: a phone's only record is its device's two counters.

use std::net::IpAddr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use std::sync::atomic::AtomicU8;
use std::sync::OnceLock;

use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use trunk::backoff::Backoff;

use crate::cli::{CommonArgs, Engine, PhonesArgs, Protocol};
use crate::net::{Connector, Failure, FailureKind, Target, Ws};
use crate::stats::{DeviceCounters, DeviceTotals, Stats};

mod hosted;

/// One source address per this many phones by default. A source address has ~28k ephemeral
/// ports towards one destination, but the kernel's search for a free one grows costly as they
/// fill: 40,000 phones on 2 addresses took 45 s of system CPU and over 40 s to connect, on 4
/// addresses 5 s and 6 s.
pub const PHONES_PER_SOURCE_IP: u64 = 10_000;

/// Largest message a phone accepts from the server.
const MAX_MESSAGE: usize = 64 * 1024;

/// Where the run stands; every phone watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connect and send.
    Run,
    /// Stop sending; keep each connection open until the server confirmed all it was sent (or
    /// the deadline). Nobody closes yet: a burst of closes would compete with the last
    /// confirmations, and "durable after the stop" would measure the closes.
    Drain { deadline: Instant },
    /// Close each connection once the server confirmed all it was sent, or at the deadline.
    Close { deadline: Instant },
    /// Close now.
    Stop,
}

/// What every phone of a run shares: settings, targets, sources, the connector.
#[derive(Clone)]
pub struct Plan {
    pub common: CommonArgs,
    /// Phones in the whole run (all processes).
    pub total: u64,
    pub rate: f64,
    pub targets: Vec<Target>,
    pub sources: Vec<IpAddr>,
    pub connector: Connector,
    /// Signs each phone's device token (`--device-key`), if given.
    pub device_key: Option<Arc<device_token::SigningKey>>,
    /// Or the tokens issued beforehand (`--token-file`).
    pub tokens: Option<Arc<crate::tokens::TokenFile>>,
    pub protocol: Protocol,
    /// The phones run on the host runtime ([`hosted`]), not on tokio.
    pub on_host_runtime: bool,
    /// The host runtime's `--io-batch-us`.
    pub io_batch_us: u64,
    width: usize,
}

impl Plan {
    pub async fn new(args: &PhonesArgs) -> anyhow::Result<Self> {
        let common = args.common.clone();
        common.validate()?;
        anyhow::ensure!(args.phones > 0, "--phones must be at least 1");
        anyhow::ensure!(args.rate >= 0.0 && args.rate.is_finite(), "--rate must be 0 or more");
        let mut targets = Vec::new();
        for url in &common.targets {
            targets.push(Target::resolve(url, None).await?);
        }
        let tls = crate::tls::for_urls(common.ca.as_deref(), targets.iter().map(|t| t.url.as_str()))?;
        let sources = match &args.source_ips {
            Some(ips) => ips.0.clone(),
            None if targets.iter().all(Target::is_loopback) => default_sources(args.phones),
            None => Vec::new(),
        };
        let connector = Connector::new(tls, common.connect_timeout, None, MAX_MESSAGE);
        let device_key = match &args.device_key {
            Some(path) => Some(Arc::new(crate::tokens::load_key(path)?)),
            None => None,
        };
        let tokens = match &args.token_file {
            Some(path) => Some(Arc::new(crate::tokens::TokenFile::open(path, args.phones)?)),
            None => None,
        };
        let host_runtime_can = targets.iter().all(|t| !t.tls) && args.protocol == Protocol::Holdfast;
        let on_host_runtime = match args.engine {
            Engine::Tokio => false,
            Engine::Auto => host_runtime_can,
            Engine::HostRuntime => {
                anyhow::ensure!(
                    host_runtime_can,
                    "--engine host-runtime speaks holdfast's protocol over ws:// only (use tokio for wss:// or socket.io)"
                );
                true
            }
        };
        Ok(Self {
            on_host_runtime,
            io_batch_us: args.io_batch_us,
            device_key,
            tokens,
            protocol: args.protocol,
            total: args.phones,
            rate: args.rate,
            targets,
            sources,
            connector,
            width: device_width(args.phones),
            common,
        })
    }

    /// The URL phone `index` connects to: its device id, and its token: issued beforehand
    /// (--token-file), or signed now with --device-key (valid for a day from this attempt).
    fn url(&self, index: u64) -> String {
        let device = self.device_id(index);
        let url = self.target(index).url_with_device(&device);
        let token = match (&self.tokens, &self.device_key) {
            // Checked at open to hold a line per phone: a failed read leaves the phone without
            // a token, and the gateway's refusal counts it as failed.
            (Some(file), _) => file.token(index).ok(),
            (None, Some(key)) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                key.token(device.as_bytes(), now + 24 * 3600)
            }
            (None, None) => None,
        };
        match token {
            Some(token) => format!("{url}&token={token}"),
            None => url,
        }
    }

    /// The device id of phone `index`: the prefix and the zero-padded index.
    pub fn device_id(&self, index: u64) -> String {
        device_id(&self.common.device_prefix, self.width, index)
    }

    fn target(&self, index: u64) -> &Target {
        &self.targets[(index % self.targets.len() as u64) as usize]
    }

    fn source(&self, index: u64) -> Option<IpAddr> {
        (!self.sources.is_empty()).then(|| self.sources[(index % self.sources.len() as u64) as usize])
    }
}

/// The device id of phone `index` of a run whose ids are `width` digits wide.
pub fn device_id(prefix: &str, width: usize, index: u64) -> String {
    format!("{prefix}{index:0width$}")
}

/// Digits of the largest index, at least 6 (sim-000042).
pub fn device_width(total: u64) -> usize {
    total.saturating_sub(1).to_string().len().max(6)
}

/// 127.0.0.2 and up: one address per [`PHONES_PER_SOURCE_IP`] phones.
pub fn default_sources(phones: u64) -> Vec<IpAddr> {
    let count = phones.div_ceil(PHONES_PER_SOURCE_IP).clamp(1, 250);
    (0..count).map(|k| IpAddr::from([127, 0, 0, 2 + k as u8])).collect()
}

/// The phase as every phone of a process sees it: a byte and a wakeup, far smaller per waiting
/// phone than a watch channel's change future.
#[derive(Debug, Default)]
pub struct PhaseCell {
    state: AtomicU8,
    deadline: OnceLock<Instant>,
    notify: Notify,
}

const RUN: u8 = 0;
const DRAIN: u8 = 1;
const CLOSE: u8 = 2;
const STOP: u8 = 3;

impl PhaseCell {
    pub fn get(&self) -> Phase {
        let deadline = || self.deadline.get().copied().unwrap_or_else(Instant::now);
        match self.state.load(Acquire) {
            RUN => Phase::Run,
            DRAIN => Phase::Drain { deadline: deadline() },
            CLOSE => Phase::Close { deadline: deadline() },
            _ => Phase::Stop,
        }
    }

    /// Moves on (never back) and wakes every phone.
    pub fn set(&self, phase: Phase) {
        let state = match phase {
            Phase::Run => RUN,
            Phase::Drain { deadline } => {
                let _ = self.deadline.set(deadline);
                DRAIN
            }
            Phase::Close { deadline } => {
                let _ = self.deadline.set(deadline);
                CLOSE
            }
            Phase::Stop => STOP,
        };
        self.state.fetch_max(state, Release);
        self.notify.notify_waiters();
    }
}

/// The phones of one process: indices `first, first + step, ...` below the run's total.
pub struct Fleet {
    shared: Arc<Shared>,
}

struct Shared {
    plan: Plan,
    stats: Arc<Stats>,
    devices: Vec<DeviceCounters>,
    first: u64,
    step: u64,
    permits: Semaphore,
    start: Instant,
    phase: PhaseCell,
}

/// The bookkeeping of a phone's life, the same whichever engine runs it.
impl Shared {
    fn index(&self, k: usize) -> u64 {
        self.first + k as u64 * self.step
    }

    /// A phone begins: what it carries from one connection to the next.
    fn starting(&self) -> Progress {
        if self.plan.common.messages == Some(0) {
            self.stats.finished_sending.fetch_add(1, Relaxed);
        }
        Progress { sent: 0, durable_before: 0 }
    }

    /// A phone's life is over (`failing`: its last attempts failed).
    fn finished(&self, failing: bool) {
        if failing {
            self.stats.failing.fetch_sub(1, Relaxed);
        }
        self.stats.done.fetch_add(1, Relaxed);
    }

    /// Counts an attempt's outcome (connected, with its latency, or failed).
    fn attempted<C>(&self, index: u64, outcome: Result<(C, Duration), Failure>) -> Option<C> {
        match outcome {
            Ok((conn, latency)) => {
                self.stats.established.fetch_add(1, Relaxed);
                self.stats.handshake(latency);
                Some(conn)
            }
            Err(failure) => {
                tracing::debug!(device = %self.plan.device_id(index), %failure, "connection attempt failed");
                self.stats.failed.fetch_add(1, Relaxed);
                self.stats.error(&failure);
                None
            }
        }
    }

    /// An attempt failed: the phone is failing; returns its failures in a row.
    fn attempt_failed(&self, failing: &mut bool, failures: u32) -> u32 {
        if !*failing {
            *failing = true;
            self.stats.failing.fetch_add(1, Relaxed);
        }
        failures.saturating_add(1)
    }

    /// A connection is up and about to be held.
    fn connection_up(&self, failing: &mut bool) {
        if *failing {
            *failing = false;
            self.stats.failing.fetch_sub(1, Relaxed);
        }
        self.stats.connected.fetch_add(1, Relaxed);
    }

    /// A held connection ended: `None` when we closed it (the phone's life is over), else the
    /// failures to back off for before it comes back.
    fn connection_down(&self, index: u64, ended: Ended) -> Option<u32> {
        self.stats.connected.fetch_sub(1, Relaxed);
        match ended {
            Ended::Closed => None,
            Ended::Lost(failure) => {
                tracing::debug!(device = %self.plan.device_id(index), %failure, "connection lost");
                self.stats.dropped.fetch_add(1, Relaxed);
                self.stats.error(&failure);
                // Come back after a jittered pause, as a crowd of real phones would.
                Some(1)
            }
        }
    }

    /// Phone `k` is about to send a byte: counted as sent before the write, so a byte that may
    /// have left is never missed.
    fn sending(&self, k: usize, progress: &mut Progress, session: &mut Session) {
        progress.sent += 1;
        session.sent += 1;
        self.devices[k].sent.fetch_add(1, Relaxed);
        self.stats.bytes_sent.fetch_add(1, Relaxed);
        if self.plan.common.messages == Some(progress.sent) {
            self.stats.finished_sending.fetch_add(1, Relaxed);
        }
    }

    /// The server said phone `k`'s connection has `durable` bytes durable.
    fn durable(&self, k: usize, progress: &Progress, session: &mut Session, durable: u64) {
        self.stats.add_durable(session.durable, durable);
        session.durable = durable;
        self.devices[k].durable.store(progress.durable_before + durable, Relaxed);
    }
}

/// A held connection between wakeups, on tokio (the host runtime's holder keeps the same in a
/// slot per phone: `hosted/holder.rs`).
struct Held {
    session: Session,
    /// The next byte's time while running; the drain deadline while draining.
    wake_at: Option<Instant>,
    draining: bool,
}

impl Held {
    fn new(shared: &Shared, progress: &Progress) -> Self {
        let mut held = Self { session: Session::default(), wake_at: None, draining: false };
        held.sent(shared, progress);
        held
    }

    /// A byte went (or the connection is new): when the next one is due, if one is.
    fn sent(&mut self, shared: &Shared, progress: &Progress) {
        self.wake_at = wants_more(shared, progress.sent)
            .then(|| shared.plan.common.next_send(Instant::now(), shared.start));
    }

    /// Follows the run's phase: from the drain on, no more bytes and the drain's deadline to
    /// wake at. `true` when the connection is to close now (closing, and every byte of it
    /// confirmed; or stopping).
    fn phase_says_close(&mut self, shared: &Shared) -> bool {
        match shared.phase.get() {
            Phase::Run => false,
            Phase::Drain { deadline } | Phase::Close { deadline } => {
                if !self.draining {
                    self.draining = true;
                    self.wake_at = Some(deadline);
                }
                matches!(shared.phase.get(), Phase::Close { .. }) && self.session.durable >= self.session.sent
            }
            Phase::Stop => true,
        }
    }
}

/// What one connection of a phone sent, and what the server confirmed of it.
#[derive(Debug, Default)]
struct Session {
    sent: u64,
    durable: u64,
}

impl Fleet {
    /// Phones of worker `worker` of `workers` (0 of 1 for a single process). Their counters are
    /// allocated here; call [`Fleet::spawn`] to start them.
    pub fn new(plan: Plan, stats: Arc<Stats>, worker: u64, workers: u64, start: Instant) -> Self {
        let count = if plan.total > worker { (plan.total - worker).div_ceil(workers) } else { 0 };
        let permits = Semaphore::new(plan.common.concurrent.div_ceil(workers as usize).max(1));
        let devices = (0..count).map(|_| DeviceCounters::default()).collect();
        let phase = PhaseCell::default();
        let shared = Shared { plan, stats, devices, first: worker, step: workers, permits, start, phase };
        Self { shared: Arc::new(shared) }
    }

    /// Starts every phone's task: on this tokio runtime, or on a thread of the host runtime.
    pub fn spawn(&self) -> anyhow::Result<()> {
        if self.shared.plan.on_host_runtime {
            return hosted::spawn(self.shared.clone());
        }
        for k in 0..self.shared.devices.len() {
            tokio::spawn(phone(self.shared.clone(), k));
        }
        Ok(())
    }

    /// Phones in this process.
    pub fn len(&self) -> u64 {
        self.shared.devices.len() as u64
    }

    /// Every phone has finished (closed after the drain, or given up).
    pub fn is_done(&self) -> bool {
        self.shared.stats.done.load(Relaxed) >= self.len()
    }

    /// Stops sending; connections stay open (see [`Phase::Drain`]).
    pub fn drain(&self, deadline: Instant) {
        self.shared.phase.set(Phase::Drain { deadline });
    }

    /// Every byte sent so far is confirmed durable (phones that gave up count as confirmed: the
    /// verification judges their bytes).
    pub fn settled(&self) -> bool {
        let stats = &self.shared.stats;
        stats.bytes_durable.load(Relaxed) >= stats.bytes_sent.load(Relaxed)
    }

    /// Closes each connection once its bytes are confirmed (or at the drain's deadline; now,
    /// without a drain before).
    pub fn close(&self) {
        let deadline = self.shared.phase.deadline.get().copied().unwrap_or_else(Instant::now);
        self.shared.phase.set(Phase::Close { deadline });
    }

    pub fn stop(&self) {
        self.shared.phase.set(Phase::Stop);
    }

    /// Each phone's global index and totals.
    pub fn totals(&self) -> Vec<(u64, DeviceTotals)> {
        let s = &self.shared;
        s.devices
            .iter()
            .enumerate()
            .map(|(k, d)| {
                (s.index(k), DeviceTotals { sent: d.sent.load(Relaxed), durable: d.durable.load(Relaxed) })
            })
            .collect()
    }
}

/// How a held connection ended.
enum Ended {
    /// We closed it (drain or stop).
    Closed,
    /// It broke, or the server closed it.
    Lost(Failure),
}

/// A phone's whole life.
async fn phone(shared: Arc<Shared>, k: usize) {
    let mut failing = false;
    live(&shared, k, &mut failing).await;
    shared.finished(failing);
}

async fn live(shared: &Shared, k: usize, failing: &mut bool) {
    let index = shared.index(k);
    let mut progress = shared.starting();
    if shared.plan.rate > 0.0 {
        let at = shared.start + Duration::from_secs_f64(index as f64 / shared.plan.rate);
        if !sleep_while_running(shared, at).await {
            return;
        }
    }
    let mut failures = 0u32;
    loop {
        // Wait for a permit first, then box the attempt: its (large) state lives only while
        // connecting, not while queued (a ramp without --rate queues every phone at once). The
        // block keeps the permit and the attempt out of the state a held phone keeps.
        let ws = {
            let permit = tokio::select! {
                permit = shared.permits.acquire() => permit,
                _ = left_run(shared) => return,
            };
            let Ok(permit) = permit else { return };
            let attempt = Box::pin(attempt(shared, index, permit));
            tokio::select! {
                ws = attempt => ws,
                _ = left_run(shared) => return,
            }
        };
        match ws {
            None => failures = shared.attempt_failed(failing, failures),
            Some(ws) => {
                shared.connection_up(failing);
                let ended = hold(shared, k, ws, &mut progress).await;
                match shared.connection_down(index, ended) {
                    None => return,
                    Some(after_loss) => failures = after_loss,
                }
            }
        }
        let delay = Backoff::PHONE.delay(failures, rand::random());
        if !sleep_while_running(shared, Instant::now() + Duration::from(delay)).await {
            return;
        }
    }
}

/// One connection attempt, counted. The WebSocket comes boxed: moving it around costs a
/// pointer, not its few hundred bytes in every future that holds it.
async fn attempt(shared: &Shared, index: u64, _permit: tokio::sync::SemaphorePermit<'_>) -> Option<Box<Ws>> {
    shared.stats.attempts.fetch_add(1, Relaxed);
    let plan = &shared.plan;
    let target = plan.target(index);
    let url = plan.url(index);
    let connected = match plan.connector.connect(target, &url, plan.source(index)).await {
        // socket.io's join belongs to connecting (and its future stays out of the held phone's).
        Ok((mut ws, latency)) => match plan.protocol.hello() {
            Some(hello) => ws.send(hello).await.map(|()| (ws, latency)).map_err(Failure::ws),
            None => Ok((ws, latency)),
        },
        Err(failure) => Err(failure),
    };
    shared.attempted(index, connected.map(|(ws, latency)| (Box::new(ws), latency)))
}

/// What a phone carries from one connection to the next.
struct Progress {
    /// Bytes sent over all connections.
    sent: u64,
    /// Sum of the last durable values of the connections that ended.
    durable_before: u64,
}

/// What woke a held phone, in few bytes.
enum Event {
    Timer,
    /// The server said this connection's durable total.
    Durable(u64),
    /// The connection broke or the server closed it (boxed: rare, and keeps the event small).
    Lost(Box<Failure>),
    /// A socket.io ping (`2`): answer `3`, or the server closes the connection.
    Ping,
    /// Anything else received (pings, other messages).
    Other,
    /// The phase may have changed.
    Phase,
}

impl Event {
    fn received(
        protocol: Protocol,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Self {
        match message {
            Some(Ok(Message::Text(text))) => match protocol {
                Protocol::Holdfast => match serde_json::from_str::<Durable>(text.as_str()) {
                    Ok(Durable { durable }) => Event::Durable(durable),
                    Err(_) => Event::Other,
                },
                Protocol::SocketIo => socket_io_event(text.as_str()),
            },
            Some(Ok(Message::Close(frame))) => {
                let detail = match frame {
                    Some(f) => format!("close {} {}", u16::from(f.code), f.reason),
                    None => "close without code".into(),
                };
                Event::Lost(Box::new(Failure::new(FailureKind::ClosedByServer, detail)))
            }
            Some(Ok(_)) => Event::Other,
            Some(Err(e)) => Event::Lost(Box::new(Failure::ws(e))),
            None => Event::Lost(Box::new(Failure::new(FailureKind::ClosedByServer, "connection closed"))),
        }
    }
}

#[derive(Deserialize)]
struct Durable {
    durable: u64,
}

/// A socket.io text frame: Engine.IO's ping (`2`), or a socket.io event (`42` and a JSON array:
/// `["durable",N]` is the server's answer).
fn socket_io_event(text: &str) -> Event {
    if text == "2" {
        return Event::Ping;
    }
    match text.strip_prefix("42").map(serde_json::from_str::<(String, u64)>) {
        Some(Ok((name, durable))) if name == "durable" => Event::Durable(durable),
        _ => Event::Other,
    }
}

/// What a phone sends for one byte, and what it sends first (socket.io joins its namespace).
impl Protocol {
    fn byte(self) -> Message {
        match self {
            Protocol::Holdfast => Message::Binary(Bytes::from_static(b".")),
            Protocol::SocketIo => Message::Text(r#"42["b","."]"#.into()),
        }
    }

    fn hello(self) -> Option<Message> {
        match self {
            Protocol::Holdfast => None,
            Protocol::SocketIo => Some(Message::Text("40".into())),
        }
    }
}

/// Holds one connection: sends bytes while the run lasts, records durable confirmations, and
/// closes with 1000 once drained.
///
/// This future is most of what a held phone costs, so it keeps little across its one await:
/// the connection (boxed), one timer, one phase wakeup, and a few counters.
async fn hold(shared: &Shared, k: usize, mut ws: Box<Ws>, progress: &mut Progress) -> Ended {
    let mut held = Held::new(shared, progress);
    let timer = tokio::time::sleep_until(far_future().into());
    tokio::pin!(timer);
    let protocol = shared.plan.protocol;
    // Enabled before the phase is read, so a change after the read still wakes us; registered
    // once, and again only after it fired (registering anew at every wakeup took a lock, a list
    // insert and a removal per byte: 4 % of mobile-sim's CPU at the million).
    let phase_changed = shared.phase.notify.notified();
    tokio::pin!(phase_changed);
    phase_changed.as_mut().enable();
    let ended = loop {
        if held.phase_says_close(shared) {
            break Ended::Closed;
        }
        {
            let wake = tokio::time::Instant::from(held.wake_at.unwrap_or_else(far_future));
            if wake != timer.deadline() {
                timer.as_mut().reset(wake);
            }
        }
        // The select only says what happened; acting on it (the send) comes after, so the
        // futures of the select and of the send never take room in the phone at the same time.
        let event = tokio::select! {
            _ = &mut timer => Event::Timer,
            message = ws.next() => Event::received(protocol, message),
            _ = &mut phase_changed => Event::Phase,
        };
        match event {
            Event::Timer => {
                if held.draining {
                    break Ended::Closed; // the drain deadline
                }
                shared.sending(k, progress, &mut held.session);
                if let Err(e) = ws.send(protocol.byte()).await {
                    break Ended::Lost(Failure::ws(e));
                }
                held.sent(shared, progress);
            }
            Event::Durable(durable) => shared.durable(k, progress, &mut held.session, durable),
            Event::Lost(failure) => break Ended::Lost(*failure),
            Event::Ping => {
                if let Err(e) = ws.send(Message::Text("3".into())).await {
                    break Ended::Lost(Failure::ws(e));
                }
            }
            Event::Phase => {
                phase_changed.set(shared.phase.notify.notified());
                phase_changed.as_mut().enable();
            }
            Event::Other => {}
        }
    };
    progress.durable_before += held.session.durable;
    if let Ended::Closed = ended {
        // Boxed: the closing handshake's state is needed once, not kept in every held phone.
        Box::pin(close(ws)).await;
    }
    ended
}

/// Whether a phone that sent `sent` bytes sends more (`--messages`).
fn wants_more(shared: &Shared, sent: u64) -> bool {
    shared.plan.common.messages.is_none_or(|m| sent < m)
}

/// Closes with 1000 and waits (briefly) for the server's close.
async fn close(mut ws: Box<Ws>) {
    let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if ws.close(Some(frame)).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Sleeps until `at`; `false` (early) when the run is no longer in its Run phase.
async fn sleep_while_running(shared: &Shared, at: Instant) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(at.into()) => matches!(shared.phase.get(), Phase::Run),
        _ = left_run(shared) => false,
    }
}

/// Resolves once the phase is no longer Run.
async fn left_run(shared: &Shared) {
    loop {
        let changed = shared.phase.notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if !matches!(shared.phase.get(), Phase::Run) {
            return;
        }
        changed.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_padded() {
        assert_eq!(device_width(1), 6);
        assert_eq!(device_width(1_000_000), 6);
        assert_eq!(device_width(1_000_001), 7);
    }

    #[test]
    fn socket_io_frames() {
        assert!(matches!(socket_io_event("2"), Event::Ping));
        assert!(matches!(socket_io_event(r#"42["durable",17]"#), Event::Durable(17)));
        assert!(matches!(socket_io_event(r#"42["other",17]"#), Event::Other));
        assert!(matches!(socket_io_event(r#"40{"sid":"x"}"#), Event::Other));
        assert!(matches!(socket_io_event(r#"0{"sid":"x","pingInterval":25000}"#), Event::Other));
        assert_eq!(Protocol::SocketIo.byte(), Message::Text(r#"42["b","."]"#.into()));
        assert_eq!(Protocol::Holdfast.byte(), Message::Binary(Bytes::from_static(b".")));
    }

    #[test]
    fn one_source_per_10k() {
        assert_eq!(default_sources(1).len(), 1);
        assert_eq!(default_sources(10_000).len(), 1);
        assert_eq!(default_sources(10_001).len(), 2);
        assert_eq!(default_sources(1_000_000).len(), 100);
        assert_eq!(default_sources(1)[0], IpAddr::from([127, 0, 0, 2]));
    }

    /// A held phone is mostly its task; tokio allocates tasks in multiples of 128 bytes (with
    /// its 80-byte header and trailer), so a phone future of at most 536 bytes takes 640. A
    /// change that grows it past that costs 128 bytes per phone: look at what it keeps across
    /// its awaits (`RUSTC_BOOTSTRAP=1 cargo rustc -p mobile-sim -- -Zprint-type-sizes`).
    #[test]
    fn a_held_phone_stays_small() {
        let fleet = fleet_of_one();
        let task = phone(fleet.shared.clone(), 0);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 536, "a phone's task state grew to {size} bytes");
    }

    /// A fleet of one phone with the default settings, not started.
    pub(super) fn fleet_of_one() -> Fleet {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["mobile-sim", "--target", "ws://127.0.0.1:1/"]).unwrap();
        let crate::cli::Command::Phones(args) = cli.into_command() else { unreachable!() };
        let plan = Plan {
            protocol: args.protocol,
            common: args.common,
            total: 1,
            rate: 0.0,
            targets: Vec::new(),
            sources: Vec::new(),
            connector: Connector::new(None, Duration::from_secs(1), None, MAX_MESSAGE),
            device_key: None,
            tokens: None,
            on_host_runtime: false,
            io_batch_us: 0,
            width: 6,
        };
        Fleet::new(plan, Arc::new(Stats::default()), 0, 1, Instant::now())
    }

    #[test]
    fn the_phase_only_moves_on() {
        let cell = PhaseCell::default();
        assert_eq!(cell.get(), Phase::Run);
        let deadline = Instant::now();
        cell.set(Phase::Drain { deadline });
        assert_eq!(cell.get(), Phase::Drain { deadline });
        cell.set(Phase::Run);
        assert_eq!(cell.get(), Phase::Drain { deadline });
        // The close keeps the drain's deadline.
        cell.set(Phase::Close { deadline: deadline + Duration::from_secs(9) });
        assert_eq!(cell.get(), Phase::Close { deadline });
        cell.set(Phase::Drain { deadline });
        assert_eq!(cell.get(), Phase::Close { deadline });
        cell.set(Phase::Stop);
        assert_eq!(cell.get(), Phase::Stop);
    }
}
