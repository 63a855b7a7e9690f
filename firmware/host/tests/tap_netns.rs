//! The gateway on embassy-net over a TAP device: the firmware's own network stack, carrying phones
//! inside a network namespace this test creates (needs root, as CI runs).

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{gateway_binary, Gateway};

const AGGREGATOR: &str = "192.168.69.1";
const GATEWAY: &str = "192.168.69.2";

/// A network namespace with a TAP device `tap0` at 192.168.69.1/24; deleted on drop.
struct Namespace(String);

impl Namespace {
    fn create() -> Option<Namespace> {
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        if !root {
            assert!(
                std::env::var_os("HOLDFAST_REQUIRE_NETNS").is_none(),
                "this test needs root (network namespaces and TAP devices)"
            );
            eprintln!("skipping the TAP test: it needs root (network namespaces and TAP devices)");
            return None;
        }
        let ns = Namespace(format!("hf-tap-{}", std::process::id()));
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("ip (iproute2)");
            assert!(status.success(), "ip {args:?} failed");
        };
        ip(&["netns", "add", &ns.0]);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ip(&["-n", &ns.0, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        ip(&["-n", &ns.0, "addr", "add", &format!("{AGGREGATOR}/24"), "dev", "tap0"]);
        ip(&["-n", &ns.0, "link", "set", "tap0", "up"]);
        Some(ns)
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn phones_through_embassy_net_on_a_tap_device_are_counted_exactly() {
    let Some(ns) = Namespace::create() else { return };
    let data = tempfile::tempdir().unwrap();
    let aggregator = support::process::binary();
    // The embedded store: Postgres on the host's loopback is out of the namespace's reach (and
    // DATABASE_URL, set for other tests, must not leak in).
    let out = Command::new(&aggregator)
        .arg("--data-dir")
        .arg(data.path())
        .args(["gateway", "add", "site-tap"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "gateway add: {}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8(out.stdout).unwrap().split_whitespace().nth(1).unwrap().to_owned();
    let agg = Killed(
        ns.command(&aggregator)
            .arg("--data-dir")
            .arg(data.path())
            .args(["--listen", &format!("{AGGREGATOR}:8443")])
            .env("RUST_LOG", "warn")
            .env_remove("DATABASE_URL")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The CA is written at the aggregator's first start.
    let ca = data.path().join("ca.pem");
    for _ in 0..200 {
        if ca.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = ns.command(gateway_binary());
    c.args([
        "--stack",
        "tap",
        "--tap",
        "tap0",
        "--tap-address",
        &format!("{GATEWAY}/24"),
        "--tap-sockets",
        "32",
    ])
    .args(["--listen", "0.0.0.0:9000", "--aggregator", &format!("{AGGREGATOR}:8443")])
    .args(["--id", "site-tap", "--secret", &secret])
    .args(["--device-public-key", &support::process::device_public_key(data.path())])
    .arg("--ca")
    .arg(&ca);
    let gw = Gateway::spawn(c, format!("{GATEWAY}:9000").parse().unwrap());
    gw.wait_links_up(2);

    // Python websockets phones (the script `python_phones` runs), also inside the namespace, reach the gateway over the TAP link.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/phones.py");
    let out = ns
        .command("python3")
        .args([script, &format!("ws://{GATEWAY}:9000"), "tap", "24", "10", "60"])
        .env("PHONE_TOKENS", support::phone_tokens(data.path(), "tap", 24))
        .output()
        .unwrap();
    assert!(out.status.success(), "phones: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent: BTreeMap<String, u64> =
        v["sent"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect();

    let store = aggregator::store::Store::open(None, data.path(), 2).await.unwrap();
    let mut persisted = BTreeMap::new();
    for _ in 0..100 {
        persisted = store.device_totals("tap-").await.unwrap().into_iter().collect();
        if persisted == sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(persisted, sent, "what the store holds is exactly what the phones sent");
    drop(gw);
    drop(agg);
}
