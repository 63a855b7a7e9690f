//! The real firmware image (firmware/boards/mps2-an386) booted in QEMU with user-mode networking:
//! Python phones on the host reach it through a hostfwd port, it reaches a real aggregator on
//! Postgres through TLS 1.3 trunks (the guest sees the host's loopback as 10.0.2.2), and the
//! totals in Postgres are exactly what the phones sent.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{free_port, python_phones, wait_totals, Aggregator, Kind};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

struct Qemu {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Qemu {
    fn wait_for(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log.lock().unwrap().iter().any(|l| l.contains(text)) {
            assert!(Instant::now() < deadline, "the firmware never logged {text:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn phones_through_the_qemu_board_reach_postgres_exactly() {
    let Some(agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let secret = agg.add_gateway("qemu-site");
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    // Provisioned at "flash" time: QEMU loads this block into the board's provisioning sector.
    let prov = agg.data_dir().join("prov.bin");
    let status = Command::new(support::gateway_binary())
        .args(["provision", "--id", "qemu-site", "--secret", &hex, "--seed"])
        .arg("--ca")
        .arg(agg.ca())
        .args(["--aggregator", &format!("10.0.2.2:{}", agg.addr.port()), "--server-name", "localhost", "-o"])
        .arg(&prov)
        .status()
        .unwrap();
    assert!(status.success());

    // scripts/firmware.sh builds the image (Debian's Rust with build-std, or rustup's target) and
    // boots it with the guest's port 80 on 127.0.0.1:port.
    let port = free_port();
    let mut child = Command::new("bash")
        .arg(format!("{ROOT}/scripts/firmware.sh"))
        .arg("run-qemu")
        .arg(&prov)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bash scripts/firmware.sh");
    let stdout = child.stdout.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[qemu] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    let qemu = Qemu { child, log };
    qemu.wait_for("trunk link 0: TLS 1.3 and WebSocket up", Duration::from_secs(600));
    qemu.wait_for("trunk link 1: TLS 1.3 and WebSocket up", Duration::from_secs(60));

    // 16 phones (HOLDFAST_QEMU_PHONES; the board holds 64), 15 bytes and up each (binary, text,
    // fragmented), each told all of it durable.
    let phones = std::env::var("HOLDFAST_QEMU_PHONES").ok().and_then(|n| n.parse().ok()).unwrap_or(16);
    let sent = python_phones(&format!("ws://127.0.0.1:{port}"), "qemu", phones, 15);
    let persisted = wait_totals(&agg, "qemu-", &sent).await;
    assert_eq!(persisted, sent, "Postgres holds exactly what the phones sent through the board");
    drop(qemu);
}
