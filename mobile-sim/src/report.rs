//! The final report: what was attempted, what held, how fast handshakes were, what was sent and
//! confirmed durable, what went wrong, what a held connection costs in memory and mobile-sim's own
//! CPU, and (with --verify)
//! whether the persisted totals match. Printed as text, or as JSON with --json; --html renders it
//! as a page, --per-device writes every device's totals.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::CommonArgs;
use crate::run::{End, Sample};
use crate::stats::{Cpu, DeviceTotals, Memory, Snapshot};
use crate::verify::{Failure, Verification};

#[derive(Debug, Serialize)]
pub struct Report {
    /// "phones" or "gateways".
    pub mode: &'static str,
    pub targets: Vec<String>,
    /// Phones, or sessions in gateways mode.
    pub devices: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateways: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub links_per_gateway: Option<u64>,
    /// Processes that held connections (1 without workers).
    pub processes: u64,
    /// What ran the phones (`--engine`): "host-runtime" or "tokio"; absent for gateways.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<&'static str>,
    pub end: End,
    pub run_seconds: f64,
    /// From the stop until every byte sent was confirmed durable (or the drain's deadline).
    pub drain_seconds: f64,
    /// Then until every connection was closed.
    pub close_seconds: f64,
    pub connections: Connections,
    pub connect_rate: ConnectRate,
    pub handshake_ms: Latency,
    pub bytes: Bytes,
    pub errors: BTreeMap<String, u64>,
    pub error_examples: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
    /// mobile-sim's own CPU while it held its connections (absent when `/proc/self/stat` could
    /// not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// The verdict: every check held (the connection rules, and the verification's when asked).
    pub ok: bool,
    /// Every rule that did not hold, connection rules first, then the verification's.
    pub failures: Vec<Failure>,
    pub timeline: Vec<Sample>,
    #[serde(skip)]
    pub histogram: Option<Histogram<u64>>,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    /// Established connections lost other than by our close.
    pub dropped: u64,
    /// Connections up when the run phase ended.
    pub held_at_end_of_run: u64,
}

#[derive(Debug, Serialize)]
pub struct ConnectRate {
    /// Seconds from the start until every phone (link) was connected at once, if that happened.
    pub all_connected_after_s: Option<f64>,
    /// Connections (phones, or links) divided by that time.
    pub average_per_s: Option<f64>,
    /// The most connections established per second (over windows of 0.5 to 1 s).
    pub peak_per_s: f64,
}

#[derive(Debug, Serialize, Default)]
pub struct Latency {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize)]
pub struct Bytes {
    pub sent: u64,
    pub durable: u64,
    /// Sent but never confirmed durable.
    pub unconfirmed: u64,
}

#[derive(Debug, Serialize)]
pub struct MemoryReport {
    pub rss_before_bytes: u64,
    pub rss_held_bytes: u64,
    pub held: u64,
    /// Resident memory per held connection (phone, or session in gateways mode).
    pub per_held_bytes: Option<f64>,
}

/// mobile-sim's own CPU (utime + stime from `/proc/self/stat`, read by each process that held
/// connections, summed over them and the parent of worker processes) over the hold window: from
/// the moment each process had all its connections up to the end of the run phase. The load
/// generator must not be what starves the system it loads.
#[derive(Debug, Serialize, PartialEq)]
pub struct CpuReport {
    /// Processes measured.
    pub processes: u64,
    /// The window (the longest over processes).
    pub window_seconds: f64,
    /// CPU seconds in the window, user + system.
    pub cpu_seconds: f64,
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// Cores used over the window (each process's CPU over its window, summed).
    pub cores: f64,
    /// Bytes sent within the window.
    pub bytes_sent: u64,
    /// Microseconds of CPU per byte sent within the window (all of the window's CPU, holding
    /// included).
    pub us_per_byte_sent: Option<f64>,
    /// Connections (phones, or sessions in gateways mode) held at the window's end.
    pub held: u64,
    /// Microseconds of CPU per held connection per second (all of the window's CPU, sending
    /// included; with idle phones, what holding one costs).
    pub us_per_held_per_s: Option<f64>,
    /// CPU seconds spent before the window: connecting (the ramp).
    pub connect_cpu_seconds: f64,
    /// Processes whose connections were never all up at once: their window is their whole run
    /// phase, the ramp included.
    pub ramp_included: u64,
}

impl From<Cpu> for CpuReport {
    fn from(c: Cpu) -> Self {
        Self {
            processes: c.processes,
            window_seconds: c.window_seconds,
            cpu_seconds: c.cpu_seconds(),
            user_seconds: c.user_seconds,
            system_seconds: c.system_seconds,
            cores: c.cores,
            bytes_sent: c.bytes_sent,
            us_per_byte_sent: c.us_per_byte_sent(),
            held: c.held,
            us_per_held_per_s: c.us_per_held_per_s(),
            connect_cpu_seconds: c.connect_cpu_seconds,
            ramp_included: c.ramp_included,
        }
    }
}

