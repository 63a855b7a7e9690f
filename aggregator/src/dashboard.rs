//! The live dashboard's data: once a second a sampler reads this process's metrics and state into
//! one JSON snapshot (sessions direct and through trunks, gateways and their links, rates, flush
//! lag, refusals). `/api/dashboard` answers the latest one; `/api/dashboard/events` streams them
//! as server-sent events, the first event carrying the last few minutes for the charts.
//!
//! Everything here is per process: with `--workers N` each worker samples its own connections,
//! and a dashboard shows the worker that accepted its connection.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::body::{Bytes, Frame};
use serde::Serialize;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::MissedTickBehavior;

use crate::config::Settings;
use crate::gateways::{GatewayView, Gateways};
use crate::metrics::Metrics;

/// How often a snapshot is taken (and streamed).
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Snapshots' chart points kept for a dashboard that opens: five minutes at one a second.
pub const HISTORY_POINTS: usize = 300;
/// A persisted-bytes rate older than this is not shown (the flusher refreshes the totals every
/// 10 s; three missed refreshes mean the database is not answering the scan).
const PERSISTED_RATE_MAX_AGE: Duration = Duration::from_secs(30);

/// The numbers the dashboard charts, one point a second.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Point {
    /// Unix time, milliseconds.
    pub t: u64,
    pub direct: u64,
    pub trunk: u64,
    /// Payload bytes a second from direct phones.
    pub phone_bps: f64,
    /// Count entries a second from trunks (each is a session whose count grew, or a replay).
    pub reports_ps: f64,
    /// Bytes a second the database's total grew by, over the flusher's last summary interval.
    pub persisted_bps: Option<f64>,
    /// Largest flush lag committed in the last second (none when nothing was flushed).
    pub lag_ms: Option<f64>,
    /// Connections and links refused a second.
    pub refused_ps: f64,
}

/// What the sampler shares with the routes.
pub struct Dashboard {
    latest: watch::Sender<Bytes>,
    history: Mutex<VecDeque<Point>>,
    streams: Arc<Semaphore>,
    max_gateways: usize,
    /// The last two summaries of the database (when, total bytes).
    persisted: Mutex<[Option<(Instant, u64)>; 2]>,
}

impl Dashboard {
    pub fn new(settings: &Settings) -> Self {
        let (latest, _) = watch::channel(Bytes::from_static(b"{}"));
        Dashboard {
            latest,
            history: Mutex::new(VecDeque::with_capacity(HISTORY_POINTS)),
            streams: Arc::new(Semaphore::new(settings.dashboard_streams)),
            max_gateways: settings.dashboard_gateways,
            persisted: Mutex::new([None, None]),
        }
    }

    /// The latest snapshot (JSON).
    pub fn latest(&self) -> Bytes {
        self.latest.borrow().clone()
    }

    /// The flusher read the database's total: `bytes`.
    pub fn persisted(&self, bytes: u64) {
        let mut p = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        p[0] = p[1];
        p[1] = Some((Instant::now(), bytes));
    }

    fn persisted_rate(&self) -> Option<f64> {
        let p = *self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        let ((t0, b0), (t1, b1)) = (p[0]?, p[1]?);
        let dt = t1.duration_since(t0).as_secs_f64();
        (dt > 0.0 && t1.elapsed() < PERSISTED_RATE_MAX_AGE).then(|| b1.saturating_sub(b0) as f64 / dt)
    }

    fn history_json(&self) -> Bytes {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let points: Vec<&Point> = history.iter().collect();
        Bytes::from(serde_json::to_vec(&serde_json::json!({ "history": points })).unwrap_or_default())
    }
}

/// The latest committed flush, and the largest flush lag since the dashboard last looked (the
/// flusher records it; the compactor reads when it was).
#[derive(Default)]
pub struct LastFlush {
    pub rows: AtomicU64,
    pub lag_us: AtomicU64,
    pub duration_us: AtomicU64,
    /// Largest lag committed since the dashboard's sampler last took it (then reset to 0).
    pub max_lag_us: AtomicU64,
    /// `Shared::now_ms` of the commit.
    pub at_ms: AtomicU64,
}

impl LastFlush {
    pub fn record(&self, now_ms: u64, rows: usize, lag: Option<Duration>, duration: Duration) {
        self.rows.store(rows as u64, Ordering::Relaxed);
        self.duration_us.store(duration.as_micros() as u64, Ordering::Relaxed);
        if let Some(lag) = lag {
            let us = lag.as_micros() as u64;
            self.lag_us.store(us, Ordering::Relaxed);
            self.max_lag_us.fetch_max(us, Ordering::Relaxed);
        }
        self.at_ms.store(now_ms, Ordering::Relaxed);
    }
}

