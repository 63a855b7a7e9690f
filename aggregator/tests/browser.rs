//! The phone page and the dashboard in a real browser (headless Chromium through chromedriver)
//! against the real aggregator on a real Postgres: the page's bytes reach the database over wss
//! and the page shows them durable; the dashboard shows the sessions a mobile-sim run opens.
//! Each test writes a screenshot (see `support::browser::screenshot_dir`).

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::browser::{self, png_size, spki_hash, Browser, Viewport};
use support::db::Kind;
use support::process::Aggregator;

/// The phone every screenshot of `/` is taken at (an iPhone 12 to 15's CSS viewport).
const PHONE: Viewport = Viewport::Phone { width: 390, height: 844 };
const DESKTOP: Viewport = Viewport::Desktop { width: 1280, height: 1000 };

/// One browser at a time: Chromium, an aggregator and mobile-sim are a lot for two cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn trusting(agg: &Aggregator, viewport: Viewport) -> Browser {
    Browser::start(viewport, &spki_hash(&agg.data_dir().join("server.key")))
}

fn page_url(agg: &Aggregator, path: &str) -> String {
    format!("https://localhost:{}{path}", agg.addr.port())
}

#[tokio::test]
async fn the_phone_page_sends_over_wss_and_shows_what_is_durable() {
    if !browser::available() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let Some(agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let b = trusting(&agg, PHONE);
    b.goto(&page_url(&agg, "/"));
    assert_eq!(b.eval("return document.title"), "holdfast phone");
    assert_eq!(b.eval("return [innerWidth, innerHeight]"), serde_json::json!([390, 844]));
    assert_eq!(b.read("#state", "textContent"), "stopped");
    // The default server is the one the page came from, over TLS.
    let server = b.read("#server", "placeholder");
    assert_eq!(server, format!("wss://localhost:{}/ws", agg.addr.port()));
    let generated = b.read("#device", "value");
    assert!(generated.as_str().is_some_and(|d| d.starts_with("web-")), "a device id is made: {generated}");

    // As a person would: a device id, fast pauses, Start.
    let device = format!("browser-{:08x}", rand::random::<u32>());
    b.fill("#device", &device);
    b.fill("#min", "0.1");
    b.fill("#max", "0.3");
    assert_eq!(b.read("#msg", "textContent"), "", "the settings are accepted");
    b.click("#run");
    b.wait_for("connected", Duration::from_secs(30), |b| {
        (b.read("#state", "dataset.state") == "connected").then_some(())
    });
    let durable = b
        .wait_for("10 bytes durable", Duration::from_secs(60), |b| b.number("#durable").filter(|&n| n >= 10));
    assert!(b.number("#sent").unwrap() >= durable);
    let shot = b.screenshot("phone-390x844.png");
    assert_eq!(png_size(&shot), (390, 844));
    let before = b.number("#sent").unwrap();
    b.click("#once");
    assert!(b.number("#sent").unwrap() > before, "Send 1 byte sends one at once");

    // Stop: the last bytes are confirmed, then the connection closes.
    b.click("#run");
    b.wait_for("stopped", Duration::from_secs(30), |b| {
        (b.read("#state", "dataset.state") == "stopped").then_some(())
    });
    let sent = b.number("#sent").unwrap();
    assert_eq!(b.number("#durable"), Some(sent), "everything sent was confirmed durable");
    assert_eq!(b.number("#pending"), Some(0));
    let totals = agg.store().await.device_totals(&device).await.unwrap();
    assert_eq!(totals, vec![(device.clone(), sent)], "the database holds exactly what the page sent");

    // The battery log: rows were recorded (start, connected, ticks...) and export as CSV.
    let rows = b.eval("return JSON.parse(localStorage.getItem('holdfast.batterylog.v1')).length");
    assert!(rows.as_u64().unwrap() >= 3, "log rows: {rows}");
    b.click("#export");
    let csv = b.wait_for("the CSV download", Duration::from_secs(20), |b| {
        let file = std::fs::read_dir(b.downloads.path())
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".csv"))?;
        std::fs::read_to_string(file.path()).ok()
    });
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("time,battery_percent,charging,bytes_sent,bytes_durable,pause_min_s,pause_max_s,connection,page_visible,event")
    );
    let last: Vec<&str> = lines.last().expect("rows").split(',').collect();
    assert_eq!(last[9], "stop", "the last row is the stop: {last:?}");
    assert_eq!((last[5], last[6]), ("0.1", "0.3"), "the pause setting is logged");
}

