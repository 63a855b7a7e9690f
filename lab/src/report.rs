//! What a run found, as data (JSON), as text for people, and as an HTML page with charts over
//! time.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::kernel::Setting;

/// The tiers whose cost the lab measures, each a set of processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Gateways,
    MobileSim,
    Aggregator,
    Postgres,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Gateways, Tier::MobileSim, Tier::Aggregator, Tier::Postgres];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Gateways => "gateways",
            Tier::MobileSim => "mobile-sim",
            Tier::Aggregator => "aggregator",
            Tier::Postgres => "postgres",
        }
    }

    fn colour(self) -> &'static str {
        match self {
            Tier::Gateways => "#1f77b4",
            Tier::MobileSim => "#ff7f0e",
            Tier::Aggregator => "#2ca02c",
            Tier::Postgres => "#9467bd",
        }
    }
}

/// One tier's figures over the run.
#[derive(Debug, Clone, Serialize)]
pub struct TierFigures {
    pub tier: Tier,
    pub processes: u64,
    /// Cores used during the hold (CPU seconds / wall seconds).
    pub cores_during_hold: f64,
    /// Microseconds of this tier's CPU per phone byte made durable during the hold.
    pub us_per_phone_byte: Option<f64>,
    pub rss_before_phones_bytes: u64,
    pub rss_during_hold_bytes: u64,
    /// (RSS during the hold - RSS before the phones) / phones. `None` for PostgreSQL, whose
    /// processes share their buffers (each one's RSS counts the shared pages it touched).
    pub rss_per_phone_bytes: Option<f64>,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub phase: &'static str,
    /// Cores per tier over the last interval, in [`Tier::ALL`]'s order.
    pub cores: [f64; 4],
    pub rss_bytes: [u64; 4],
    /// Bytes the aggregator's committed flushes added, per second.
    pub durable_bytes_per_s: Option<f64>,
    pub ledger_entries: Option<f64>,
    pub sessions_opened: Option<f64>,
}

/// A figure the issue sets a goal for.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub what: &'static str,
    pub goal: String,
    pub measured: String,
    /// `None`: not measured (a probe had no answer).
    pub met: Option<bool>,
}

/// The fields of mobile-sim's JSON report that the lab reads (it has many more).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SimReport {
    /// Its verdict. A mobile-sim older than the verdict in its report (1bbef25, which `lab bench
    /// write-path` may drive next to an older aggregator) writes none: read as not ok, and its
    /// exit status is the verdict.
    #[serde(default)]
    pub ok: bool,
    pub end: String,
    pub processes: u64,
    /// The devices it played (phones, or virtual gateways' sessions).
    #[serde(default)]
    pub devices: u64,
    /// What ran the phones ("host-runtime" or "tokio").
    #[serde(default)]
    pub engine: Option<String>,
    /// The run phase, from the start (the ramp included) to the stop.
    #[serde(default)]
    pub run_seconds: f64,
    /// From the stop to every byte confirmed durable.
    pub drain_seconds: f64,
    /// Then to every connection closed.
    #[serde(default)]
    pub close_seconds: f64,
    pub connections: SimConnections,
    pub connect_rate: SimConnectRate,
    pub handshake_ms: SimLatency,
    pub bytes: SimBytes,
    pub verification: Option<SimVerification>,
    /// mobile-sim's own CPU while it held its connections (absent when it could not read it):
    /// the load generator's cost next to the servers' (`lab bench trunks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<SimCpu>,
    #[serde(default)]
    pub failures: Vec<serde_json::Value>,
    /// Once a second from the start (the drills read what was sent and confirmed while they
    /// broke something).
    #[serde(default, skip_serializing)]
    pub timeline: Vec<SimSample>,
}

impl SimReport {
    /// Its failed rules, `rule: detail`, one per line item.
    pub fn failure_lines(&self) -> Vec<String> {
        self.failures
            .iter()
            .map(|f| {
                let field = |k: &str| f.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_owned();
                format!("{}: {}", field("rule"), field("detail"))
            })
            .collect()
    }
}

/// One second of a mobile-sim run.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SimSample {
    /// Seconds since mobile-sim started.
    pub t: f64,
    pub bytes_sent: u64,
    pub bytes_durable: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SimConnections {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SimConnectRate {
    pub all_connected_after_s: Option<f64>,
    pub peak_per_s: f64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SimLatency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SimBytes {
    pub sent: u64,
    pub durable: u64,
    pub unconfirmed: u64,
}

/// The fields of mobile-sim's `cpu` that the lab reads: its hold window, from the moment it
/// had all its connections up to the end of the run phase.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct SimCpu {
    pub window_seconds: f64,
    pub cpu_seconds: f64,
    pub cores: f64,
    /// Bytes sent within the window, and µs of CPU per byte sent (`None`: none was sent).
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default)]
    pub us_per_byte_sent: Option<f64>,
    /// µs of CPU per held connection per second (`None`: none was held).
    #[serde(default)]
    pub us_per_held_per_s: Option<f64>,
    /// CPU seconds before the window: connecting (the ramp).
    #[serde(default)]
    pub connect_cpu_seconds: f64,
}

