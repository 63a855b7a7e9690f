//! `lab hold` end to end, small: real aggregator, host gateways, mobile-sim and PostgreSQL (the
//! server of DATABASE_URL). The binaries are the ones `cargo test --workspace` builds next to
//! this test's. The million itself is a command (docs/benchmarks.md); CI runs it at 50,000
//! (scripts/test.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The folder of the workspace's binaries (target/<profile>).
fn bin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lab")).parent().unwrap().to_owned()
}

/// Runs `lab hold` with small settings, phones sending a byte every `mean_interval_s` on
/// average; its exit code, JSON report (if any) and stderr.
fn hold(bin: &Path, out: &Path, mean_interval_s: &str) -> (Option<i32>, Option<Value>, String) {
    let result = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["hold", "--phones", "300", "--per-process", "150", "--hold-s", "4", "--settle-s", "1"])
        .args([
            "--mean-interval-s",
            mean_interval_s,
            "--drain-timeout-s",
            "30",
            // Few handshakes in flight: these tests run side by side on debug binaries, where a
            // gateway's token check takes milliseconds; 64 at once per process (the default)
            // queued past mobile-sim's 10 s connect timeout on a loaded 2-core machine.
            "--concurrent-per-process",
            "8",
            "--sysctl",
            "report",
            "--json",
        ])
        .arg("--bin-dir")
        .arg(bin)
        .arg("--out")
        .arg(out)
        .output()
        .expect("the lab binary");
    let report = serde_json::from_slice(&result.stdout).ok();
    (result.status.code(), report, String::from_utf8_lossy(&result.stderr).into_owned())
}

/// A folder of binaries where mobile-sim is `script` (a shell script that may call the real one,
/// `$REAL`) and the others are the real ones.
fn with_mobile_sim(dir: &Path, script: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["aggregator", "gateway"] {
        std::os::unix::fs::symlink(bin_dir().join(name), bin.join(name)).unwrap();
    }
    let path = bin.join("mobile-sim");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nREAL='{}'\n{script}\n", bin_dir().join("mobile-sim").display()),
    )
    .unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    bin
}

fn database() -> Option<String> {
    testkit::db::admin_url()
}

#[test]
fn a_small_hold_is_held_measured_and_verified() {
    let Some(_) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (code, report, stderr) = hold(&bin_dir(), &dir.path().join("run"), "0.6");
    let report = report.unwrap_or_else(|| panic!("no report (exit {code:?}): {stderr}"));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["gateways"], 2);
    let sim = &report["mobile_sim"];
    assert_eq!(sim["connections"]["established"], 300);
    assert_eq!(sim["verification"]["devices_checked"], 300);
    assert_eq!(sim["verification"]["lost_bytes"], 0);
    assert!(report["durable_bytes_during_hold"].as_f64().unwrap() > 0.0);
    // The phones presented tokens issued before they started (the gateways require them).
    assert!(report["tokens_issued_in_s"].as_f64().is_some(), "{}", report["tokens_issued_in_s"]);
    // On the gateway's own runtime, as mobile-sim itself reports ("auto" resolved).
    assert_eq!(report["phone_engine"], "host-runtime");
    assert!(report["flush_lag_p99_at_most_s"].as_f64().is_some());
    // Every tier was found and measured.
    for tier in report["tiers"].as_array().unwrap() {
        assert!(tier["processes"].as_u64().unwrap() >= 1, "{tier}");
        assert!(tier["rss_during_hold_bytes"].as_u64().unwrap() > 0, "{tier}");
    }
    assert!(!report["timeline"].as_array().unwrap().is_empty());
    // As root, the run had a network namespace of its own with a table sized for its sockets
    // (2 x 300 phones, 4 trunks and room: 2,048 buckets, read inside it; a namespace sharing the
    // machine's table reads negative) and reached PostgreSQL through the lab's relay (the
    // verification above read it from there).
    // SAFETY: geteuid only reads this process's credentials.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(report["netns"]["ehash_entries"], 2048, "{:#}", report["netns"]);
    } else {
        assert!(report["netns"].is_null());
    }
    for file in ["report.txt", "report.json", "report.html", "mobile-sim.json", "gw-1.log", "aggregator.log"]
    {
        assert!(dir.path().join("run").join(file).is_file(), "{file} missing");
    }
}

/// A verification that reads a database where nothing arrived must fail the run: mobile-sim
/// checks every device against another database of the same schema, empty.
#[tokio::test]
async fn a_run_verified_against_an_empty_database_fails() {
    let Some(admin) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let empty = testkit::db::PgDatabase::create(&admin).await;
    // The aggregator's migrations give it the schema (and nothing else).
    let migrated = Command::new(bin_dir().join("aggregator"))
        .arg("--data-dir")
        .arg(dir.path().join("admin"))
        .args(["--database-url", &empty.url, "gateway", "list"])
        .status()
        .unwrap();
    assert!(migrated.success());
    // Every postgres:// argument (the run's database) replaced by the empty one.
    let script = format!(
        "n=$#\nfor a in \"$@\"; do\n  case \"$a\" in postgres://*) a='{}' ;; esac\n  set -- \"$@\" \"$a\"\ndone\nshift \"$n\"\nexec \"$REAL\" \"$@\"",
        empty.url
    );
    let bin = with_mobile_sim(dir.path(), &script);
    let (code, report, stderr) = hold(&bin, &dir.path().join("run"), "0.6");
    let report = report.unwrap_or_else(|| panic!("no report (exit {code:?}): {stderr}"));
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    let failures = report["failures"].to_string();
    assert!(failures.contains("bytes lost"), "{failures}");
    assert!(report["mobile_sim"]["verification"]["lost_bytes"].as_u64().unwrap() > 0);
}

/// A hold in which no phone sends anything measured nothing: the run fails.
#[test]
fn a_hold_without_bytes_fails() {
    let Some(_) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (code, report, stderr) = hold(&bin_dir(), &dir.path().join("run"), "3600");
    let report = report.unwrap_or_else(|| panic!("no report (exit {code:?}): {stderr}"));
    assert_eq!(code, Some(1), "{report:#}");
    let failures = report["failures"].to_string();
    assert!(failures.contains("no byte became durable"), "{failures}");
}

/// The processes whose command line names `dir` (every process of a run names its folder).
fn processes_naming(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline).contains(&needle).then_some(pid)
        })
        .collect()
}

/// A SIGTERM during the hold stops the run in order: the lab exits, and nothing it started is
/// left running (its processes are in process groups of their own, out of a terminal's reach).
#[test]
fn a_stopped_run_leaves_nothing_running() {
    let Some(_) = database() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut lab = Command::new(env!("CARGO_BIN_EXE_lab"))
        .args(["hold", "--phones", "300", "--per-process", "150", "--hold-s", "600", "--settle-s", "1"])
        .args(["--sysctl", "report", "--json"])
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until the phones run (mobile-sim's log appears), and a little more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !out.join("mobile-sim.log").exists() {
        assert!(std::time::Instant::now() < deadline, "the run did not reach its phones");
        assert!(lab.try_wait().unwrap().is_none(), "the lab ended early");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(processes_naming(&out).len() >= 3, "the run's processes were not found");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(lab.id() as i32, libc::SIGTERM) };
    let status = lab.wait().unwrap();
    assert!(!status.success(), "a stopped run is not a successful one");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let left = processes_naming(&out);
    assert!(left.is_empty(), "processes left running after the lab stopped: {left:?}");
}
