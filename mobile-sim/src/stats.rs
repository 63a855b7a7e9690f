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

/// This process's CPU time so far: user and system clock ticks (utime and stime, fields 14 and
/// 15 of `/proc/self/stat`).
pub fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user = rest.next()?.parse().ok()?;
    let system = rest.next()?.parse().ok()?;
    Some((user, system))
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a configuration value, nothing else.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

/// mobile-sim's own CPU over the hold window of one process, or summed over worker processes:
/// what the load generator costs, so that a run can show it is not what starves the system it
/// loads. The window runs from the moment every connection of the process is up (the ramp left
/// out, its CPU counted apart) to the end of the run phase.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Cpu {
    /// Processes measured (summed over).
    pub processes: u64,
    /// Processes whose connections were never all up at once: their window starts at the first
    /// connection attempt, so it includes the ramp.
    pub ramp_included: u64,
    /// CPU seconds (user + system) from the first connection attempt to the window's start.
    pub connect_cpu_seconds: f64,
    /// The window's length (the longest over processes).
    pub window_seconds: f64,
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// Cores used over the window: each process's CPU seconds divided by its window, summed.
    pub cores: f64,
    /// Bytes the phones (sessions) sent within the window.
    pub bytes_sent: u64,
    /// Connections held, integrated over the window (held x seconds; the mean of the counts at
    /// the window's start and end, times its length).
    pub held_seconds: f64,
    /// Connections (phones, or sessions) held at the window's end.
    pub held: u64,
}

impl Cpu {
    pub fn add(&mut self, other: &Cpu) {
        self.processes += other.processes;
        self.ramp_included += other.ramp_included;
        self.connect_cpu_seconds += other.connect_cpu_seconds;
        self.window_seconds = self.window_seconds.max(other.window_seconds);
        self.user_seconds += other.user_seconds;
        self.system_seconds += other.system_seconds;
        self.cores += other.cores;
        self.bytes_sent += other.bytes_sent;
        self.held_seconds += other.held_seconds;
        self.held += other.held;
    }

    /// CPU seconds (user + system) within the window.
    pub fn cpu_seconds(&self) -> f64 {
        self.user_seconds + self.system_seconds
    }

    /// Microseconds of CPU per byte sent within the window (every cost of the window, holding
    /// included, over its bytes).
    pub fn us_per_byte_sent(&self) -> Option<f64> {
        (self.bytes_sent > 0).then(|| self.cpu_seconds() * 1e6 / self.bytes_sent as f64)
    }

    /// Microseconds of CPU per held connection per second (every cost of the window, sending
    /// included, over the connections held): with idle phones, what holding one costs.
    pub fn us_per_held_per_s(&self) -> Option<f64> {
        (self.held_seconds > 0.0).then(|| self.cpu_seconds() * 1e6 / self.held_seconds)
    }
}

/// One end of a CPU window: when, this process's CPU ticks (user, system), and its counters.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    pub at: std::time::Instant,
    pub ticks: (u64, u64),
    pub bytes_sent: u64,
    pub held: u64,
}

impl CpuMark {
    /// Now; `None` when `/proc/self/stat` cannot be read.
    pub fn now(bytes_sent: u64, held: u64) -> Option<Self> {
        Some(Self { at: std::time::Instant::now(), ticks: cpu_ticks()?, bytes_sent, held })
    }
}

impl Cpu {
    /// One process's figures from the marks at its first connection attempt (`spawned`), the
    /// window's start (`start`: `None` when its connections were never all up at once, and the
    /// window then starts at `spawned`) and its end. `hz`: clock ticks per second.
    pub fn measure(hz: u64, spawned: CpuMark, start: Option<CpuMark>, end: CpuMark) -> Self {
        let hz = hz.max(1) as f64;
        let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 / hz;
        let ramp_included = start.is_none();
        let start = start.unwrap_or(CpuMark { bytes_sent: 0, held: 0, ..spawned });
        let window = end.at.saturating_duration_since(start.at).as_secs_f64();
        let user_seconds = seconds(start.ticks.0, end.ticks.0);
        let system_seconds = seconds(start.ticks.1, end.ticks.1);
        Self {
            processes: 1,
            ramp_included: u64::from(ramp_included),
            connect_cpu_seconds: seconds(spawned.ticks.0 + spawned.ticks.1, start.ticks.0 + start.ticks.1),
            window_seconds: window,
            user_seconds,
            system_seconds,
            cores: if window > 0.0 { (user_seconds + system_seconds) / window } else { 0.0 },
            bytes_sent: end.bytes_sent.saturating_sub(start.bytes_sent),
            held_seconds: (start.held + end.held) as f64 / 2.0 * window,
            held: end.held,
        }
    }
}