#[tokio::test]
async fn the_phone_page_reconnects_when_the_server_comes_back() {
    if !browser::available() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let Some(mut agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let b = trusting(&agg, PHONE);
    let device = format!("restart-{:08x}", rand::random::<u32>());
    // Settings from the address, as a link or QR code would give them.
    b.goto(&page_url(&agg, &format!("/?device={device}&min=0.1&max=0.2")));
    b.click("#run");
    let first =
        b.wait_for("5 bytes durable", Duration::from_secs(60), |b| b.number("#durable").filter(|&n| n >= 5));

    // The aggregator dies (SIGKILL): the page notices and retries with backoff ...
    agg.kill();
    b.wait_for("reconnecting", Duration::from_secs(30), |b| {
        (b.read("#state", "dataset.state") == "waiting").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    // ... and carries on once it is back on the same address.
    agg.spawn();
    b.wait_for("connected again", Duration::from_secs(90), |b| {
        (b.read("#state", "dataset.state") == "connected").then_some(())
    });
    b.wait_for("more bytes durable", Duration::from_secs(60), |b| {
        b.number("#durable").filter(|&n| n >= first + 5)
    });
    assert!(
        b.read("#detail", "textContent").as_str().unwrap().contains("reconnect"),
        "the page counts reconnects"
    );
    b.click("#run");
    b.wait_for("stopped", Duration::from_secs(30), |b| {
        (b.read("#state", "dataset.state") == "stopped").then_some(())
    });

    // What the page called durable is in the database; what it sent is the most there can be
    // (bytes in flight when the server died may or may not have been committed).
    let (sent, durable) = (b.number("#sent").unwrap(), b.number("#durable").unwrap());
    let stored = agg.store().await.device_totals(&device).await.unwrap();
    let stored = stored.first().map_or(0, |(_, n)| *n);
    assert!(durable <= stored && stored <= sent, "durable {durable} <= stored {stored} <= sent {sent}");
}

/// The mobile-sim binary, built by `cargo test --workspace` next to the aggregator's.
fn mobile_sim() -> PathBuf {
    let aggregator = PathBuf::from(env!("CARGO_BIN_EXE_aggregator"));
    let path = aggregator.with_file_name("mobile-sim");
    assert!(
        path.exists(),
        "{} is missing: run this through `cargo test --workspace` (or `cargo build -p mobile-sim` first)",
        path.display()
    );
    path
}

#[tokio::test]
async fn the_dashboard_shows_the_sessions_of_a_mobile_sim_run() {
    if !browser::available() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let token = format!("{:032x}", rand::random::<u128>());
    let Some(agg) = Aggregator::start(Kind::Postgres, &["--dashboard-token", &token]).await else { return };
    let url = agg.database_url.clone().expect("postgres");
    let mut gateways = String::new();
    for name in ["site-north", "site-south"] {
        let secret: String = agg.add_gateway(name).iter().map(|b| format!("{b:02x}")).collect();
        gateways.push_str(&format!("{name} {secret}\n"));
    }
    let gateways_file = agg.data_dir().join("gateways.txt");
    std::fs::write(&gateways_file, gateways).unwrap();

    let b = trusting(&agg, DESKTOP);
    // Without the token the page asks for it and shows nothing.
    b.goto(&page_url(&agg, "/dashboard"));
    b.wait_for("the token form", Duration::from_secs(20), |b| {
        (b.read("#login", "hidden") == false).then_some(())
    });
    assert_eq!(b.read("#live", "hidden"), true);
    b.goto(&page_url(&agg, &format!("/dashboard?token={token}")));
    b.wait_for("the live feed", Duration::from_secs(20), |b| {
        (b.read("#state", "dataset.state") == "live").then_some(())
    });
    assert!(
        !b.eval("return location.href").as_str().unwrap().contains(&token),
        "the token leaves the address bar"
    );

    // 40 phones straight to /ws, and 2 gateways x 60 sessions over 2 trunk links each.
    let ca = agg.ca();
    let common = |mode: Option<&str>| {
        let mut c = Command::new(mobile_sim());
        c.args(mode)
            .arg("--ca")
            .arg(&ca)
            .args(["--min-interval", "300ms", "--max-interval", "1500ms", "--duration", "40s"])
            .args(["--verify", "--database-url", &url, "--quiet"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        c
    };
    let phones = common(None)
        .args(["--target", &format!("wss://localhost:{}/ws", agg.addr.port())])
        .args(["--phones", "40", "--device-prefix", "dash-phone-"])
        .spawn()
        .expect("mobile-sim phones");
    let trunks = common(Some("gateways"))
        .args(["--target", &format!("wss://localhost:{}/trunk", agg.addr.port())])
        .arg("--gateways-file")
        .arg(&gateways_file)
        .args(["--sessions-per-gateway", "60", "--device-prefix", "dash-gw-"])
        .spawn()
        .expect("mobile-sim gateways");

    // Sessions can all be carried before a gateway's second link is up: wait for the links too.
    b.wait_for("40 direct phones, 120 sessions via 2 gateways on 4 links", Duration::from_secs(60), |b| {
        let seen = (b.number("#direct")?, b.number("#trunk")?, b.number("#gateways-up")?);
        let links = b.read("#links", "textContent");
        (seen == (40, 120, 2) && links == "4 trunk links").then_some(())
    });
    let rows = b.eval("return [...document.querySelectorAll('#gateways tr')].map(r => r.dataset.gateway)");
    assert_eq!(rows, serde_json::json!(["site-north", "site-south"]));
    // A few seconds of chart, and the rates moving.
    b.wait_for("bytes per second", Duration::from_secs(30), |b| {
        let bps = b.read("#phone-bps", "dataset.value").as_str()?.parse::<f64>().ok()?;
        let reports = b.read("#reports-ps", "dataset.value").as_str()?.parse::<f64>().ok()?;
        (bps > 0.0 && reports > 0.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(8));
    let shot = b.screenshot("dashboard-1280x1000.png");
    assert_eq!(png_size(&shot), (1280, 1000));

    // mobile-sim proves its bytes were persisted; the dashboard sees the sessions close.
    for (what, child) in [("phones", phones), ("gateways", trunks)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "mobile-sim {what}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        );
    }
    b.wait_for("every session closed", Duration::from_secs(30), |b| {
        (b.number("#direct")? == 0 && b.number("#trunk")? == 0).then_some(())
    });
}
