//! Worker processes: the parent spreads the phones over workers (each one mobile-sim again),
//! shows one progress display and prints one report with every device.
//!
//! `workers_21000_phones_over_two_processes` goes past what one process may open (20,000 files
//! here) and is heavy for a small machine (about a minute on 2 cores, ~1 GB for the Python peers),
//! so it is ignored by default; run it with
//!
//! ```text
//! cargo test -p mobile-sim --release --test workers -- --ignored --nocapture
//! ```

mod common;

use common::{assert_exact, read_per_device, report, run_sim, CountServer, Totals};

#[test]
fn two_workers_report_as_one() {
    let server = CountServer::start(&["--commit-ms", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("devices.csv");
    let output = run_sim(&[
        "--target",
        &format!("ws://127.0.0.1:{}/ws", server.port),
        "-A",
        "301",
        "-W",
        "2",
        "-M",
        "3",
        "--rate",
        "1000",
        "--min-interval",
        "10ms",
        "--max-interval",
        "50ms",
        "--json",
        "--per-device",
        csv.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "exit status {:?}", output.status);
    let r = report(&output);
    let peer = server.stop();
    assert_eq!(r["processes"], 2);
    assert_eq!(r["end"], "messages");
    assert_eq!(r["connections"]["established"], 301);
    assert_eq!(r["handshake_ms"]["count"], 301, "the workers' histograms are merged");
    assert_eq!(r["bytes"]["sent"], 903);
    assert_eq!(r["bytes"]["durable"], 903);
    assert_eq!(r["memory"]["held"], 301);
    assert_eq!(r["cpu"]["processes"], 3, "two workers' own CPU and the parent's: {}", r["cpu"]);
    assert!(r["cpu"]["cores"].as_f64().is_some());
    let ours = read_per_device(&csv);
    assert_eq!(ours.len(), 301);
    assert!(ours.contains_key("sim-000000") && ours.contains_key("sim-000300"));
    assert_exact(&ours, &peer);
}

#[test]
#[ignore = "heavy: 21,000 connections; run with --ignored (see the module documentation)"]
fn workers_21000_phones_over_two_processes() {
    const PHONES: usize = 21_000;
    // Three peer processes share one port (SO_REUSEPORT): each holds a third of the phones,
    // well below the 20,000 files a process may open.
    let first = CountServer::start(&["--reuse-port", "--commit-ms", "50"]);
    let port = first.port.to_string();
    let others: Vec<CountServer> =
        (0..2).map(|_| CountServer::start(&["--port", &port, "--reuse-port", "--commit-ms", "50"])).collect();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("devices.csv");
    let started = std::time::Instant::now();
    let output = run_sim(&[
        "--target",
        &format!("ws://127.0.0.1:{port}/ws"),
        "-A",
        &PHONES.to_string(),
        "-M",
        "2",
        "--rate",
        "2000",
        "-C",
        "512",
        "--min-interval",
        "1s",
        "--max-interval",
        "3s",
        "--duration",
        "100s",
        "--drain-timeout",
        "20s",
        "--json",
        "--per-device",
        csv.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "exit status {:?}", output.status);
    let r = report(&output);
    eprintln!(
        "{PHONES} phones in {:.0} s: all connected after {} s, handshake p50 {} ms p99 {} ms, {} bytes per held phone",
        started.elapsed().as_secs_f64(),
        r["connect_rate"]["all_connected_after_s"],
        r["handshake_ms"]["p50"],
        r["handshake_ms"]["p99"],
        r["memory"]["per_held_bytes"]
    );
    let mut peer = Totals::default();
    peer.add(first.stop());
    for other in others {
        peer.add(other.stop());
    }
    assert_eq!(r["processes"], 2, "21,000 phones need two processes at --per-process 15,000");
    assert_eq!(r["end"], "messages", "every phone sent its bytes before --duration");
    assert!(r["connections"]["established"].as_u64().unwrap() >= PHONES as u64);
    assert!(r["connect_rate"]["all_connected_after_s"].is_number(), "all 21,000 were connected at once");
    assert_eq!(r["bytes"]["sent"], 2 * PHONES as u64);
    let ours = read_per_device(&csv);
    assert_eq!(ours.len(), PHONES);
    assert_exact(&ours, &peer);
}