/// An older mobile-sim's report lacks some of these (1bbef25: `devices_expected`, `sent_bytes`,
/// `confirmed_bytes`): read as 0, which no check takes for a match.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SimVerification {
    pub devices_expected: u64,
    pub devices_checked: u64,
    pub devices_persisted: u64,
    pub sent_bytes: u64,
    pub confirmed_bytes: u64,
    pub lost_bytes: u64,
    pub double_counted_bytes: u64,
    pub unconfirmed_bytes: u64,
}

/// The lab's report of one `hold` run.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    pub phones: u64,
    pub gateways: u32,
    pub phones_per_gateway: u64,
    pub sim_processes: u64,
    pub links_per_gateway: u8,
    /// The niceness the gateways and mobile-sim ran at (the aggregator and PostgreSQL at 0).
    pub nice: i32,
    /// mobile-sim's connection attempts in flight at once, in all its processes.
    pub concurrent_connects: u64,
    /// mobile-sim's send tick (its phones' send times rounded up to it), milliseconds.
    pub send_tick_ms: u64,
    /// How long issuing every phone's token took before the phones started (`mobile-sim
    /// tokens`); `None`: mobile-sim signed each token as its phone connected, inside the ramp.
    pub tokens_issued_in_s: Option<f64>,
    /// The gateways' `--io-batch-us`.
    pub gateway_io_batch_us: u64,
    /// mobile-sim's `--engine` and `--io-batch-us`.
    #[serde(default)]
    pub phone_engine: String,
    #[serde(default)]
    pub phone_io_batch_us: u64,
    pub database: String,
    pub files_limit: u64,
    pub cores: usize,
    /// The processor, its Spectre v2 mitigation and the kernel ([`crate::procfs::machine`]).
    pub machine: String,
    pub load_average_at_start: String,
    pub load_average_at_end: String,
    pub kernel_settings: Vec<Setting>,
    /// The run's own network namespace, when it had one (`--ehash-entries`).
    pub netns: Option<crate::netns::Entered>,
    /// From the phones' start until the aggregator had heard of every phone's session.
    pub all_connected_after_s: Option<f64>,
    pub hold_seconds: f64,
    pub durable_bytes_during_hold: Option<f64>,
    pub flushes_during_hold: Option<f64>,
    pub flush_lag_p50_at_most_s: Option<f64>,
    pub flush_lag_p99_at_most_s: Option<f64>,
    /// Seconds into the hold when the aggregator's ledger first held at most 1 % of the phones'
    /// sessions: the database had written the ramp's backlog (every new session's first row).
    pub caught_up_after_s: Option<f64>,
    /// Flush lag p99 from then to the hold's end.
    pub steady_flush_lag_p99_at_most_s: Option<f64>,
    pub tiers: Vec<TierFigures>,
    /// Gateways and mobile-sim together: the cost of holding the phones.
    pub gateways_and_mobile_sim_cores: f64,
    pub tcp_sockets_during_hold: Option<u64>,
    pub kernel_bytes_per_tcp_socket: Option<f64>,
    pub mobile_sim: Option<SimReport>,
    pub goals: Vec<Goal>,
    pub ok: bool,
    /// Why the run failed (empty when ok).
    pub failures: Vec<String>,
    pub timeline: Vec<Sample>,
}

/// How many of `settings` were already as wanted, and a line for each that was not.
fn settings_lines(s: &mut String, title: &str, settings: &[Setting]) {
    let changed: Vec<&Setting> =
        settings.iter().filter(|k| k.outcome != crate::kernel::Outcome::Kept).collect();
    let _ =
        writeln!(s, "{title}: {} of {} already as wanted", settings.len() - changed.len(), settings.len());
    for k in changed {
        let _ = writeln!(
            s,
            "  {:<34} {:<10} was {:<24} now {}",
            k.key,
            format!("{:?}", k.outcome).to_lowercase(),
            k.was.as_deref().unwrap_or("-"),
            k.now.as_deref().unwrap_or("-")
        );
    }
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    match v {
        Some(v) if v.is_infinite() => format!("beyond the histogram's last bucket{unit}"),
        Some(v) => format!("{v:.digits$}{unit}"),
        None => "-".into(),
    }
}

