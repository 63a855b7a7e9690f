//! What the end-to-end tests share: running mobile-sim, and the Python peer
//! `tests/peers/count_server.py` (a `websockets` server written independently of mobile-sim).
//!
//! The peer needs Python 3 and the `websockets` package (10.4 or newer: Debian 12's
//! `python3-websockets` will do). When the package is missing, the first test that needs it runs
//! `python3 -m pip install --quiet websockets`; where pip may not install (Debian's own Python),
//! install `python3-websockets` with apt-get instead.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::Once;

/// The mobile-sim binary built for these tests.
pub fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mobile-sim"))
}

/// Runs mobile-sim with `args`; its stderr goes to the test's.
pub fn run_sim(args: &[&str]) -> Output {
    let output = sim().args(args).stderr(Stdio::inherit()).output().expect("mobile-sim runs");
    output
}

/// The `--json` report on stdout.
pub fn report(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("mobile-sim printed no JSON report ({e}):\n{}", String::from_utf8_lossy(&output.stdout))
    })
}

/// Makes sure `python3` can `import websockets`, installing the package once if needed.
pub fn ensure_websockets() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let import = || {
            Command::new("python3")
                .args(["-c", "import websockets"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if import() {
            return;
        }
        eprintln!("python3 cannot import websockets: running python3 -m pip install --quiet websockets");
        let installed = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "websockets"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed && import(),
            "these tests need python3 with the websockets package: `python3 -m pip install websockets`, \
             or on Debian `apt-get install python3-websockets`"
        );
    });
}

pub fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/count_server.py")
}

/// What the peer counted: per device, bytes received and bytes committed.
#[derive(Debug, Default)]
pub struct Totals {
    pub received: HashMap<String, u64>,
    pub committed: HashMap<String, u64>,
}

impl Totals {
    pub fn add(&mut self, other: Totals) {
        for (d, n) in other.received {
            *self.received.entry(d).or_default() += n;
        }
        for (d, n) in other.committed {
            *self.committed.entry(d).or_default() += n;
        }
    }
}

/// A running `count_server.py`.
pub struct CountServer {
    child: Child,
    stdout: BufReader<ChildStdout>,
    pub port: u16,
}

impl CountServer {
    /// Starts the peer with `args` (see the script's docstring) and waits until it listens.
    pub fn start(args: &[&str]) -> Self {
        ensure_websockets();
        let mut child = Command::new("python3")
            .arg(peer_script())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let port = line
            .strip_prefix("PORT ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("count_server.py did not start: {line:?}"));
        Self { child, stdout, port }
    }

    /// Stops the peer (SIGTERM) and returns what it counted.
    pub fn stop(mut self) -> Totals {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let _ = self.child.wait();
        let value: serde_json::Value = serde_json::from_str(rest.trim())
            .unwrap_or_else(|e| panic!("count_server.py printed no totals ({e}): {rest:?}"));
        let map = |key: &str| -> HashMap<String, u64> {
            value[key].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
        };
        Totals { received: map("received"), committed: map("committed") }
    }
}

impl CountServer {
    /// Kills the peer at once (SIGKILL): whatever it had not committed is gone.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CountServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `--per-device` CSV: device -> (sent, durable).
pub fn read_per_device(path: &Path) -> HashMap<String, (u64, u64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("device,sent,durable"));
    lines
        .map(|l| {
            let mut f = l.split(',');
            let d = f.next().unwrap().to_string();
            let sent = f.next().unwrap().parse().unwrap();
            let durable = f.next().unwrap().parse().unwrap();
            (d, (sent, durable))
        })
        .collect()
}

/// Every device sent exactly what the peer received, and had all of it confirmed.
pub fn assert_exact(ours: &HashMap<String, (u64, u64)>, peer: &Totals) {
    let mut mismatches = Vec::new();
    for (device, &(sent, durable)) in ours {
        let received = peer.received.get(device).copied().unwrap_or(0);
        if sent != received || durable != sent {
            mismatches.push(format!("{device}: sent {sent} durable {durable}, peer received {received}"));
        }
    }
    for device in peer.received.keys() {
        if !ours.contains_key(device) {
            mismatches.push(format!("{device}: received by the peer, unknown to mobile-sim"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches, e.g. {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
}

/// A fresh test CA (testkit's, the one every test uses) and a server certificate it signed for
/// localhost and 127.0.0.1, as PEM files in `dir`.
pub fn make_pki(dir: &Path, name: &str) -> testkit::pki::PemFiles {
    testkit::pki::TestCa::new(name).write_files(dir, name)
}
