//! The real firmware image (firmware/boards/mps2-an386) booted in QEMU with user-mode networking:
//! phones on the host reach its port 80 through a hostfwd port, and it reaches the aggregator on
//! the host's loopback as 10.0.2.2.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{collect_lines, free_port, gateway_binary, Aggregator};

/// The repository's root.
pub const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// A booted board: QEMU's process (killed on drop), what the firmware logged, and the loopback
/// port that reaches the guest's port 80.
pub struct Qemu {
    child: std::process::Child,
    log: Arc<Mutex<Vec<String>>>,
    pub port: u16,
}

impl Qemu {
    /// Provisions gateway `name` of `agg` into a block, builds the image (with `phones` sessions,
    /// `HOLDFAST_PHONES`, or the default) and boots it; returns once both trunks are up.
    pub fn boot(agg: &Aggregator, name: &str, phones: Option<usize>) -> Qemu {
        let secret = agg.add_gateway(name);
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        // Provisioned at "flash" time: QEMU loads this block into the board's provisioning sector.
        let prov = agg.data_dir().join("prov.bin");
        let status = Command::new(gateway_binary())
            .args(["provision", "--id", name, "--secret", &hex, "--seed"])
            .arg("--ca")
            .arg(agg.ca())
            .args(["--aggregator", &Self::aggregator(agg), "--server-name", "localhost"])
            .args(["--device-public-key", &agg.device_public_key(), "-o"])
            .arg(&prov)
            .status()
            .unwrap();
        assert!(status.success());
        let qemu = Self::start(&prov, phones);
        qemu.wait_for("trunk link 0: TLS 1.3 and WebSocket up", Duration::from_secs(600));
        qemu.wait_for("trunk link 1: TLS 1.3 and WebSocket up", Duration::from_secs(60));
        qemu
    }

    /// `agg`'s address as the guest reaches it (QEMU's user-mode network: the host's loopback is
    /// 10.0.2.2).
    pub fn aggregator(agg: &Aggregator) -> String {
        format!("10.0.2.2:{}", agg.addr.port())
    }

    /// Builds the image (with `phones` sessions, or the default) and boots it with the
    /// provisioning block `prov`; returns at once.
    pub fn start(prov: &Path, phones: Option<usize>) -> Qemu {
        // scripts/firmware.sh builds the image (Debian's Rust with build-std, or rustup's target)
        // and boots it with the guest's port 80 on 127.0.0.1:port.
        let port = free_port();
        let mut command = Command::new("bash");
        command.arg(format!("{ROOT}/scripts/firmware.sh")).arg("run-qemu").arg(prov).arg(port.to_string());
        match phones {
            Some(n) => command.env("HOLDFAST_PHONES", n.to_string()),
            None => command.env_remove("HOLDFAST_PHONES"),
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("bash scripts/firmware.sh");
        let log = collect_lines(child.stdout.take().unwrap(), "qemu");
        Qemu { child, log, port }
    }

    /// Waits until the firmware logged a line containing `text`.
    pub fn wait_for(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logged(text) {
            assert!(Instant::now() < deadline, "the firmware never logged {text:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the firmware logged a line containing `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// How many lines the firmware logged that contain `text`.
    pub fn count(&self, text: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(text)).count()
    }

    /// The last line the firmware logged that contains `text`.
    pub fn last(&self, text: &str) -> Option<String> {
        self.log.lock().unwrap().iter().rev().find(|l| l.contains(text)).cloned()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
