//! Phones over wss:// against the Python peer with TLS: the CA given with --ca is the only one
//! trusted (a server whose certificate another CA signed is refused), and TLS 1.3 is required.

mod common;

use common::{assert_exact, make_pki, read_per_device, report, run_sim, CountServer};

#[test]
fn phones_over_tls_with_the_pinned_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "good");
    let server = CountServer::start(&[
        "--certfile",
        pki.cert.to_str().unwrap(),
        "--keyfile",
        pki.key.to_str().unwrap(),
        "--commit-ms",
        "20",
    ]);
    let csv = dir.path().join("devices.csv");
    let output = run_sim(&[
        "--target",
        &format!("wss://localhost:{}/ws", server.port),
        "--ca",
        pki.ca.to_str().unwrap(),
        "-A",
        "100",
        "--rate",
        "500",
        "--min-interval",
        "20ms",
        "--max-interval",
        "80ms",
        "--duration",
        "2500ms",
        "--json",
        "--per-device",
        csv.to_str().unwrap(),
    ]);
    assert!(output.status.success());
    let r = report(&output);
    let peer = server.stop();
    assert!(r["targets"][0].as_str().unwrap().starts_with("wss://localhost:"));
    assert_eq!(r["connections"]["established"], 100);
    assert_eq!(r["errors"].as_object().unwrap().len(), 0, "errors: {}", r["errors"]);
    assert!(r["bytes"]["sent"].as_u64().unwrap() > 100);
    assert_eq!(r["bytes"]["unconfirmed"], 0);
    assert_exact(&read_per_device(&csv), &peer);
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = make_pki(dir.path(), "server");
    let other = make_pki(dir.path(), "other");
    let server = CountServer::start(&[
        "--certfile",
        server_pki.cert.to_str().unwrap(),
        "--keyfile",
        server_pki.key.to_str().unwrap(),
    ]);
    let output = run_sim(&[
        "--target",
        &format!("wss://localhost:{}/ws", server.port),
        "--ca",
        other.ca.to_str().unwrap(),
        "-A",
        "5",
        "--duration",
        "1500ms",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1), "a run where no phone could connect must fail");
    let r = report(&output);
    let rules: Vec<&str> =
        r["failures"].as_array().unwrap().iter().map(|f| f["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["all-connected", "failed-connections"]);
    assert_eq!(r["connections"]["established"], 0);
    assert!(r["errors"]["tls"].as_u64().unwrap() >= 5, "errors: {}", r["errors"]);
    assert!(r["error_examples"]["tls"].as_str().unwrap().contains("certificate"), "{}", r["error_examples"]);
    let peer = server.stop();
    assert!(peer.received.is_empty());
}

#[test]
fn wss_without_a_ca_is_an_error() {
    let output = run_sim(&["--target", "wss://localhost:1/ws", "-A", "1", "--duration", "1s"]);
    assert_eq!(output.status.code(), Some(2));
}