impl HoldReport {
    /// For people.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lab hold: {} phones on {} gateways ({} each, {} trunk links each), {} mobile-sim processes; \
             gateways and mobile-sim at nice {}",
            self.phones,
            self.gateways,
            self.phones_per_gateway,
            self.links_per_gateway,
            self.sim_processes,
            self.nice
        );
        let _ = writeln!(
            s,
            "settings: {} connection attempts in flight, send tick {} ms, gateway io batch {} us, phones' engine {} (io batch {} us)",
            self.concurrent_connects,
            self.send_tick_ms,
            self.gateway_io_batch_us,
            self.phone_engine,
            self.phone_io_batch_us
        );
        let _ = writeln!(
            s,
            "machine: {} cores ({}), open files per process {}, load {} at start, {} at end; database {}",
            self.cores,
            self.machine,
            self.files_limit,
            self.load_average_at_start,
            self.load_average_at_end,
            self.database
        );
        settings_lines(&mut s, "kernel settings (deploy/sysctl/99-holdfast.conf)", &self.kernel_settings);
        match &self.netns {
            Some(n) => {
                let _ = writeln!(
                    s,
                    "network namespace: the run's own, {} buckets in its TCP connection table (the machine's: {})",
                    n.ehash_entries, n.machine_ehash_entries
                );
                settings_lines(&mut s, "  the same settings in it", &n.settings);
            }
            None => {
                let _ =
                    writeln!(s, "network namespace: the machine's (its TCP connection table sized at boot)");
            }
        }
        let _ = match self.tokens_issued_in_s {
            Some(t) => writeln!(
                s,
                "\ntokens: every phone's issued before the phones started, in {t:.1} s (a phone presents the \
                 token it was enrolled with)"
            ),
            None => writeln!(s, "\ntokens: signed by mobile-sim as each phone connected, inside the ramp"),
        };
        let _ = writeln!(s, "connect: all connected after {}", opt(self.all_connected_after_s, 1, " s"));
        if let Some(m) = &self.mobile_sim {
            let _ = writeln!(
                s,
                "  mobile-sim: {} established, {} failed, {} dropped; handshake p50 {:.1} ms, p99 {:.1} ms; peak {:.0}/s",
                m.connections.established,
                m.connections.failed,
                m.connections.dropped,
                m.handshake_ms.p50,
                m.handshake_ms.p99,
                m.connect_rate.peak_per_s
            );
        }
        let _ = writeln!(
            s,
            "\nhold: {:.0} s; {} bytes durable ({} /s); {} flushes, flush lag p50 <= {}, p99 <= {}",
            self.hold_seconds,
            opt(self.durable_bytes_during_hold, 0, ""),
            opt(self.durable_bytes_during_hold.map(|b| b / self.hold_seconds.max(1e-9)), 0, ""),
            opt(self.flushes_during_hold, 0, ""),
            opt(self.flush_lag_p50_at_most_s, 2, " s"),
            opt(self.flush_lag_p99_at_most_s, 2, " s"),
        );
        let _ = writeln!(
            s,
            "  the ramp's backlog written {} into the hold; flush lag p99 from then on <= {}",
            opt(self.caught_up_after_s, 0, " s"),
            opt(self.steady_flush_lag_p99_at_most_s, 2, " s"),
        );
        let _ = writeln!(
            s,
            "  {:<11} {:>5} {:>7} {:>13} {:>14} {:>13}",
            "tier", "procs", "cores", "us/phone byte", "RSS in hold", "RSS/phone"
        );
        for t in &self.tiers {
            let _ = writeln!(
                s,
                "  {:<11} {:>5} {:>7.3} {:>13} {:>11} MiB {:>11} B",
                t.tier.name(),
                t.processes,
                t.cores_during_hold,
                opt(t.us_per_phone_byte, 1, ""),
                t.rss_during_hold_bytes / (1 << 20),
                opt(t.rss_per_phone_bytes, 0, ""),
            );
        }
        let _ = writeln!(
            s,
            "  gateways + mobile-sim: {:.3} cores; kernel: {} TCP sockets, {} B each",
            self.gateways_and_mobile_sim_cores,
            self.tcp_sockets_during_hold.map_or("-".into(), |n| n.to_string()),
            opt(self.kernel_bytes_per_tcp_socket, 0, "")
        );
        if let Some(m) = &self.mobile_sim {
            let _ = writeln!(
                s,
                "\nafter the stop: {} bytes sent, {} confirmed durable, {} unconfirmed; all durable {:.1} s after \
                 the stop, all closed {:.1} s later",
                m.bytes.sent, m.bytes.durable, m.bytes.unconfirmed, m.drain_seconds, m.close_seconds
            );
            match &m.verification {
                Some(v) => {
                    let _ = writeln!(
                        s,
                        "verification: {} of {} devices checked, {} persisted; {} bytes lost, {} double-counted",
                        v.devices_checked, v.devices_expected, v.devices_persisted, v.lost_bytes, v.double_counted_bytes
                    );
                }
                None => s.push_str("verification: none\n"),
            }
        }
        s.push_str("\ngoals (issue #17):\n");
        for g in &self.goals {
            let mark = match g.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            };
            let _ = writeln!(s, "  {:<44} goal {:<12} measured {:<14} {mark}", g.what, g.goal, g.measured);
        }
        if self.ok {
            s.push_str("\nresult: ok (every phone held, every device verified exact)\n");
        } else {
            let _ = writeln!(s, "\nresult: FAILED\n  {}", self.failures.join("\n  "));
        }
        s
    }

    /// A self-contained page: the text report and charts over time.
    pub fn html(&self) -> String {
        let t = |s: &Sample| s.t_s;
        let cores: Vec<Series> = Tier::ALL
            .iter()
            .enumerate()
            .map(|(i, tier)| Series {
                name: tier.name(),
                colour: tier.colour(),
                points: self.timeline.iter().map(|s| (t(s), s.cores[i])).collect(),
            })
            .collect();
        let rss: Vec<Series> = Tier::ALL
            .iter()
            .enumerate()
            .map(|(i, tier)| Series {
                name: tier.name(),
                colour: tier.colour(),
                points: self
                    .timeline
                    .iter()
                    .map(|s| (t(s), s.rss_bytes[i] as f64 / (1 << 20) as f64))
                    .collect(),
            })
            .collect();
        let pick = |f: fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
            self.timeline.iter().filter_map(|s| Some((t(s), f(s)?))).collect()
        };
        let durable =
            [Series { name: "durable bytes/s", colour: "#d62728", points: pick(|s| s.durable_bytes_per_s) }];
        let ledger = [Series {
            name: "sessions waiting in the ledger",
            colour: "#8c564b",
            points: pick(|s| s.ledger_entries),
        }];
        let opened = [Series {
            name: "phone sessions opened",
            colour: "#17becf",
            points: pick(|s| s.sessions_opened),
        }];
        let mut page = String::from(
            "<!doctype html><meta charset=utf-8><title>holdfast lab hold</title>\
             <style>body{font:14px system-ui;margin:2em;max-width:980px}pre{background:#f6f6f6;padding:1em;overflow:auto}\
             svg{display:block;margin:1em 0}</style><h1>holdfast lab: hold</h1><pre>",
        );
        page.push_str(&escape(&self.text()));
        page.push_str("</pre>");
        page.push_str(&chart("Cores per tier", &cores));
        page.push_str(&chart("Resident memory per tier, MiB", &rss));
        page.push_str(&chart("Phone sessions opened", &opened));
        page.push_str(&chart("Bytes made durable per second", &durable));
        page.push_str(&chart("Sessions waiting in the aggregator's ledger", &ledger));
        page
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