/// What the sampler reads, and nothing more: it is a task of its own, given these by the service
/// (lib.rs) rather than the whole shared state.
pub struct Sources {
    pub dashboard: Arc<Dashboard>,
    pub metrics: Metrics,
    pub gateways: Arc<Gateways>,
    pub last_flush: Arc<LastFlush>,
    /// The process's clock: `Shared::now_ms` counts from it, and so does [`LastFlush::at_ms`].
    pub started: Instant,
    /// The store's kind (`Store::kind`).
    pub store: &'static str,
    pub worker: Option<usize>,
    pub flush_interval_ms: u64,
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Serialize)]
struct Snapshot {
    t: u64,
    uptime_s: f64,
    store: &'static str,
    worker: Option<usize>,
    point: Point,
    sessions: Sessions,
    totals: Totals,
    flush: FlushView,
    refused: Reasons,
    closed_bad_input: Reasons,
    /// The busiest gateways (by sessions), at most `--dashboard-gateways`.
    gateways: Vec<GatewayJson>,
    /// Every gateway known here, listed or not.
    gateways_total: usize,
}

#[derive(Serialize)]
struct Sessions {
    direct: u64,
    trunk: u64,
    gateways_up: u64,
    trunk_links: u64,
}

#[derive(Serialize)]
struct Totals {
    phone_bytes: u64,
    trunk_count_reports: u64,
    persisted_bytes: i64,
    persisted_sessions: i64,
    flushes: u64,
    flush_rows: u64,
    db_errors: u64,
}

#[derive(Serialize)]
struct FlushView {
    interval_ms: u64,
    last_rows: u64,
    last_lag_ms: f64,
    last_duration_ms: f64,
    /// Seconds since the last commit (none before the first).
    last_ago_s: Option<f64>,
    ledger_entries: i64,
}

#[derive(Serialize)]
struct Reasons {
    total: u64,
    by_reason: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct GatewayJson {
    number: u32,
    name: String,
    up: bool,
    /// Open sessions seen here (a lower bound when `untracked` > 0).
    sessions: u64,
    untracked: u64,
    opened: u64,
    closed: u64,
    count_reports: u64,
    down_s: Option<f64>,
    links: Vec<LinkJson>,
}

#[derive(Serialize)]
struct LinkJson {
    index: u8,
    peer: String,
    up_s: f64,
}

/// Counters whose rates are charted, as last read.
#[derive(Clone, Copy)]
struct Counters {
    at: Instant,
    phone_bytes: u64,
    reports: u64,
    refused: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn per_second(now: u64, before: u64, dt: f64) -> f64 {
    if dt > 0.0 {
        now.saturating_sub(before) as f64 / dt
    } else {
        0.0
    }
}

/// `Shared::now_ms`: milliseconds since `started`.
fn now_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Takes one snapshot; `prev` holds the counters of the last one (for rates).
fn sample(sources: &Sources, prev: &mut Option<Counters>) -> (Snapshot, Point) {
    use std::sync::atomic::Ordering::Relaxed;
    let m = &sources.metrics;
    let (refused, refused_total) = m.refused_tally.read();
    let (bad_input, bad_input_total) = m.bad_input_tally.read();
    let now = Counters {
        at: Instant::now(),
        phone_bytes: m.phone_bytes.get(),
        reports: m.trunk_count_reports.get(),
        refused: refused_total,
    };
    let before = prev.replace(now).unwrap_or(now);
    let dt = now.at.duration_since(before.at).as_secs_f64();

    let mut gateways = sources.gateways.views();
    let up = |g: &GatewayView| !g.links.is_empty();
    let trunk: u64 = gateways.iter().filter(|g| up(g)).map(|g| g.sessions).sum();
    let trunk_links = gateways.iter().map(|g| g.links.len() as u64).sum();
    let gateways_up = gateways.iter().filter(|g| up(g)).count() as u64;
    let gateways_total = gateways.len();
    // The ones that are up first, busiest first.
    gateways.sort_by_key(|g| (!up(g), std::cmp::Reverse(g.sessions), g.number));
    gateways.truncate(sources.dashboard.max_gateways);

    let direct = m.direct_sessions.get().max(0) as u64;
    let f = &sources.last_flush;
    let max_lag_us = f.max_lag_us.swap(0, Relaxed);
    let flushed_at = f.at_ms.load(Relaxed);
    let point = Point {
        t: unix_ms(),
        direct,
        trunk,
        phone_bps: per_second(now.phone_bytes, before.phone_bytes, dt),
        reports_ps: per_second(now.reports, before.reports, dt),
        persisted_bps: sources.dashboard.persisted_rate(),
        lag_ms: (max_lag_us > 0).then(|| ms(max_lag_us)),
        refused_ps: per_second(now.refused, before.refused, dt),
    };
    let snapshot = Snapshot {
        t: point.t,
        uptime_s: sources.started.elapsed().as_secs_f64(),
        store: sources.store,
        worker: sources.worker,
        point,
        sessions: Sessions { direct, trunk, gateways_up, trunk_links },
        totals: Totals {
            phone_bytes: now.phone_bytes,
            trunk_count_reports: now.reports,
            persisted_bytes: m.persisted_bytes.get(),
            persisted_sessions: m.persisted_sessions.get(),
            flushes: m.flushes.get(),
            flush_rows: m.flush_rows.get(),
            db_errors: m.db_errors.get(),
        },
        flush: FlushView {
            interval_ms: sources.flush_interval_ms,
            last_rows: f.rows.load(Relaxed),
            last_lag_ms: ms(f.lag_us.load(Relaxed)),
            last_duration_ms: ms(f.duration_us.load(Relaxed)),
            last_ago_s: (flushed_at > 0)
                .then(|| now_ms(sources.started).saturating_sub(flushed_at) as f64 / 1000.0),
            ledger_entries: m.ledger_entries.get(),
        },
        refused: Reasons { total: refused_total, by_reason: refused },
        closed_bad_input: Reasons { total: bad_input_total, by_reason: bad_input },
        gateways: gateways
            .into_iter()
            .map(|g| GatewayJson {
                number: g.number,
                up: !g.links.is_empty(),
                sessions: g.sessions,
                untracked: g.untracked,
                opened: g.opened,
                closed: g.closed,
                count_reports: g.count_reports,
                down_s: g.down_since.map(|t| t.elapsed().as_secs_f64()),
                links: g
                    .links
                    .iter()
                    .map(|l| LinkJson {
                        index: l.index,
                        peer: l.peer.clone(),
                        up_s: l.since.elapsed().as_secs_f64(),
                    })
                    .collect(),
                name: g.name,
            })
            .collect(),
        gateways_total,
    };
    (snapshot, point)
}

/// Samples once a second until the process shuts down.
pub async fn run(sources: Sources) {
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut shutdown = sources.shutdown.clone();
    let mut prev = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shutdown::requested(&mut shutdown) => return,
        }
        let (snapshot, point) = sample(&sources, &mut prev);
        let d = &sources.dashboard;
        {
            let mut history = d.history.lock().unwrap_or_else(|e| e.into_inner());
            if history.len() == HISTORY_POINTS {
                history.pop_front();
            }
            history.push_back(point);
        }
        // Serialising plain structs cannot fail; an empty body would only blank one second.
        d.latest.send_replace(Bytes::from(serde_json::to_vec(&snapshot).unwrap_or_default()));
    }
}