/// Everything a mode hands over to build its report.
pub struct Parts {
    pub mode: &'static str,
    pub engine: Option<&'static str>,
    pub targets: Vec<String>,
    pub devices: u64,
    /// Connections wanted at once: phones, or gateways x links.
    pub connections: u64,
    pub gateways: Option<u64>,
    pub links_per_gateway: Option<u64>,
    pub processes: u64,
    pub end: End,
    pub run: std::time::Duration,
    pub drain: std::time::Duration,
    pub close: std::time::Duration,
    pub at_end_of_run: Snapshot,
    pub last: Snapshot,
    pub histogram: Histogram<u64>,
    pub memory: Option<Memory>,
    /// mobile-sim's own CPU over the hold window.
    pub cpu: Option<Cpu>,
    pub samples: Vec<Sample>,
    pub all_connected_after: Option<std::time::Duration>,
    pub peak_connect_rate: f64,
}

impl Report {
    /// Builds the report; `totals` are the devices' final totals (bytes are summed from them).
    pub fn new(p: Parts, totals: &[(String, DeviceTotals)]) -> Self {
        let h = &p.histogram;
        let ms = |micros: u64| micros as f64 / 1000.0;
        let handshake_ms = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                count: h.len(),
                p50: ms(h.value_at_quantile(0.50)),
                p90: ms(h.value_at_quantile(0.90)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
                mean: h.mean() / 1000.0,
            }
        };
        let sent: u64 = totals.iter().map(|(_, t)| t.sent).sum();
        let durable: u64 = totals.iter().map(|(_, t)| t.durable).sum();
        let unconfirmed: u64 = totals.iter().map(|(_, t)| t.sent.saturating_sub(t.durable)).sum();
        let all = p.all_connected_after.map(|d| d.as_secs_f64());
        let s = &p.last;
        Self {
            mode: p.mode,
            engine: p.engine,
            targets: p.targets,
            devices: p.devices,
            gateways: p.gateways,
            links_per_gateway: p.links_per_gateway,
            processes: p.processes,
            end: p.end,
            run_seconds: p.run.as_secs_f64(),
            drain_seconds: p.drain.as_secs_f64(),
            close_seconds: p.close.as_secs_f64(),
            connections: Connections {
                attempted: s.attempts,
                established: s.established,
                failed: s.failed,
                dropped: s.dropped,
                held_at_end_of_run: p.at_end_of_run.connected,
            },
            connect_rate: ConnectRate {
                all_connected_after_s: all,
                average_per_s: all.filter(|&a| a > 0.0).map(|a| p.connections as f64 / a),
                peak_per_s: p.peak_connect_rate,
            },
            handshake_ms,
            bytes: Bytes { sent, durable, unconfirmed },
            errors: s.errors.iter().map(|(k, e)| (k.clone(), e.count)).collect(),
            error_examples: s.errors.iter().map(|(k, e)| (k.clone(), e.example.clone())).collect(),
            memory: p.memory.map(|m| MemoryReport {
                rss_before_bytes: m.rss_before,
                rss_held_bytes: m.rss_held,
                held: m.held,
                per_held_bytes: m.per_held(),
            }),
            cpu: p.cpu.map(CpuReport::from),
            verification: None,
            ok: false,
            failures: Vec::new(),
            timeline: p.samples,
            histogram: Some(p.histogram),
        }
    }

    /// The connection rules: every connection (phone, or trunk link) was up at once at some
    /// point, and failed attempts and drops stay within the caller's bounds. Then the
    /// verification's rules, if it ran. Sets `ok` and `failures`.
    pub fn judge(&mut self, connections_wanted: u64, max_failed: u64, max_dropped: u64) {
        let mut failures = Vec::new();
        let c = &self.connections;
        let unit = if self.mode == "gateways" { "trunk links" } else { "phones" };
        if self.connect_rate.all_connected_after_s.is_none() {
            failures.push(Failure::new(
                "all-connected",
                format!(
                    "never all {} {unit} connected at once ({} established, {} held at the end of the run)",
                    group(connections_wanted),
                    group(c.established),
                    group(c.held_at_end_of_run)
                ),
            ));
        }
        if c.failed > max_failed {
            failures.push(Failure::new(
                "failed-connections",
                format!(
                    "{} connection attempts failed (allowed: {max_failed}, --max-failed)",
                    group(c.failed)
                ),
            ));
        }
        if c.dropped > max_dropped {
            failures.push(Failure::new(
                "dropped-connections",
                format!("{} connections dropped (allowed: {max_dropped}, --max-dropped)", group(c.dropped)),
            ));
        }
        if let Some(v) = &self.verification {
            failures.extend(v.failures.iter().cloned());
        }
        self.ok = failures.is_empty();
        self.failures = failures;
    }

    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let unit = if self.mode == "gateways" { "sessions" } else { "phones" };
        let _ = write!(o, "mobile-sim {}: {} {unit}", self.mode, group(self.devices));
        if let (Some(g), Some(k)) = (self.gateways, self.links_per_gateway) {
            let _ = write!(o, " on {} gateways x {k} links", group(g));
        }
        let _ = writeln!(
            o,
            " -> {} ({} process{}){}",
            self.targets.join(", "),
            self.processes,
            if self.processes == 1 { "" } else { "es" },
            self.engine.map(|e| format!(", phones on {e}")).unwrap_or_default()
        );
        let end = match self.end {
            End::Duration => "--duration reached",
            End::Messages => "all --messages sent",
            End::Interrupted => "interrupted",
        };
        let _ = writeln!(
            o,
            "run          {:.1} s ({end}); all durable {:.1} s after it, all closed {:.1} s later",
            self.run_seconds, self.drain_seconds, self.close_seconds
        );
        let c = &self.connections;
        let _ = writeln!(
            o,
            "connections  attempted {}  established {}  failed {}  dropped {}  held at end of run {}",
            group(c.attempted),
            group(c.established),
            group(c.failed),
            group(c.dropped),
            group(c.held_at_end_of_run)
        );
        let r = &self.connect_rate;
        let all = match (r.all_connected_after_s, r.average_per_s) {
            (Some(t), Some(rate)) => format!("all connected after {t:.2} s ({} /s)", group(rate as u64)),
            (Some(t), None) => format!("all connected after {t:.2} s"),
            _ => "never all connected at once".into(),
        };
        let _ = writeln!(o, "connect rate {all}; peak {} /s", group(r.peak_per_s as u64));
        let h = &self.handshake_ms;
        if h.count > 0 {
            let _ = writeln!(
                o,
                "handshake    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} handshakes, TCP connect to WebSocket upgraded)",
                h.p50,
                h.p90,
                h.p99,
                h.max,
                group(h.count)
            );
        } else {
            let _ = writeln!(o, "handshake    none completed");
        }
        let b = &self.bytes;
        let _ = writeln!(
            o,
            "bytes        sent {}  confirmed durable {}  unconfirmed {}",
            group(b.sent),
            group(b.durable),
            group(b.unconfirmed)
        );
        if self.errors.is_empty() {
            let _ = writeln!(o, "errors       none");
        } else {
            let _ = writeln!(o, "errors");
            for (kind, count) in &self.errors {
                let example = self.error_examples.get(kind).map(String::as_str).unwrap_or("");
                let _ = writeln!(o, "  {kind:<22} {:>10}  e.g. {example}", group(*count));
            }
        }
        if let Some(m) = &self.memory {
            match m.per_held_bytes {
                Some(per) => {
                    let _ = writeln!(
                        o,
                        "memory       {} per held {} (RSS {} -> {} holding {})",
                        human_bytes(per),
                        unit.trim_end_matches('s'),
                        human_bytes(m.rss_before_bytes as f64),
                        human_bytes(m.rss_held_bytes as f64),
                        group(m.held)
                    );
                }
                None => {
                    let _ = writeln!(o, "memory       nothing held at the end of the run: no measurement");
                }
            }
        }
        if let Some(c) = &self.cpu {
            o.push_str(&cpu_line(c, unit.trim_end_matches('s')));
        }
        if let Some(v) = &self.verification {
            o.push_str(&v.to_text());
        }
        if self.ok {
            let _ = writeln!(o, "verdict      OK: every check held");
        } else {
            let _ = writeln!(o, "verdict      FAILED:");
            for f in &self.failures {
                let _ = writeln!(o, "  {}: {}", f.rule, f.detail);
            }
        }
        o
    }
}