struct Series {
    name: &'static str,
    colour: &'static str,
    points: Vec<(f64, f64)>,
}

/// A line chart as inline SVG: time (s) across, values up, a legend.
fn chart(title: &str, series: &[Series]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 220.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 24.0;
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(1e-9, f64::max);
    let y_max = all.map(|p| p.1).filter(|v| v.is_finite()).fold(1e-9, f64::max);
    let x = |v: f64| LEFT + v / x_max * (W - LEFT - 10.0);
    let y = |v: f64| 10.0 + (1.0 - v / y_max) * (H - BOTTOM - 10.0);
    let mut svg = format!(
        "<h3>{}</h3><svg width={W} height={H} viewBox='0 0 {W} {H}'>\
         <line x1={LEFT} y1={} x2={W} y2={} stroke=#999 /><line x1={LEFT} y1=10 x2={LEFT} y2={} stroke=#999 />\
         <text x=4 y=18>{}</text><text x=4 y={}>0</text><text x={} y={}>{:.0} s</text>",
        escape(title),
        H - BOTTOM,
        H - BOTTOM,
        H - BOTTOM,
        short(y_max),
        H - BOTTOM,
        W - 60.0,
        H - 6.0,
        x_max
    );
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=none stroke='{}' stroke-width=1.5 points='{}' />\
             <text x={} y={} fill='{}'>{}</text>",
            s.colour,
            points.join(" "),
            LEFT + 10.0 + 170.0 * i as f64,
            H - 6.0,
            s.colour,
            s.name
        );
    }
    svg.push_str("</svg>");
    svg
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mobile_sims_report_reads() {
        let json = r#"{"mode":"phones","ok":true,"end":"interrupted","processes":3,"run_seconds":70.0,
            "drain_seconds":1.5,"connections":{"attempted":3,"established":3,"failed":0,"dropped":0,
            "held_at_end_of_run":3},"connect_rate":{"all_connected_after_s":0.5,"average_per_s":6.0,
            "peak_per_s":3.0},"handshake_ms":{"count":3,"p50":1.0,"p90":2.0,"p99":3.0,"max":3.0,"mean":2.0},
            "bytes":{"sent":10,"durable":10,"unconfirmed":0},"verification":{"source":"postgres://x",
            "devices_expected":3,"devices_checked":3,"devices_persisted":3,"devices_sent":3,
            "devices_sent_not_persisted":0,"other_devices":0,"sent_bytes":10,"confirmed_bytes":10,
            "lost_bytes":0,"double_counted_bytes":0,"unconfirmed_bytes":0,"allowed_unconfirmed_bytes":0,
            "devices_with_lost_bytes":0,"devices_double_counted":0,"examples":[],"failed_rules":[]},
            "failures":[],"timeline":[]}"#;
        let r: SimReport = serde_json::from_str(json).unwrap();
        assert!(r.ok);
        assert_eq!(r.verification.unwrap().devices_checked, 3);
        assert_eq!(r.connections.established, 3);
        assert_eq!(r.run_seconds, 70.0);
        assert!(r.cpu.is_none());
        // Its own CPU, when it could read it (more fields than the lab reads).
        let with_cpu = json.replace(
            r#""failures":[]"#,
            r#""cpu":{"processes":1,"window_seconds":60.0,"cpu_seconds":3.0,"user_seconds":2.0,
                "system_seconds":1.0,"cores":0.05,"bytes_sent":10},"failures":[]"#,
        );
        let r: SimReport = serde_json::from_str(&with_cpu).unwrap();
        let cpu = r.cpu.unwrap();
        assert_eq!((cpu.cores, cpu.cpu_seconds, cpu.window_seconds), (0.05, 3.0, 60.0));
    }

    #[test]
    fn an_older_mobile_sims_report_reads() {
        // 1bbef25's: no verdict, a verification without devices_expected, sent and confirmed
        // bytes (scripts/bench/old-vs-new.sh drives its aggregator with it).
        let json = r#"{"mode":"gateways","targets":[],"devices":2,"processes":1,"end":"duration",
            "run_seconds":10.0,"drain_seconds":0.5,"connections":{"attempted":2,"established":2,
            "failed":0,"dropped":1,"held_at_end_of_run":2},"connect_rate":{"all_connected_after_s":0.2,
            "average_per_s":10.0,"peak_per_s":2.0},"handshake_ms":{"count":2,"p50":1.0,"p90":1.0,
            "p99":1.0,"max":1.0,"mean":1.0},"bytes":{"sent":7,"durable":7,"unconfirmed":0},
            "errors":{},"error_examples":{},"verification":{"source":"postgres://x","devices_checked":2,
            "devices_persisted":2,"other_devices":0,"lost_bytes":0,"double_counted_bytes":0,
            "unconfirmed_bytes":0,"devices_with_lost_bytes":0,"devices_double_counted":0,"examples":[],
            "ok":true},"timeline":[{"t":1.0,"connected":2,"failing":0,"established":2,"failed":0,
            "bytes_sent":7,"bytes_durable":7,"sent_per_s":7.0,"durable_per_s":7.0,"established_per_s":2.0}]}"#;
        let r: SimReport = serde_json::from_str(json).unwrap();
        assert!(!r.ok, "no verdict in the report reads as not ok");
        assert_eq!((r.bytes.sent, r.bytes.durable, r.connections.dropped), (7, 7, 1));
        assert_eq!(r.run_seconds, 10.0);
        let v = r.verification.unwrap();
        assert_eq!((v.devices_checked, v.devices_expected), (2, 0));
    }

    #[test]
    fn a_chart_has_a_line_per_series() {
        let s = [
            Series { name: "a", colour: "#000", points: vec![(0.0, 1.0), (1.0, 2.0)] },
            Series { name: "b", colour: "#111", points: vec![(0.0, 0.5)] },
        ];
        let svg = chart("t", &s);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("2.00"));
    }
}
