//! The phones run, in this process or spread over worker processes.
//!
//! One process may hold only as many connections as it may open files, so above --per-process
//! phones (or with --workers) mobile-sim runs itself again as W workers: the same command line
//! plus the hidden `--worker-index I --worker-count W`. Worker I runs phones I, I+W, I+2W, ... so
//! the ramp, the targets and the source addresses are spread exactly as in one process. The
//! parent shows one progress display and prints one report.
//!
//! Protocol, one JSON object per line:
//! - worker stdout: `{"type":"progress","snapshot":{...}}` twice a second, and at the end
//!   `{"type":"final",...}` with its counters, memory, own CPU over its hold window, handshake
//!   histogram and every device's totals;
//! - worker stdin: `drain` (stop sending, keep every connection open until its bytes are
//!   confirmed durable; the progress lines then say `settled`), `close` (close each connection
//!   once confirmed: the parent sends it when every worker is settled, so that one worker's
//!   closes do not delay another's confirmations) and `stop` (close now). When its stdin closes
//!   (the parent is gone) a worker drains and closes.

use std::ffi::OsString;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::cli::PhonesArgs;
use crate::phone::{Fleet, Plan};
use crate::report::{self, Parts, Report};
use cli_env::Interrupts;

use crate::run::Monitor;
use crate::stats::{
    histogram_add_pairs, histogram_to_pairs, new_histogram, rss_bytes, Cpu, CpuWindow, DeviceTotals, Memory,
    Snapshot, Stats,
};

/// After the drain deadline, how long closes may take before everything is stopped.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long the parent waits for a worker that was told to stop to send its final report and
/// exit, before it gives up on it. Generous on purpose: a worker starved of CPU (a million phones
/// on two cores) takes its time to close 19,000 connections and write their totals, and a report
/// that comes late delays the run's end, while one given up on fails the run.
const REPORT_WAIT: Duration = Duration::from_secs(180);
/// Files a process needs besides its connections.
const SPARE_FILES: u64 = 64;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FromWorker {
    Progress {
        snapshot: Snapshot,
        /// It has stopped sending and every byte it sent is confirmed durable.
        #[serde(default)]
        settled: bool,
    },
    Final {
        snapshot: Snapshot,
        at_end_of_run: Snapshot,
        memory: Memory,
        /// Its own CPU over its hold window (`None`: /proc/self/stat unreadable). Boxed: the
        /// progress lines need not be this big.
        cpu: Option<Box<Cpu>>,
        handshakes: Vec<(u64, u64)>,
        /// (global phone index, sent, durable)
        devices: Vec<(u64, u64, u64)>,
    },
}

/// Runs the `phones` command.
pub async fn run_phones(args: PhonesArgs, files_limit: u64) -> anyhow::Result<ExitCode> {
    if args.worker_index.is_some() {
        return worker_main(args).await;
    }
    let plan = Plan::new(&args).await?;
    let workers = match args.workers {
        Some(0) => bail!("--workers must be at least 1"),
        Some(w) => w as u64,
        None if args.phones > args.per_process => args.phones.div_ceil(args.per_process.max(1)),
        None => 1,
    };
    let per_process = args.phones.div_ceil(workers);
    if per_process + SPARE_FILES > files_limit {
        eprintln!(
            "warning: {per_process} phones per process but a process may open only {files_limit} files; \
             use more --workers or a lower --per-process"
        );
    }
    let common = &args.common;
    let start = Instant::now();
    let mut monitor = Monitor::new(start, plan.total, plan.total, "phones", common.output.quiet);
    let mut interrupts = Interrupts::catch()?;

    let outcome = if workers <= 1 {
        run_local(&plan, &mut monitor, &mut interrupts).await?
    } else {
        run_workers(&plan, workers, &mut monitor, &mut interrupts).await?
    };
    monitor.finish();

    let mut totals: Vec<(String, DeviceTotals)> =
        outcome.devices.iter().map(|&(i, t)| (plan.device_id(i), t)).collect();
    totals.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let parts = Parts {
        mode: "phones",
        engine: Some(if plan.on_host_runtime { "host-runtime" } else { "tokio" }),
        targets: plan.targets.iter().map(|t| t.url.clone()).collect(),
        devices: plan.total,
        connections: plan.total,
        gateways: None,
        links_per_gateway: None,
        processes: workers,
        end: outcome.end,
        run: outcome.run,
        drain: outcome.drain,
        close: outcome.close,
        at_end_of_run: outcome.at_end_of_run,
        last: outcome.last,
        histogram: outcome.histogram,
        memory: outcome.memory,
        cpu: outcome.cpu,
        samples: std::mem::take(&mut monitor.samples),
        all_connected_after: monitor.all_connected_after,
        peak_connect_rate: monitor.peak_connect_rate,
    };
    let report = Report::new(parts, &totals);
    // A missing worker's phones are missing from `totals`: the verification still runs and says
    // so (rule every-device-checked), and the run then fails with the workers named.
    let tls = tls_for_verify(common)?;
    let status = report::conclude(report, plan.total, &totals, common, tls).await?;
    if !outcome.missing.is_empty() {
        bail!("workers {:?} ended without their report: their phones' totals are missing", outcome.missing);
    }
    Ok(status)
}