/// Measures one process's [`Cpu`]: made just before the first connection attempt, started when
/// every connection of the process is up ([`CpuWindow::observe`]), finished at the end of the run
/// phase ([`CpuWindow::finish`]).
#[derive(Debug)]
pub struct CpuWindow {
    spawned: Option<CpuMark>,
    start: Option<CpuMark>,
}

impl CpuWindow {
    pub fn new() -> Self {
        Self { spawned: CpuMark::now(0, 0), start: None }
    }

    /// Starts the window the first time `all_connected` holds; `held`: connections up now.
    pub fn observe(&mut self, snap: &Snapshot, all_connected: bool, held: u64) {
        if all_connected && self.start.is_none() {
            self.start = CpuMark::now(snap.bytes_sent, held);
        }
    }

    /// Ends the window; `held`: connections up now. `None` when `/proc/self/stat` could not be
    /// read.
    pub fn finish(&self, snap: &Snapshot, held: u64) -> Option<Cpu> {
        let end = CpuMark::now(snap.bytes_sent, held)?;
        Some(Cpu::measure(clock_ticks_per_second(), self.spawned?, self.start, end))
    }
}

impl Default for CpuWindow {
    fn default() -> Self {
        Self::new()
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

    /// The figures the report shows (cores, microseconds per byte and per held phone per second)
    /// come from these sums: one process's window, then two workers' summed.
    #[test]
    fn cpu_over_a_window_and_over_workers() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mark = |s: u64, ticks: (u64, u64), bytes_sent: u64, held: u64| CpuMark {
            at: t0 + Duration::from_secs(s),
            ticks,
            bytes_sent,
            held,
        };
        // Connecting took 3 s of CPU (300 ticks); then 10 s holding 1,000 phones (900 at the end)
        // that sent 5,000 bytes, using 150 ticks of user and 50 of system time.
        let a = Cpu::measure(
            100,
            mark(0, (100, 50), 0, 0),
            Some(mark(5, (300, 150), 20, 1000)),
            mark(15, (450, 200), 5020, 900),
        );
        assert_eq!(a.processes, 1);
        assert_eq!(a.ramp_included, 0);
        assert!((a.connect_cpu_seconds - 3.0).abs() < 1e-9);
        assert!((a.window_seconds - 10.0).abs() < 1e-9);
        assert!((a.user_seconds - 1.5).abs() < 1e-9 && (a.system_seconds - 0.5).abs() < 1e-9);
        assert!((a.cores - 0.2).abs() < 1e-9);
        assert_eq!(a.bytes_sent, 5000);
        assert!((a.held_seconds - 9500.0).abs() < 1e-9);
        assert!((a.us_per_byte_sent().unwrap() - 400.0).abs() < 1e-9); // 2 s / 5,000 bytes
        assert!((a.us_per_held_per_s().unwrap() - 2e6 / 9500.0).abs() < 1e-9);

        // A second worker, never all connected: its window is its whole run, ramp included.
        let b = Cpu::measure(100, mark(0, (0, 0), 0, 0), None, mark(20, (100, 100), 1000, 500));
        assert_eq!(b.ramp_included, 1);
        assert_eq!(b.connect_cpu_seconds, 0.0);
        assert!((b.window_seconds - 20.0).abs() < 1e-9);
        assert!((b.cores - 0.1).abs() < 1e-9);
        assert!((b.held_seconds - 5000.0).abs() < 1e-9);

        let mut sum = Cpu::default();
        sum.add(&a);
        sum.add(&b);
        assert_eq!((sum.processes, sum.ramp_included, sum.bytes_sent, sum.held), (2, 1, 6000, 1400));
        assert!((sum.cores - 0.3).abs() < 1e-9, "cores add up over processes");
        assert!((sum.window_seconds - 20.0).abs() < 1e-9);
        assert!((sum.us_per_byte_sent().unwrap() - 4e6 / 6000.0).abs() < 1e-9);
        assert!((sum.us_per_held_per_s().unwrap() - 4e6 / 14500.0).abs() < 1e-9);
        assert_eq!(Cpu::default().us_per_byte_sent(), None);
        assert_eq!(Cpu::default().us_per_held_per_s(), None);
    }

    #[test]
    fn own_cpu_is_readable() {
        let (user, system) = cpu_ticks().unwrap();
        let spin = std::time::Instant::now();
        // Spinning uses CPU: within a few clock ticks it shows in /proc/self/stat.
        let moved = loop {
            std::hint::black_box(0);
            let (u, s) = cpu_ticks().unwrap();
            if u + s > user + system {
                break true;
            }
            if spin.elapsed() > std::time::Duration::from_secs(10) {
                break false;
            }
        };
        assert!(moved, "10 s of spinning did not show in /proc/self/stat");
        assert!(clock_ticks_per_second() > 0);
    }

    #[test]
    fn rss_is_readable() {
        assert!(rss_bytes().unwrap() > 0);
    }
}