/// The text report's `cpu` line.
fn cpu_line(c: &CpuReport, unit: &str) -> String {
    let per_byte = match c.us_per_byte_sent {
        Some(us) => format!("{us:.2} µs per byte sent ({} bytes)", group(c.bytes_sent)),
        None => "no byte sent".into(),
    };
    let per_held = match c.us_per_held_per_s {
        Some(us) => format!("{us:.3} µs per held {unit} per second ({} held)", group(c.held)),
        None => format!("no {unit} held"),
    };
    let mut o = format!(
        "cpu          {:.4} cores over {:.1} s (user {:.2} s, system {:.2} s): {per_byte}, {per_held}; \
         connecting {:.2} s ({} process{})\n",
        c.cores,
        c.window_seconds,
        c.user_seconds,
        c.system_seconds,
        c.connect_cpu_seconds,
        c.processes,
        if c.processes == 1 { "" } else { "es" }
    );
    if c.ramp_included > 0 {
        let _ = writeln!(
            o,
            "             ({} process{} never had all connections up: {} window includes the ramp)",
            c.ramp_included,
            if c.ramp_included == 1 { "" } else { "es" },
            if c.ramp_included == 1 { "its" } else { "their" }
        );
    }
    o
}

/// 1234567 -> "1,234,567" (one implementation for every binary's reports, in cli-env).
pub use cli_env::group;

