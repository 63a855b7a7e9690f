//! The life of a run as the parent process sees it: the run phase (until --duration, until every
//! phone sent its --messages, or until Ctrl-C), then the drain; a progress display refreshed
//! four times a second; and a sample of the counters every second for the HTML charts.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use cli_env::Interrupts;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::stats::Snapshot;

const TICK: Duration = Duration::from_millis(250);

/// Why the run phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    Duration,
    Messages,
    Interrupted,
}

/// The counters once a second, for the charts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    pub connected: u64,
    pub failing: u64,
    pub established: u64,
    pub failed: u64,
    pub bytes_sent: u64,
    pub bytes_durable: u64,
    /// Over the second before this sample.
    pub sent_per_s: f64,
    pub durable_per_s: f64,
    pub established_per_s: f64,
}

/// Progress display and timeline of one run.
pub struct Monitor {
    pub start: Instant,
    /// Connections wanted at once (phones, or trunk links).
    connections: u64,
    /// Phones or sessions (for --messages).
    devices: u64,
    bar: Option<ProgressBar>,
    pub samples: Vec<Sample>,
    last_sample: Option<(Instant, Snapshot)>,
    /// When every device was first connected at once.
    pub all_connected_after: Option<Duration>,
    last_tick: Option<(Instant, u64)>,
    bytes_per_s: f64,
    /// Recent (time, established) observations, for the peak connect rate.
    recent: std::collections::VecDeque<(Instant, u64)>,
    /// The most connections established per second, over windows of 0.5 to 1 s.
    pub peak_connect_rate: f64,
}

impl Monitor {
    /// `connections`: connections wanted (phones, or links); `devices`: phones or sessions;
    /// `unit`: what is counted as connected ("phones", "links").
    pub fn new(start: Instant, connections: u64, devices: u64, unit: &'static str, quiet: bool) -> Self {
        let visible = !quiet && std::io::stdout().is_terminal();
        let bar = visible.then(|| {
            let bar = ProgressBar::with_draw_target(Some(connections), ProgressDrawTarget::stderr_with_hz(4));
            let style = ProgressStyle::with_template(
                "{spinner} {elapsed:>4} [{bar:20}] {human_pos}/{human_len} {prefix} | {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("{unit} connected"));
            bar
        });
        Self {
            start,
            connections,
            devices,
            bar,
            samples: Vec::new(),
            last_sample: None,
            all_connected_after: None,
            last_tick: None,
            bytes_per_s: 0.0,
            recent: std::collections::VecDeque::new(),
            peak_connect_rate: 0.0,
        }
    }

    /// Refreshes the display and, once a second, takes a sample.
    pub fn observe(&mut self, snap: &Snapshot, phase: &str) {
        let now = Instant::now();
        if self.all_connected_after.is_none() && self.connections > 0 && snap.connected >= self.connections {
            self.all_connected_after = Some(now - self.start);
        }
        self.recent.push_back((now, snap.established));
        while self.recent.front().is_some_and(|(t, _)| now - *t > Duration::from_secs(1)) {
            self.recent.pop_front();
        }
        if let Some(&(t, established)) = self.recent.front() {
            let dt = (now - t).as_secs_f64();
            if dt >= 0.5 {
                let rate = snap.established.saturating_sub(established) as f64 / dt;
                self.peak_connect_rate = self.peak_connect_rate.max(rate);
            }
        }
        if let Some((t, sent)) = self.last_tick {
            let dt = (now - t).as_secs_f64();
            if dt >= 0.9 {
                self.bytes_per_s = snap.bytes_sent.saturating_sub(sent) as f64 / dt;
                self.last_tick = Some((now, snap.bytes_sent));
            }
        } else {
            self.last_tick = Some((now, snap.bytes_sent));
        }
        let due = self.last_sample.as_ref().is_none_or(|(t, _)| now - *t >= Duration::from_secs(1));
        if due {
            let mut sample = Sample {
                t: (now - self.start).as_secs_f64(),
                connected: snap.connected,
                failing: snap.failing,
                established: snap.established,
                failed: snap.failed,
                bytes_sent: snap.bytes_sent,
                bytes_durable: snap.bytes_durable,
                ..Sample::default()
            };
            if let Some((t, prev)) = &self.last_sample {
                let dt = (now - *t).as_secs_f64().max(1e-3);
                sample.sent_per_s = snap.bytes_sent.saturating_sub(prev.bytes_sent) as f64 / dt;
                sample.durable_per_s = snap.bytes_durable.saturating_sub(prev.bytes_durable) as f64 / dt;
                sample.established_per_s = snap.established.saturating_sub(prev.established) as f64 / dt;
            }
            self.samples.push(sample);
            self.last_sample = Some((now, snap.clone()));
        }
        if let Some(bar) = &self.bar {
            bar.set_position(snap.connected.min(self.connections));
            let durable = if snap.bytes_sent > 0 {
                format!("{:.1}%", 100.0 * snap.bytes_durable as f64 / snap.bytes_sent as f64)
            } else {
                "-".into()
            };
            bar.set_message(format!(
                "failing {} | {} B/s | durable {} | {phase}",
                snap.failing, self.bytes_per_s as u64, durable
            ));
        }
    }

    /// Prints a line above the progress display (or on stderr).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// The run phase: until `duration` (from the start), until every device finished sending
    /// (`messages`), or an interrupt. `snapshot` reads the counters.
    pub async fn run_phase(
        &mut self,
        duration: Option<Duration>,
        messages: bool,
        interrupts: &mut Interrupts,
        mut snapshot: impl FnMut() -> Snapshot,
    ) -> End {
        let deadline = duration.map(|d| self.start + d);
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = interrupts.recv() => {
                    self.println("interrupted: draining (Ctrl-C again to stop at once)");
                    return End::Interrupted;
                }
            }
            let snap = snapshot();
            self.observe(&snap, "running");
            if messages && snap.finished_sending >= self.devices {
                return End::Messages;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return End::Duration;
            }
        }
    }

    /// A phase of the end (`label`: draining, closing): until `finished()`, or `deadline`.
    /// Returns `false` when interrupted (the caller then stops everything at once).
    pub async fn drain_phase(
        &mut self,
        label: &str,
        deadline: Instant,
        interrupts: &mut Interrupts,
        mut snapshot: impl FnMut() -> Snapshot,
        mut finished: impl FnMut() -> bool,
    ) -> bool {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = interrupts.recv() => return false,
            }
            let snap = snapshot();
            self.observe(&snap, label);
            if finished() || Instant::now() >= deadline {
                return true;
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
