//! Live counters of one process, their snapshots (summed over worker processes), the handshake
//! latency histogram, per-device totals, and the process's resident memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::net::Failure;

/// Counters every phone (or gateway link) updates as it goes. Gauges go up and down.
#[derive(Debug)]
pub struct Stats {
    pub attempts: AtomicU64,
    pub established: AtomicU64,
    pub failed: AtomicU64,
    /// Established connections that ended other than by our own close.
    pub dropped: AtomicU64,
    /// Gauge: connections up now.
    pub connected: AtomicU64,
    /// Gauge: phones whose last attempt failed and that have not connected since.
    pub failing: AtomicU64,
    /// Phones (sessions) that have sent all their --messages.
    pub finished_sending: AtomicU64,
    /// Phones (sessions) that are completely done (closed after the drain, or gave up).
    pub done: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Sum of the devices' durable totals (wrapping adds of signed changes).
    pub bytes_durable: AtomicU64,
    errors: Mutex<BTreeMap<String, ErrorCount>>,
    handshakes: Mutex<Histogram<u64>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ErrorCount {
    pub count: u64,
    /// The text of the first error of this kind.
    pub example: String,
}

/// Microsecond latencies from 1 µs to one hour, 3 significant figures.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            attempts: AtomicU64::new(0),
            established: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failing: AtomicU64::new(0),
            finished_sending: AtomicU64::new(0),
            done: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_durable: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            handshakes: Mutex::new(new_histogram()),
        }
    }
}

impl Stats {
    pub fn error(&self, failure: &Failure) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        let entry = errors.entry(failure.kind.to_string()).or_default();
        entry.count += 1;
        if entry.example.is_empty() {
            entry.example = failure.detail.clone();
        }
    }

    pub fn handshake(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        self.handshakes.lock().unwrap_or_else(|e| e.into_inner()).saturating_record(micros);
    }

    pub fn histogram(&self) -> Histogram<u64> {
        self.handshakes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn add_durable(&self, old: u64, new: u64) {
        self.bytes_durable.fetch_add(new.wrapping_sub(old), Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            attempts: self.attempts.load(Relaxed),
            established: self.established.load(Relaxed),
            failed: self.failed.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            connected: self.connected.load(Relaxed),
            failing: self.failing.load(Relaxed),
            finished_sending: self.finished_sending.load(Relaxed),
            done: self.done.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_durable: self.bytes_durable.load(Relaxed),
            errors: self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// The counters at one moment; also what a worker reports to its parent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub attempts: u64,
    pub established: u64,
    pub failed: u64,
    pub dropped: u64,
    pub connected: u64,
    pub failing: u64,
    pub finished_sending: u64,
    pub done: u64,
    pub bytes_sent: u64,
    pub bytes_durable: u64,
    pub errors: BTreeMap<String, ErrorCount>,
}

impl Snapshot {
    pub fn add(&mut self, other: &Snapshot) {
        self.attempts += other.attempts;
        self.established += other.established;
        self.failed += other.failed;
        self.dropped += other.dropped;
        self.connected += other.connected;
        self.failing += other.failing;
        self.finished_sending += other.finished_sending;
        self.done += other.done;
        self.bytes_sent += other.bytes_sent;
        self.bytes_durable = self.bytes_durable.wrapping_add(other.bytes_durable);
        for (kind, e) in &other.errors {
            let entry = self.errors.entry(kind.clone()).or_default();
            entry.count += e.count;
            if entry.example.is_empty() {
                entry.example.clone_from(&e.example);
            }
        }
    }
}

/// A histogram as (value, count) pairs, to cross a process boundary.
pub fn histogram_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

pub fn histogram_add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        h.saturating_record_n(value, count);
    }
}

/// One device's totals: bytes sent over all its connections, and the sum over its connections of
/// the last durable value each was told.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    pub sent: AtomicU64,
    pub durable: AtomicU64,
}

/// A device's final totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTotals {
    pub sent: u64,
    pub durable: u64,
}

/// Resident memory of this process (VmRSS), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory measured around the held connections of one process (or summed over workers).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Memory {
    /// Resident memory before the first connection.
    pub rss_before: u64,
    /// Resident memory while `held` connections were up (at the end of the run phase).
    pub rss_held: u64,
    pub held: u64,
}

impl Memory {
    pub fn add(&mut self, other: &Memory) {
        self.rss_before += other.rss_before;
        self.rss_held += other.rss_held;
        self.held += other.held;
    }

    /// Bytes of resident memory per held connection.
    pub fn per_held(&self) -> Option<f64> {
        (self.held > 0).then(|| self.rss_held.saturating_sub(self.rss_before) as f64 / self.held as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::FailureKind;

    #[test]
    fn snapshots_add_up_and_keep_the_first_example() {
        let a = Stats::default();
        a.error(&Failure::new(FailureKind::Refused, "first"));
        a.error(&Failure::new(FailureKind::Refused, "second"));
        a.bytes_sent.fetch_add(5, Relaxed);
        a.add_durable(0, 4);
        a.add_durable(4, 3);
        let mut total = a.snapshot();
        let b = Stats::default();
        b.error(&Failure::new(FailureKind::Http(503), "busy"));
        b.bytes_sent.fetch_add(2, Relaxed);
        total.add(&b.snapshot());
        assert_eq!(total.bytes_sent, 7);
        assert_eq!(total.bytes_durable, 3);
        assert_eq!(total.errors["refused"], ErrorCount { count: 2, example: "first".into() });
        assert_eq!(total.errors["http 503"].count, 1);
    }

    #[test]
    fn histograms_cross_processes() {
        let mut h = new_histogram();
        for v in [10, 20, 20, 1_000_000] {
            h.record(v).unwrap();
        }
        let mut back = new_histogram();
        histogram_add_pairs(&mut back, &histogram_to_pairs(&h));
        assert_eq!(back.len(), 4);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
    }

    #[test]
    fn rss_is_readable() {
        assert!(rss_bytes().unwrap() > 0);
    }
}