/// A server-sent event with `data` (one line of JSON) and an optional event name.
fn event(name: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// The body of `/api/dashboard/events`: what the stream's task sends, until the client leaves or
/// the process shuts down (then the body ends, so the connection can close gracefully).
pub struct EventStream {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|next| next.map(|data| Ok(Frame::data(data))))
    }
}

/// Starts a stream of snapshots, until `shutdown`; `None` when `--dashboard-streams` streams are
/// already open.
pub fn events(dashboard: &Dashboard, shutdown: &watch::Receiver<bool>) -> Option<EventStream> {
    let permit = dashboard.streams.clone().try_acquire_owned().ok()?;
    // Two events in flight: a client that stops reading holds up only its own task.
    let (tx, rx) = mpsc::channel::<Bytes>(2);
    let mut latest = dashboard.latest.subscribe();
    let mut shutdown = shutdown.clone();
    let first = {
        let mut first = b"retry: 2000\n\n".to_vec();
        first.extend_from_slice(&event(Some("history"), &dashboard.history_json()));
        first.extend_from_slice(&event(None, &latest.borrow_and_update()));
        Bytes::from(first)
    };
    tokio::spawn(async move {
        let _permit = permit;
        let mut next = first;
        loop {
            tokio::select! {
                sent = tx.send(next) => if sent.is_err() { return },
                _ = crate::shutdown::requested(&mut shutdown) => return,
            }
            tokio::select! {
                changed = latest.changed() => if changed.is_err() { return },
                _ = crate::shutdown::requested(&mut shutdown) => return,
            }
            next = event(None, &latest.borrow_and_update());
        }
    });
    Some(EventStream { rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_as_server_sent_events() {
        assert_eq!(&event(None, b"{\"a\":1}")[..], b"data: {\"a\":1}\n\n");
        assert_eq!(&event(Some("history"), b"[]")[..], b"event: history\ndata: []\n\n");
    }

    #[test]
    fn rates_survive_a_first_sample_and_counter_resets() {
        assert_eq!(per_second(10, 10, 0.0), 0.0);
        assert_eq!(per_second(30, 10, 2.0), 10.0);
        assert_eq!(per_second(5, 10, 1.0), 0.0);
    }
}