/// The TLS configuration for an https:// --verify-url.
pub fn tls_for_verify(common: &crate::cli::CommonArgs) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    match &common.verify.verify_url {
        Some(url) if common.verify.verify => {
            crate::tls::for_urls(common.ca.as_deref(), std::iter::once(url.as_str()))
        }
        _ => Ok(None),
    }
}

struct Outcome {
    end: crate::run::End,
    run: Duration,
    /// From the stop to every byte confirmed durable (or the drain's deadline).
    drain: Duration,
    /// From then until every connection closed.
    close: Duration,
    at_end_of_run: Snapshot,
    last: Snapshot,
    histogram: hdrhistogram::Histogram<u64>,
    memory: Option<Memory>,
    cpu: Option<Cpu>,
    devices: Vec<(u64, DeviceTotals)>,
    missing: Vec<usize>,
}

async fn run_local(
    plan: &Plan,
    monitor: &mut Monitor,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Outcome> {
    let common = &plan.common;
    let stats = Arc::new(Stats::default());
    let fleet = Fleet::new(plan.clone(), stats.clone(), 0, 1, monitor.start);
    let rss_before = rss_bytes();
    let mut cpu = CpuWindow::new();
    fleet.spawn()?;
    let phones = fleet.len();
    let snapshot = || {
        let snap = stats.snapshot();
        cpu.observe(&snap, snap.connected >= phones, snap.connected);
        snap
    };
    let end = monitor.run_phase(common.duration, common.messages.is_some(), interrupts, snapshot).await;
    let run = monitor.start.elapsed();
    let at_end_of_run = stats.snapshot();
    let cpu = cpu.finish(&at_end_of_run, at_end_of_run.connected);
    let memory = rss_before.zip(rss_bytes()).map(|(before, held)| Memory {
        rss_before: before,
        rss_held: held,
        held: at_end_of_run.connected,
    });
    // The drain: nothing more is sent, every byte is confirmed (or the deadline passes); only
    // then the closes, so that their burst does not delay the last confirmations.
    let drain_started = Instant::now();
    let deadline = drain_started + common.drain_timeout;
    fleet.drain(deadline);
    let calm =
        monitor.drain_phase("draining", deadline, interrupts, || stats.snapshot(), || fleet.settled()).await;
    let drain = drain_started.elapsed();
    fleet.close();
    let calm = calm
        && monitor
            .drain_phase(
                "closing",
                deadline + CLOSE_GRACE,
                interrupts,
                || stats.snapshot(),
                || fleet.is_done(),
            )
            .await;
    if !calm || !fleet.is_done() {
        fleet.stop();
        let give_up = Instant::now() + CLOSE_GRACE;
        while !fleet.is_done() && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(Outcome {
        end,
        run,
        drain,
        close: drain_started.elapsed() - drain,
        at_end_of_run,
        last: stats.snapshot(),
        histogram: stats.histogram(),
        memory,
        cpu,
        devices: fleet.totals(),
        missing: Vec::new(),
    })
}

#[derive(Default)]
struct WorkerState {
    latest: Snapshot,
    settled: bool,
    done: Option<FromWorker>,
    exited: bool,
}

async fn run_workers(
    plan: &Plan,
    workers: u64,
    monitor: &mut Monitor,
    interrupts: &mut Interrupts,
) -> anyhow::Result<Outcome> {
    let common = &plan.common;
    let exe = std::env::current_exe().context("finding this program to start workers")?;
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let states: Arc<Mutex<Vec<WorkerState>>> =
        Arc::new(Mutex::new((0..workers).map(|_| WorkerState::default()).collect()));
    let mut children: Vec<(Child, Option<ChildStdin>)> = Vec::new();
    // This process's own CPU counts too (it holds no phone: no bytes, nothing held).
    let mut own_cpu = CpuWindow::new();
    for i in 0..workers {
        let mut child = Command::new(&exe)
            .args(&argv)
            .arg("--worker-index")
            .arg(i.to_string())
            .arg("--worker-count")
            .arg(workers.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // Its own process group: a Ctrl-C at the terminal reaches only the parent, which then
            // drains the workers in order.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting worker {i}"))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let stdin = child.stdin.take();
        let states = states.clone();
        let index = i as usize;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<FromWorker>(&line) {
                    Ok(FromWorker::Progress { snapshot, settled }) => {
                        let mut s = states.lock().unwrap_or_else(|e| e.into_inner());
                        s[index].latest = snapshot;
                        s[index].settled = settled;
                    }
                    Ok(done @ FromWorker::Final { .. }) => {
                        let mut s = states.lock().unwrap_or_else(|e| e.into_inner());
                        if let FromWorker::Final { snapshot, .. } = &done {
                            s[index].latest = snapshot.clone();
                        }
                        s[index].done = Some(done);
                    }
                    Err(e) => eprintln!("worker {index}: unreadable line ({e}): {line:.200}"),
                }
            }
            states.lock().unwrap_or_else(|e| e.into_inner())[index].exited = true;
        });
        children.push((child, stdin));
    }
    let snapshot = || {
        let s = states.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = Snapshot::default();
        for w in s.iter() {
            total.add(&w.latest);
        }
        total
    };
    let finished =
        || states.lock().unwrap_or_else(|e| e.into_inner()).iter().all(|w| w.exited || w.done.is_some());
    let settled = || {
        states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .all(|w| w.settled || w.exited || w.done.is_some())
    };

    let phones = plan.total;
    let observed = || {
        let snap = snapshot();
        own_cpu.observe(&Snapshot::default(), snap.connected >= phones, 0);
        snap
    };
    let end = monitor.run_phase(common.duration, common.messages.is_some(), interrupts, observed).await;
    let run = monitor.start.elapsed();
    let own_cpu = own_cpu.finish(&Snapshot::default(), 0);
    // As in one process: every worker stops sending and waits for its confirmations; the closes
    // begin when all of them are confirmed (or at the deadline), in every worker at once.
    let drain_started = Instant::now();
    send_all(&mut children, "drain").await;
    let deadline = drain_started + common.drain_timeout;
    let calm = monitor.drain_phase("draining", deadline, interrupts, snapshot, settled).await;
    let drain = drain_started.elapsed();
    send_all(&mut children, "close").await;
    let calm =
        calm && monitor.drain_phase("closing", deadline + CLOSE_GRACE, interrupts, snapshot, finished).await;
    if !calm || !finished() {
        send_all(&mut children, "stop").await;
        let give_up = Instant::now() + CLOSE_GRACE * 2;
        while !finished() && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let close = drain_started.elapsed() - drain;
    // Every worker has been told to stop (or finished): wait for each to exit on its own, its
    // final report read to the end, up to REPORT_WAIT; only then is a worker killed and its
    // report counted missing.
    let give_up = Instant::now() + REPORT_WAIT;
    for (child, stdin) in &mut children {
        drop(stdin.take());
        let left = give_up.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, child.wait()).await.is_err() {
            eprintln!(
                "warning: a worker did not exit within {} s of being told to stop",
                REPORT_WAIT.as_secs()
            );
            let _ = child.start_kill();
        }
    }
    // The readers take the last lines (the final report can be megabytes) until each sees EOF.
    while !states.lock().unwrap_or_else(|e| e.into_inner()).iter().all(|w| w.exited)
        && Instant::now() < give_up + Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut out = Outcome {
        end,
        run,
        drain,
        close,
        at_end_of_run: Snapshot::default(),
        last: Snapshot::default(),
        histogram: new_histogram(),
        memory: Some(Memory::default()),
        cpu: own_cpu,
        devices: Vec::with_capacity(plan.total as usize),
        missing: Vec::new(),
    };
    let mut states = states.lock().unwrap_or_else(|e| e.into_inner());
    for (i, w) in states.iter_mut().enumerate() {
        match w.done.take() {
            Some(FromWorker::Final { snapshot, at_end_of_run, memory, cpu, handshakes, devices }) => {
                out.last.add(&snapshot);
                out.at_end_of_run.add(&at_end_of_run);
                if let Some(m) = out.memory.as_mut() {
                    m.add(&memory);
                }
                match (out.cpu.as_mut(), cpu) {
                    (Some(sum), Some(cpu)) => sum.add(&cpu),
                    (None, cpu) => out.cpu = cpu.map(|c| *c),
                    (Some(_), None) => {}
                }
                histogram_add_pairs(&mut out.histogram, &handshakes);
                out.devices.extend(
                    devices.into_iter().map(|(index, sent, durable)| (index, DeviceTotals { sent, durable })),
                );
            }
            _ => {
                out.missing.push(i);
                out.last.add(&w.latest);
            }
        }
    }
    Ok(out)
}

