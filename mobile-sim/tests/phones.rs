//! Phones against a server that is not part of this project: `tests/peers/count_server.py`, a
//! Python `websockets` server that counts payload bytes per device and confirms them durable after
//! its own commits. mobile-sim's per-device totals must equal the server's exactly.

mod common;

use common::{assert_exact, read_per_device, report, run_sim, CountServer};

#[test]
fn two_hundred_phones_match_the_servers_counts_exactly() {
    two_hundred_phones_on("auto", "host-runtime");
}

/// The same phones on mobile-sim's other engine (tokio and tokio-tungstenite, which wss:// and
/// socket.io need).
#[test]
fn two_hundred_phones_on_tokio_match_the_servers_counts_exactly() {
    two_hundred_phones_on("tokio", "tokio");
}

fn two_hundred_phones_on(engine: &str, expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("totals.db");
    let csv = dir.path().join("devices.csv");
    let html = dir.path().join("report.html");
    let server = CountServer::start(&["--sqlite", db.to_str().unwrap(), "--commit-ms", "20"]);
    let target = format!("ws://127.0.0.1:{}/ws", server.port);
    let database = format!("sqlite://{}", db.display());
    let output = run_sim(&[
        "--target",
        &target,
        "--phones",
        "200",
        "--rate",
        "1000",
        "--min-interval",
        "10ms",
        "--max-interval",
        "60ms",
        "--duration",
        "3s",
        "--json",
        "--quiet",
        "--per-device",
        csv.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
        "--verify",
        "--database-url",
        &database,
        "--engine",
        engine,
    ]);
    assert!(output.status.success(), "exit status {:?}", output.status);
    let r = report(&output);
    let peer = server.stop();
    assert_eq!(r["engine"], expected);

    // The report, read as a machine would.
    assert_eq!(r["ok"], true, "failures: {}", r["failures"]);
    assert_eq!(r["verification"]["devices_expected"], 200);
    assert_eq!(r["verification"]["devices_checked"], 200);
    assert_eq!(r["mode"], "phones");
    assert_eq!(r["devices"], 200);
    assert_eq!(r["connections"]["established"], 200);
    assert_eq!(r["connections"]["failed"], 0);
    assert_eq!(r["connections"]["held_at_end_of_run"], 200);
    assert!(r["handshake_ms"]["count"].as_u64().unwrap() >= 200);
    assert!(r["handshake_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["handshake_ms"]["max"].as_f64().unwrap() >= r["handshake_ms"]["p99"].as_f64().unwrap());
    let sent = r["bytes"]["sent"].as_u64().unwrap();
    assert!(sent > 200 * 10, "phones sent only {sent} bytes in 3 s");
    assert_eq!(r["bytes"]["durable"], sent);
    assert_eq!(r["bytes"]["unconfirmed"], 0);
    assert_eq!(r["errors"].as_object().unwrap().len(), 0, "errors: {}", r["errors"]);
    assert!(r["memory"]["per_held_bytes"].as_f64().is_some());
    // mobile-sim's own CPU over the hold window, as typed fields.
    let cpu = &r["cpu"];
    assert_eq!(cpu["processes"], 1);
    assert_eq!(cpu["held"], 200);
    assert!(cpu["window_seconds"].as_f64().unwrap() > 0.5, "{cpu}");
    assert!(cpu["cores"].as_f64().unwrap() >= 0.0);
    assert!(cpu["bytes_sent"].as_u64().unwrap() > 0 && cpu["bytes_sent"].as_u64().unwrap() <= sent);
    assert!(cpu["us_per_byte_sent"].as_f64().is_some() && cpu["us_per_held_per_s"].as_f64().is_some());
    assert!(r["timeline"].as_array().unwrap().len() >= 2);
    let v = &r["verification"];
    assert_eq!(v["ok"], true);
    assert_eq!(v["devices_checked"], 200);
    assert_eq!(v["devices_persisted"], 200);
    assert_eq!(v["lost_bytes"], 0);
    assert_eq!(v["double_counted_bytes"], 0);
    assert_eq!(v["unconfirmed_bytes"], 0);

    // Per device, against the server's own counts.
    let ours = read_per_device(&csv);
    assert_eq!(ours.len(), 200);
    assert!(ours.contains_key("sim-000000") && ours.contains_key("sim-000199"));
    assert_eq!(ours.values().map(|&(s, _)| s).sum::<u64>(), sent);
    assert_exact(&ours, &peer);
    assert_eq!(peer.committed, peer.received);

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("<svg") && page.contains("Handshake latency"));
    assert!(!page.contains("<script") && !page.contains("http://cdn") && !page.contains("https://"));
}

#[test]
fn messages_bound_the_run_and_the_endpoint_verifies() {
    let server = CountServer::start(&["--commit-ms", "10"]);
    let target = format!("ws://127.0.0.1:{}/", server.port);
    let endpoint = format!("http://127.0.0.1:{}/api/devices", server.port);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("devices.csv");
    let output = run_sim(&[
        "--target",
        &target,
        "-A",
        "50",
        "-M",
        "5",
        "-C",
        "10",
        "--distribution",
        "exponential",
        "--min-interval",
        "5ms",
        "--max-interval",
        "40ms",
        "--device-prefix",
        "msg-",
        "--json",
        "--per-device",
        csv.to_str().unwrap(),
        "--verify",
        "--verify-url",
        &endpoint,
    ]);
    assert!(output.status.success(), "exit status {:?}", output.status);
    let r = report(&output);
    let peer = server.stop();
    assert_eq!(r["end"], "messages");
    assert_eq!(r["bytes"]["sent"], 250);
    assert_eq!(r["verification"]["ok"], true);
    assert_eq!(r["verification"]["devices_persisted"], 50);
    assert!(r["verification"]["source"].as_str().unwrap().contains("prefix=msg-"));
    let ours = read_per_device(&csv);
    assert!(ours.values().all(|&(sent, _)| sent == 5), "every phone sends exactly -M bytes");
    assert!(ours.contains_key("msg-000049"));
    assert_exact(&ours, &peer);
}

#[test]
fn verification_catches_a_confirmed_byte_that_was_not_persisted() {
    let server = CountServer::start(&["--commit-ms", "10", "--fault", "lose"]);
    let output = run_fault(&server);
    assert_eq!(output.status.code(), Some(1), "lost bytes must fail the run");
    let r = report(&output);
    drop(server);
    let v = &r["verification"];
    assert_eq!(v["ok"], false);
    assert_eq!(v["lost_bytes"], 1);
    assert_eq!(v["devices_with_lost_bytes"], 1);
    assert_eq!(v["double_counted_bytes"], 0);
    assert_eq!(v["examples"].as_array().unwrap().len(), 1);
    assert_eq!(failed_rules(&r), ["none-lost"]);
}

#[test]
fn verification_catches_a_byte_counted_twice() {
    let server = CountServer::start(&["--commit-ms", "10", "--fault", "double"]);
    let output = run_fault(&server);
    assert_eq!(output.status.code(), Some(1), "double-counted bytes must fail the run");
    let r = report(&output);
    drop(server);
    let v = &r["verification"];
    assert_eq!(v["ok"], false);
    assert_eq!(v["double_counted_bytes"], 1);
    assert_eq!(v["lost_bytes"], 0);
    assert_eq!(failed_rules(&r), ["none-double-counted"]);
}

#[test]
fn a_server_that_accepts_and_never_confirms_fails_the_run() {
    // Everything sent is persisted, nothing is confirmed: "0 lost" holds, yet nothing was proven.
    let server = CountServer::start(&["--commit-ms", "10", "--fault", "never-confirm"]);
    let output = run_fault(&server);
    drop(server);
    assert_eq!(output.status.code(), Some(1), "a run with nothing confirmed must fail");
    let r = report(&output);
    assert_eq!(r["verification"]["lost_bytes"], 0, "nothing confirmed, so nothing lost");
    assert_eq!(r["verification"]["unconfirmed_bytes"], 60);
    assert_eq!(failed_rules(&r), ["bytes-confirmed", "unconfirmed-within-bound"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!text.contains("\"ok\": true"), "{text}");
}

#[test]
fn a_server_that_persists_nothing_fails_the_run() {
    let server = CountServer::start(&["--commit-ms", "10", "--fault", "persist-nothing"]);
    let output = run_fault(&server);
    drop(server);
    assert_eq!(output.status.code(), Some(1), "confirmed bytes that were never persisted must fail");
    let r = report(&output);
    assert_eq!(r["verification"]["lost_bytes"], 60);
    assert_eq!(r["verification"]["devices_persisted"], 0);
    assert_eq!(failed_rules(&r), ["every-sender-persisted", "none-lost"]);
}

/// The rules the verdict names as failed, in order.
fn failed_rules(r: &serde_json::Value) -> Vec<String> {
    assert_eq!(r["ok"], false, "the verdict must be a failure: {r}");
    r["failures"]
        .as_array()
        .expect("failures")
        .iter()
        .map(|f| f["rule"].as_str().expect("rule").to_string())
        .collect()
}

fn run_fault(server: &CountServer) -> std::process::Output {
    let target = format!("ws://127.0.0.1:{}/ws", server.port);
    let endpoint = format!("http://127.0.0.1:{}/api/devices", server.port);
    run_sim(&[
        "--target",
        &target,
        "-A",
        "20",
        "-M",
        "3",
        "--min-interval",
        "5ms",
        "--max-interval",
        "20ms",
        // The peer commits every 10 ms; a server that never confirms need not hold the test 10 s.
        "--drain-timeout",
        "2s",
        "--json",
        "--verify",
        "--verify-url",
        &endpoint,
    ])
}

#[test]
fn phones_reconnect_after_a_server_crash_and_nothing_confirmed_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("totals.db");
    let db_arg = db.to_str().unwrap().to_string();
    let first = CountServer::start(&["--sqlite", &db_arg, "--commit-ms", "30"]);
    let port = first.port.to_string();
    let target = format!("ws://127.0.0.1:{port}/ws");
    let database = format!("sqlite://{}", db.display());
    let sim = common::sim()
        .args([
            "--target",
            &target,
            "-A",
            "100",
            "--min-interval",
            "10ms",
            "--max-interval",
            "50ms",
            // Long enough after the restart for every phone's backoff on a loaded machine.
            "--duration",
            "15s",
            // The crash is on purpose: every phone drops once and retries while the server is
            // down, and bytes in flight at the crash stay unconfirmed. Bounds, not a blank cheque.
            "--max-dropped",
            "100",
            "--max-failed",
            "2000",
            "--allow-unconfirmed",
            "1000",
            "--json",
            "--verify",
            "--database-url",
            &database,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    first.crash();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let second = CountServer::start(&["--port", &port, "--sqlite", &db_arg, "--commit-ms", "30"]);
    let output = sim.wait_with_output().unwrap();
    drop(second);
    assert!(output.status.success(), "exit status {:?}", output.status);
    let r = report(&output);
    assert_eq!(r["ok"], true, "failures: {}", r["failures"]);
    assert!(r["connections"]["dropped"].as_u64().unwrap() >= 100, "every phone lost its connection");
    assert!(r["connections"]["established"].as_u64().unwrap() >= 200, "and came back");
    assert_eq!(r["connections"]["held_at_end_of_run"], 100);
    let v = &r["verification"];
    assert_eq!(v["ok"], true, "verification: {v}");
    assert_eq!(v["lost_bytes"], 0);
    assert_eq!(v["double_counted_bytes"], 0);
    // Bytes in flight when the server died may be unconfirmed; everything after is confirmed.
    assert!(r["bytes"]["durable"].as_u64().unwrap() > 0);
}

#[test]
fn a_server_that_is_not_there_is_reported_as_refused() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let target = format!("ws://127.0.0.1:{port}/ws");
    let output = run_sim(&["--target", &target, "-A", "5", "--duration", "1500ms", "--json"]);
    assert_eq!(output.status.code(), Some(1), "a run where no phone connects must fail");
    let r = report(&output);
    assert_eq!(failed_rules(&r), ["all-connected", "failed-connections"]);
    assert_eq!(r["connections"]["established"], 0);
    assert!(r["connections"]["failed"].as_u64().unwrap() >= 5);
    assert!(r["errors"]["refused"].as_u64().unwrap() >= 5, "errors: {}", r["errors"]);
    assert_eq!(r["bytes"]["sent"], 0);
}

#[test]
fn help_names_the_thor_flags() {
    let output = common::sim().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in ["--amount", "--concurrent", "--workers", "--messages", "--target", "--verify", "gateways"] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
    assert!(!help.contains("--worker-index"), "internal flags stay hidden");
}
