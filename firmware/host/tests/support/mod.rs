//! What the gateway's tests run: the real aggregator binary on a real database (the aggregator's
//! own test support, shared), and the real gateway binary.
#![allow(dead_code)]

#[allow(unused_imports)] // each test file uses its own part
pub use testkit::{browser, db, pki, process};

pub mod qemu;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use db::Kind;
pub use process::Aggregator;

/// The gateway binary built by this package.
pub fn gateway_binary() -> &'static str {
    env!("CARGO_BIN_EXE_gateway")
}

pub use testkit::free_port;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every line `out` prints, echoed with `[label]` and kept for the test to look through.
pub fn collect_lines(out: std::process::ChildStdout, label: &'static str) -> Arc<Mutex<Vec<String>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("[{label}] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    log
}

/// A running `gateway` process and the lines it logged.
pub struct Gateway {
    child: Option<Child>,
    pub listen: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    /// Provisions gateway `name` on `agg` and starts it on the kernel stack.
    pub fn start(agg: &Aggregator, name: &str, extra: &[&str]) -> Gateway {
        let secret = agg.add_gateway(name);
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut c = Command::new(gateway_binary());
        c.args(["--id", name, "--secret", &hex(&secret)])
            .arg("--ca")
            .arg(agg.ca())
            .args(["--aggregator", &agg.addr.to_string(), "--listen", &listen.to_string()])
            .args(["--device-public-key", &agg.device_public_key()])
            .args(["--status-interval-s", "1"])
            .args(extra);
        Self::spawn(c, listen)
    }

    /// Starts a prepared command (any stack), collecting its log.
    pub fn spawn(mut c: Command, listen: SocketAddr) -> Gateway {
        c.env("RUST_LOG", std::env::var("HOLDFAST_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().expect("gateway binary");
        let log = collect_lines(child.stdout.take().unwrap(), "gateway");
        Gateway { child: Some(child), listen, log }
    }

    /// Waits until a log line contains `text` (after `skip` earlier lines), returns its index.
    pub fn wait_for(&self, text: &str, skip: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.log.lock().unwrap().iter().skip(skip).position(|l| l.contains(text)) {
                return skip + i;
            }
            assert!(Instant::now() < deadline, "the gateway never logged {text:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether any log line so far contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Waits until every trunk link is up.
    pub fn wait_links_up(&self, links: usize) {
        for link in 0..links {
            self.wait_for(
                &format!("trunk link {link}: TLS 1.3 and WebSocket up"),
                0,
                Duration::from_secs(30),
            );
        }
    }

    /// The gateway process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Its resident memory now, in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS in kB")
    }

    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    pub fn base_url(&self) -> String {
        format!("ws://{}", self.listen)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Device tokens for phones `PREFIX-0` to `PREFIX-(n-1)` from the key in the aggregator's data
/// folder `data`, as the JSON object tests/peers/phones.py reads from `PHONE_TOKENS`.
pub fn phone_tokens(data: &std::path::Path, prefix: &str, n: usize) -> String {
    let tokens: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            let device = format!("{prefix}-{i}");
            let token = process::device_token(data, &device);
            (device, token.into())
        })
        .collect();
    serde_json::Value::Object(tokens).to_string()
}

/// Runs the Python `websockets` phones (tests/peers/phones.py), each with its device token from
/// `agg`, and returns what each sent.
pub fn python_phones(
    agg: &Aggregator,
    base: &str,
    prefix: &str,
    phones: usize,
    each: usize,
) -> BTreeMap<String, u64> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/phones.py");
    let out = Command::new("python3")
        .args([script, base, prefix, &phones.to_string(), &each.to_string(), "60"])
        .env("PHONE_TOKENS", phone_tokens(agg.data_dir(), prefix, phones))
        .output()
        .expect("python3 (scripts/install-deps.sh installs it with the websockets package)");
    assert!(out.status.success(), "python phones failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["sent"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

/// Persisted totals of devices with `prefix`, once they equal `expected` (or the timeout).
pub async fn wait_totals(
    agg: &Aggregator,
    prefix: &str,
    expected: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let store = agg.store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: BTreeMap<String, u64> = store.device_totals(prefix).await.unwrap().into_iter().collect();
        if &got == expected || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
