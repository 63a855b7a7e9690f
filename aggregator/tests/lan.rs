//! `--lan`: the aggregator serves a phone on the local network. Two network namespaces this test
//! creates stand for the machine and the phone, joined by a veth pair on 10.231.0.0/24 (nothing
//! is added to the host's own network, and the traffic never leaves the two namespaces). In the
//! first, the real aggregator runs with `--lan --listen 10.231.0.1:8443`; in the second, this
//! test binary runs again (the ignored test at the end) as the phone: it downloads the CA from
//! `/ca.crt`, checks its fingerprint against the one the aggregator printed, installs it, and
//! Chromium, trusting nothing else, opens the phone page over https and sends over wss.
//!
//! Needs root (CI runs as root; `HOLDFAST_REQUIRE_NETNS` makes a missing root an error) and
//! Chromium, chromedriver and certutil (`scripts/install-deps.sh`).

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::browser::{self, Browser, Trust, Viewport};

const SERVER: &str = "10.231.0.1";
const PHONE: &str = "10.231.0.2";
/// What the phone side gets from the machine side: where to go and what to expect.
const PHONE_ENV: &str = "HOLDFAST_LAN_TEST_PHONE";
const PHONE_VIEW: Viewport = Viewport::Phone { width: 390, height: 844 };

/// Two namespaces joined by a veth pair; both deleted on drop (which deletes the pair too), also
/// when the test fails.
struct Lan {
    server: String,
    phone: String,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed");
}

impl Lan {
    fn create() -> Option<Lan> {
        let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        if !root {
            assert!(
                std::env::var_os("HOLDFAST_REQUIRE_NETNS").is_none(),
                "this test needs root (network namespaces)"
            );
            eprintln!("skipping the LAN test: it needs root (network namespaces)");
            return None;
        }
        let id = std::process::id();
        let lan = Lan { server: format!("hf-lan-srv-{id}"), phone: format!("hf-lan-phone-{id}") };
        ip(&["netns", "add", &lan.server]);
        ip(&["netns", "add", &lan.phone]);
        // Made inside the server's namespace with its peer put straight into the phone's: no end
        // of the pair is ever in the host's namespace.
        ip(&[
            "-n",
            &lan.server,
            "link",
            "add",
            "lan0",
            "type",
            "veth",
            "peer",
            "name",
            "lan0",
            "netns",
            &lan.phone,
        ]);
        for (ns, addr) in [(&lan.server, SERVER), (&lan.phone, PHONE)] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "lan0"]);
            ip(&["-n", ns, "link", "set", "lan0", "up"]);
        }
        Some(lan)
    }

    fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.server]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.phone]).status();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The start-up message's value after `label` (e.g. "phone page"), and the SHA-256 line.
fn value_after<'a>(lines: &'a [String], label: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default())
        .unwrap_or_else(|| panic!("no {label:?} in the start-up message:\n{}", lines.join("\n")))
}

#[test]
fn a_phone_on_the_lan_trusts_the_downloaded_ca_and_sends_over_wss() {
    if !browser::available() {
        return;
    }
    let Some(lan) = Lan::create() else { return };
    let data = tempfile::tempdir().unwrap();
    let mut agg = Killed(
        Lan::command(&lan.server, support::process::binary())
            .arg("--data-dir")
            .arg(data.path())
            .args(["--lan", "--listen", &format!("{SERVER}:8443")])
            .env("RUST_LOG", "warn")
            // The embedded store: the host's Postgres is out of this namespace's reach.
            .env_remove("DATABASE_URL")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The start-up message, up to the QR code's address line after it.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = agg.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("[aggregator] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // The phone page's link is printed last, under its QR code.
    while !lines.iter().any(|l: &String| l.trim().starts_with(&format!("https://{SERVER}:8443/?device="))) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => panic!("the aggregator did not print the phone page's address:\n{}", lines.join("\n")),
        }
    }
    // A demo device and its token, on the LAN address (not loopback).
    let link = value_after(&lines, "phone page");
    let page = format!("https://{SERVER}:8443/");
    assert!(link.starts_with(&format!("{page}?device=")) && link.contains("&token="), "{link}");
    let dashboard = value_after(&lines, "dashboard");
    let token =
        dashboard.split_once("?token=").map(|(_, t)| t.to_owned()).expect("the dashboard with its token");
    let fingerprint = value_after(&lines, "SHA-256");
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "a SHA-256 fingerprint: {fingerprint}");
    let qr_rows = lines.iter().filter(|l| l.contains('▀') || l.contains('▄') || l.contains('█')).count();
    assert!(qr_rows >= 10, "a QR code of the phone page is printed ({qr_rows} rows)");

    // The phone: this test binary again, in the phone's namespace.
    let out = Lan::command(&lan.phone, std::env::current_exe().unwrap())
        .args(["--exact", "phone_side", "--ignored", "--nocapture", "--test-threads=1"])
        .env(
            PHONE_ENV,
            serde_json::json!({ "page": page, "link": link, "token": token, "fingerprint": fingerprint })
                .to_string(),
        )
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("[phone]\n{said}");
    assert!(out.status.success() && said.contains("1 passed"), "the phone side failed");
    drop(agg);
}