pub fn human_bytes(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.2} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", b / 1024.0 / 1024.0 / 1024.0)
    }
}

/// The end of every run: verification, the files asked for, the report on stdout, the status.
/// `connections_wanted`: phones, or gateways x links.
pub async fn conclude(
    mut report: Report,
    connections_wanted: u64,
    totals: &[(String, DeviceTotals)],
    common: &CommonArgs,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<ExitCode> {
    let mut verify_error = None;
    if common.verify.verify {
        let expected = report.devices;
        match crate::verify::verify(&common.verify, &common.device_prefix, expected, totals, tls).await {
            Ok(v) => report.verification = Some(v),
            Err(e) => verify_error = Some(e),
        }
    }
    report.judge(connections_wanted, common.max_failed, common.max_dropped);
    if let Some(path) = &common.output.per_device {
        write_per_device(path, totals).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &common.output.html {
        std::fs::write(path, crate::html::render(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if common.output.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    out.flush()?;
    if let Some(e) = verify_error {
        return Err(e.context("verification could not be carried out"));
    }
    Ok(if report.ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn write_per_device(path: &std::path::Path, totals: &[(String, DeviceTotals)]) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "device,sent,durable")?;
    for (device, t) in totals {
        writeln!(w, "{device},{},{}", t.sent, t.durable)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mobile-sim's own CPU reaches the report as data (typed JSON fields) and as text (and so
    /// the HTML page, which shows the text summary).
    #[test]
    fn own_cpu_is_reported() {
        use crate::stats::CpuMark;
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mark = |s: u64, ticks: (u64, u64), bytes_sent: u64, held: u64| CpuMark {
            at: t0 + Duration::from_secs(s),
            ticks,
            bytes_sent,
            held,
        };
        // Two workers: 0.2 and 0.1 cores; 4 CPU seconds for 8,000 bytes and 20,000 phone-seconds.
        let mut cpu = Cpu::measure(
            100,
            mark(0, (0, 0), 0, 0),
            Some(mark(2, (50, 50), 0, 1000)),
            mark(12, (200, 100), 5000, 1000),
        );
        cpu.add(&Cpu::measure(
            100,
            mark(0, (0, 0), 0, 0),
            Some(mark(1, (10, 10), 0, 500)),
            mark(21, (110, 110), 3000, 500),
        ));
        let parts = Parts {
            mode: "phones",
            engine: Some("tokio"),
            targets: vec!["ws://127.0.0.1:1/ws".into()],
            devices: 2000,
            connections: 2000,
            gateways: None,
            links_per_gateway: None,
            processes: 2,
            end: End::Duration,
            run: Duration::from_secs(22),
            drain: Duration::from_secs(1),
            close: Duration::from_secs(1),
            at_end_of_run: Snapshot::default(),
            last: Snapshot::default(),
            histogram: crate::stats::new_histogram(),
            memory: None,
            cpu: Some(cpu),
            samples: Vec::new(),
            all_connected_after: Some(Duration::from_secs(2)),
            peak_connect_rate: 1000.0,
        };
        let report = Report::new(parts, &[]);
        let json = serde_json::to_value(&report).unwrap();
        let c = &json["cpu"];
        assert_eq!(c["processes"], 2);
        assert!((c["cores"].as_f64().unwrap() - 0.3).abs() < 1e-9);
        assert!((c["cpu_seconds"].as_f64().unwrap() - 4.0).abs() < 1e-9);
        assert!((c["window_seconds"].as_f64().unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(c["bytes_sent"], 8000);
        assert!((c["us_per_byte_sent"].as_f64().unwrap() - 500.0).abs() < 1e-9);
        assert_eq!(c["held"], 1500);
        assert!((c["us_per_held_per_s"].as_f64().unwrap() - 200.0).abs() < 1e-9);
        assert!((c["connect_cpu_seconds"].as_f64().unwrap() - 1.2).abs() < 1e-9);
        assert_eq!(c["ramp_included"], 0);
        let text = report.to_text();
        assert!(
            text.contains(
                "cpu          0.3000 cores over 20.0 s (user 2.50 s, system 1.50 s): 500.00 µs per byte sent \
                 (8,000 bytes), 200.000 µs per held phone per second (1,500 held); connecting 1.20 s (2 processes)"
            ),
            "{text}"
        );
        assert!(crate::html::render(&report).contains("200.000 µs per held phone per second"));
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(2048.0), "2.00 KiB");
    }
}
