//! Prometheus metrics, served as text at `/metrics`, and the live figures the dashboard shows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Bounds (seconds) of the flush lag histograms: 1-2-5 steps, so that the goals a deployment
/// states (durable within 1 s, within 2 s) are bounds and a p99 can be read against them.
const LAG_BUCKETS: [f64; 14] =
    [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0];

/// Why a connection or link was refused; the label of `holdfast_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

/// Which kind of client; the label of per-path counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Path {
    pub path: &'static str,
}

/// Every metric of one aggregator process. Cheap to clone (shared atomics).
#[derive(Clone)]
pub struct Metrics {
    pub direct_sessions: Gauge,
    pub trunks: Gauge,
    pub gateways: Gauge,
    pub trunk_sessions_opened: Counter,
    pub trunk_sessions_closed: Counter,
    pub phone_bytes: Counter,
    pub trunk_count_reports: Counter,
    pub trunk_reports_over_quota: Counter,
    pub ledger_entries: Gauge,
    pub flushes: Counter,
    pub flush_rows: Counter,
    pub flushed_bytes: Counter,
    pub flush_lag: Histogram,
    pub row_lag: Histogram,
    pub flush_duration: Histogram,
    pub db_errors: Counter,
    pub refused_rows: Counter,
    pub folded_sessions: Counter,
    pub folded_boots: Counter,
    pub compactions: Counter,
    pub compacted_entries: Counter,
    pub compaction_duration: Histogram,
    pub journal_flights: Gauge,
    pub refused: Family<Reason, Counter>,
    pub closed_bad_input: Family<Reason, Counter>,
    pub persisted_bytes: Gauge,
    pub persisted_sessions: Gauge,
    /// The same counts as `refused` and `closed_bad_input`, readable by reason for the dashboard
    /// (a Prometheus family cannot be listed). Only refusal paths touch them, never a byte's.
    pub refused_tally: Tally,
    pub bad_input_tally: Tally,
}

/// Counts by reason; the reasons are the code's fixed strings, so the map stays small.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<BTreeMap<&'static str, u64>>>);

impl Tally {
    pub fn inc(&self, reason: &'static str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(reason).or_default() += 1;
    }

    /// Every reason with its count, and their sum.
    pub fn read(&self) -> (BTreeMap<&'static str, u64>, u64) {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let total = map.values().sum();
        (map, total)
    }
}

impl Metrics {
    pub fn new() -> (Self, Registry) {
        let m = Metrics {
            direct_sessions: Gauge::default(),
            trunks: Gauge::default(),
            gateways: Gauge::default(),
            trunk_sessions_opened: Counter::default(),
            trunk_sessions_closed: Counter::default(),
            phone_bytes: Counter::default(),
            trunk_count_reports: Counter::default(),
            trunk_reports_over_quota: Counter::default(),
            ledger_entries: Gauge::default(),
            flushes: Counter::default(),
            flush_rows: Counter::default(),
            flushed_bytes: Counter::default(),
            flush_lag: Histogram::new(LAG_BUCKETS.iter().copied()),
            row_lag: Histogram::new(LAG_BUCKETS.iter().copied()),
            flush_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            db_errors: Counter::default(),
            refused_rows: Counter::default(),
            folded_sessions: Counter::default(),
            folded_boots: Counter::default(),
            compactions: Counter::default(),
            compacted_entries: Counter::default(),
            compaction_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            journal_flights: Gauge::default(),
            refused: Family::default(),
            closed_bad_input: Family::default(),
            persisted_bytes: Gauge::default(),
            persisted_sessions: Gauge::default(),
            refused_tally: Tally::default(),
            bad_input_tally: Tally::default(),
        };
        let mut r = Registry::with_prefix("holdfast");
        r.register(
            "direct_sessions",
            "Phones connected straight to this aggregator",
            m.direct_sessions.clone(),
        );
        r.register("trunks", "Authenticated gateway trunk links", m.trunks.clone());
        r.register("gateways", "Gateways with at least one trunk link here", m.gateways.clone());
        r.register(
            "trunk_sessions_opened",
            "Session opens reported by trunks (replays included)",
            m.trunk_sessions_opened.clone(),
        );
        r.register(
            "trunk_sessions_closed",
            "Session closes reported by trunks (replays included)",
            m.trunk_sessions_closed.clone(),
        );
        r.register("phone_bytes", "Payload bytes received from direct phones", m.phone_bytes.clone());
        r.register(
            "trunk_count_reports",
            "Cumulative count entries received on trunks",
            m.trunk_count_reports.clone(),
        );
        r.register(
            "trunk_reports_over_quota",
            "Trunk reports not recorded: their session was beyond the gateway's --max-sessions-per-gateway",
            m.trunk_reports_over_quota.clone(),
        );
        r.register("ledger_entries", "Sessions waiting in the ledger for a commit", m.ledger_entries.clone());
        r.register("flushes", "Committed flushes", m.flushes.clone());
        r.register(
            "refused_rows",
            "Session reports not written (nor acknowledged) because their gateway boot was folded",
            m.refused_rows.clone(),
        );
        r.register(
            "folded_sessions",
            "Finished sessions folded into per-device totals by this process's compactor",
            m.folded_sessions.clone(),
        );
        r.register(
            "folded_boots",
            "Superseded gateway boots this process's compactor marked folded",
            m.folded_boots.clone(),
        );
        r.register(
            "compactions",
            "Compactions of the PostgreSQL journal this process committed",
            m.compactions.clone(),
        );
        r.register(
            "compacted_entries",
            "Reports this process's compactions merged from the journal into the sessions table",
            m.compacted_entries.clone(),
        );
        r.register(
            "compaction_duration_seconds",
            "Time a compaction's transaction took, its rests between statements included",
            m.compaction_duration.clone(),
        );
        r.register(
            "journal_flights",
            "Flushes waiting in the journal after this process's last compaction (durable, not yet merged)",
            m.journal_flights.clone(),
        );
        r.register("flush_rows", "Session rows written by committed flushes", m.flush_rows.clone());
        r.register(
            "flushed_bytes",
            "Bytes by which this process's flushes (SQLite) and journal compactions (PostgreSQL) grew the stored counts (replays add nothing)",
            m.flushed_bytes.clone(),
        );
        r.register(
            "flush_lag_seconds",
            "Age of the oldest report a flush committed, at commit (one per flush)",
            m.flush_lag.clone(),
        );
        r.register(
            "flush_row_lag_seconds",
            "Age of each committed row's oldest report, at commit (one per session row: what its phone waited)",
            m.row_lag.clone(),
        );
        r.register("flush_duration_seconds", "Time a flush's transaction took", m.flush_duration.clone());
        r.register("db_errors", "Flushes whose transaction failed (they are retried)", m.db_errors.clone());
        r.register("refused", "Connections and links refused, by reason", m.refused.clone());
        r.register(
            "closed_bad_input",
            "Sessions closed for bad input, by reason",
            m.closed_bad_input.clone(),
        );
        r.register(
            "persisted_bytes",
            "Bytes the database holds over all sessions (its totals table, read every 2 s)",
            m.persisted_bytes.clone(),
        );
        r.register("persisted_sessions", "Sessions the database holds", m.persisted_sessions.clone());
        (m, r)
    }

    pub fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
        self.refused_tally.inc(reason);
    }

    pub fn bad_input(&self, reason: &'static str) {
        self.closed_bad_input.get_or_create(&Reason { reason }).inc();
        self.bad_input_tally.inc(reason);
    }
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