/// The phone's side, run by the test above inside the phone's namespace (ignored otherwise).
#[test]
#[ignore = "the phone side of a_phone_on_the_lan_trusts_the_downloaded_ca_and_sends_over_wss"]
fn phone_side() {
    let Some(given) = std::env::var_os(PHONE_ENV) else { return };
    let given: serde_json::Value = serde_json::from_str(&given.to_string_lossy()).unwrap();
    let page = given["page"].as_str().unwrap();
    let link = given["link"].as_str().unwrap();
    let token = given["token"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();

    // As a person does once: fetch the CA past the certificate warning, then check it is the one
    // the terminal showed before trusting it.
    let ca = dir.path().join("holdfast-ca.crt");
    let curl = |args: &[&str]| {
        Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("curl")
    };
    let got = curl(&[
        "--insecure",
        "-o",
        &ca.display().to_string(),
        "-w",
        "%{content_type}",
        &format!("{page}ca.crt"),
    ]);
    assert!(got.status.success(), "downloading the CA: {}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(String::from_utf8_lossy(&got.stdout), "application/x-x509-ca-cert");
    let offer = aggregator::lan::CaOffer::load(&ca).unwrap();
    assert_eq!(offer.fingerprint, given["fingerprint"].as_str().unwrap(), "the CA the terminal showed");

    // Trusting only that CA: the dashboard's data answers with the printed token, not without.
    let status = |url: &str| {
        let out =
            curl(&["--cacert", &ca.display().to_string(), "-o", "/dev/null", "-w", "%{http_code}", url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status(&format!("{page}api/dashboard?token={token}")), "200");
    assert_eq!(status(&format!("{page}api/dashboard")), "401");

    // Without the CA, Chromium refuses the page (the control: trust is what makes it work).
    {
        let stranger = Browser::start_trusting(PHONE_VIEW, Trust::Key("none"), &[SERVER]);
        match stranger.try_goto(page) {
            Err(e) => {
                assert!(e.contains("CERT") || e.contains("certificate"), "refused for its certificate: {e}")
            }
            Ok(()) => assert_ne!(
                stranger.eval("return document.title"),
                "holdfast phone",
                "an untrusted page loaded"
            ),
        }
    }

    let b = Browser::start_trusting(PHONE_VIEW, Trust::CaIn(&ca), &[SERVER]);
    // The first navigation of a fresh browser under load has been seen to come back before the
    // page (CI, once): load it again until it is there.
    let steps = b.wait_for("the CA page over the trusted CA", Duration::from_secs(30), |b| {
        b.goto(&format!("{page}ca"));
        b.read("main", "textContent").as_str().map(str::to_owned)
    });
    let steps = steps.as_str();
    assert!(
        steps.contains("Android") && steps.contains("iPhone") && steps.contains("Certificate Trust Settings"),
        "the install steps: {steps}"
    );
    b.goto(&format!("{link}&min=0.1&max=0.3"));
    assert_eq!(b.eval("return document.title"), "holdfast phone");
    let server = b.read("#server", "placeholder");
    assert_eq!(server, format!("wss://{}/ws", page.trim_start_matches("https://").trim_end_matches('/')));
    b.click("#run");
    let durable = b.wait_for("3 bytes durable over wss", Duration::from_secs(60), |b| {
        b.number("#durable").filter(|&n| n >= 3)
    });
    println!("phone: {durable} bytes durable over {server}");
    b.click("#run");
    b.wait_for("stopped", Duration::from_secs(30), |b| {
        (b.read("#state", "dataset.state") == "stopped").then_some(())
    });
    assert_eq!(b.number("#durable"), b.number("#sent"), "every byte sent is durable");
}