async fn send_all(children: &mut [(Child, Option<ChildStdin>)], command: &str) {
    for (_, stdin) in children.iter_mut() {
        if let Some(s) = stdin.as_mut() {
            if s.write_all(format!("{command}\n").as_bytes()).await.is_err() || s.flush().await.is_err() {
                *stdin = None;
            }
        }
    }
}

/// A worker: runs its share of the phones, reports on stdout, obeys stdin.
async fn worker_main(args: PhonesArgs) -> anyhow::Result<ExitCode> {
    let (Some(index), Some(count)) = (args.worker_index, args.worker_count) else {
        bail!("--worker-index and --worker-count go together");
    };
    anyhow::ensure!(index < count, "--worker-index must be below --worker-count");
    let plan = Plan::new(&args).await?;
    let drain_timeout = plan.common.drain_timeout;
    let stats = Arc::new(Stats::default());
    let fleet = Fleet::new(plan, stats.clone(), index as u64, count as u64, Instant::now());
    let rss_before = rss_bytes().unwrap_or(0);
    let mut cpu_window = CpuWindow::new();
    fleet.spawn()?;
    let phones = fleet.len();

    let (tx, mut commands) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line.trim().to_string());
        }
        let _ = tx.send("eof".into());
    });
    let mut stdout = tokio::io::stdout();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut running = true;
    let mut at_end_of_run = None;
    let mut memory = Memory { rss_before, ..Memory::default() };
    let mut cpu = None;
    let mut stop_at = None;
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let snapshot = stats.snapshot();
                if running {
                    cpu_window.observe(&snapshot, snapshot.connected >= phones, snapshot.connected);
                }
                let settled = !running && fleet.settled();
                let line = serde_json::to_string(&FromWorker::Progress { snapshot, settled })?;
                stdout.write_all(line.as_bytes()).await?;
                stdout.write_all(b"\n").await?;
                stdout.flush().await?;
            }
            command = commands.recv(), if stdin_open => {
                let command = command.unwrap_or_else(|| "eof".into());
                if command == "eof" {
                    stdin_open = false;
                }
                if running {
                    running = false;
                    let snap = stats.snapshot();
                    cpu = cpu_window.finish(&snap, snap.connected);
                    memory.rss_held = rss_bytes().unwrap_or(0);
                    memory.held = snap.connected;
                    at_end_of_run = Some(snap);
                    let deadline = Instant::now() + drain_timeout;
                    fleet.drain(deadline);
                    stop_at = Some(deadline + CLOSE_GRACE);
                }
                // "close" from the parent once every worker is settled; the parent gone
                // ("eof"): close as soon as our own phones are.
                if command == "close" || command == "eof" {
                    fleet.close();
                }
                if command == "stop" {
                    fleet.stop();
                }
            }
        }
        if fleet.is_done() {
            break;
        }
        if stop_at.is_some_and(|t| Instant::now() >= t) {
            fleet.stop();
            stop_at = None;
        }
    }
    let snapshot = stats.snapshot();
    if running {
        cpu = cpu_window.finish(&snapshot, snapshot.connected);
    }
    let done = FromWorker::Final {
        at_end_of_run: at_end_of_run.unwrap_or_else(|| snapshot.clone()),
        snapshot,
        memory,
        cpu: cpu.map(Box::new),
        handshakes: histogram_to_pairs(&stats.histogram()),
        devices: fleet.totals().into_iter().map(|(i, t)| (i, t.sent, t.durable)).collect(),
    };
    let line = serde_json::to_string(&done)?;
    stdout.write_all(line.as_bytes()).await?;
    stdout.write_all(b"\n").await?;
    stdout.flush().await?;
    Ok(ExitCode::SUCCESS)
}
