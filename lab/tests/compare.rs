//! `lab compare`, small, on the servers that need no Node.js: the host gateway (with its
//! aggregator) and the aggregator with direct phones, loaded by the real mobile-sim. The full
//! comparison with Node.js `ws` and socket.io is a command (docs/benchmarks.md, "Side by side
//! with the seed's stack"); it needs npm to install them.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn the_gateway_and_the_aggregator_are_measured_with_the_same_phones() {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_lab")).parent().unwrap().to_owned();
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["compare", "--servers", "gateway,aggregator", "--idle", "200", "--busy", "50"])
        .args(["--interval-ms", "100", "--busy-s", "3", "--runs", "1", "--json"])
        // Not the default engine: the report must say the phones ran on the one asked for.
        .args(["--phone-engine", "tokio"])
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("the lab binary");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "lab compare failed: {stderr}");
    let report: Value = serde_json::from_slice(&result.stdout).expect("a JSON report");
    // Every assertion below prints the whole report and lab's log: a failure in CI says why.
    let context = format!("{report:#}\nlab's log:\n{stderr}");
    let summary = report["summary"].as_array().expect("a summary");
    let servers: Vec<&str> = summary.iter().map(|s| s["server"].as_str().unwrap()).collect();
    assert_eq!(servers, ["gateway", "aggregator"], "{context}");
    for s in summary {
        let rss = s["rss_per_idle_phone_bytes"].as_f64().unwrap();
        let us = s["us_per_byte"].as_f64().unwrap();
        assert!(rss > 0.0 && us > 0.0, "{s}: idle phones and bytes measured\n{context}");
        assert!(s["cpu_ratio_to_node_ws"].is_null(), "no Node.js server ran: no ratio\n{context}");
    }
    for m in report["measurements"].as_array().unwrap() {
        // 50 phones at ~10 bytes/s each for 3 s: every one of them was confirmed.
        assert!(m["bytes"].as_u64().unwrap() > 500, "{m}: bytes confirmed\n{context}");
        assert_eq!(m["phone_engine"], "tokio", "{m}: the phones' engine asked for\n{context}");
    }
    assert!(out.path().join("compare.txt").is_file() && out.path().join("compare.json").is_file());
}
