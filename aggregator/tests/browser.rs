//! The phone page and the dashboard in a real browser (headless Chromium through chromedriver)
//! against the real aggregator on a real Postgres: the page's bytes reach the database over wss
//! and the page shows them durable; the dashboard shows the sessions a mobile-sim run opens.
//! Each test writes a screenshot (see `support::browser::screenshot_dir`). The aggregator runs in
//! the test's process, but for the test of the page riding out its SIGKILL and restart.

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

/// Two browsers at a time at most: Chromium, an aggregator and mobile-sim are a lot for two cores,
/// but the tests mostly wait for the page's pauses, so two together take little more than one.
static BROWSERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

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
    let _browser = BROWSERS.acquire().await.unwrap();
    let Some(agg) = Aggregator::in_process(Kind::Postgres, &[]).await else { return };
    let b = trusting(&agg, PHONE);
    // A link may point the page at another server for that visit, but the page must not
    // remember it: a link from anyone would otherwise send this phone's later visits elsewhere.
    b.goto(&page_url(&agg, "/?server=wss://127.0.0.9:9/ws"));
    assert_eq!(b.read("#server", "value"), "wss://127.0.0.9:9/ws", "the link's server, shown");
    b.fill("#every", "30"); // another setting changed: the settings are saved
    assert_eq!(b.read("#msg", "textContent"), "");
    b.goto(&page_url(&agg, "/"));
    assert_eq!(b.read("#server", "value"), "", "the link's server was not remembered");
    let saved = b.eval("return JSON.parse(localStorage.getItem('holdfast.phone.v1')).server");
    assert_eq!(saved, "", "nor saved");
    assert_eq!(b.eval("return document.title"), "holdfast phone");
    assert_eq!(b.eval("return [innerWidth, innerHeight]"), serde_json::json!([390, 844]));
    assert_eq!(b.read("#state", "textContent"), "stopped");
    // The default server is the one the page came from, over TLS.
    let server = b.read("#server", "placeholder");
    assert_eq!(server, format!("wss://localhost:{}/ws", agg.addr.port()));
    let generated = b.read("#device", "value");
    assert!(generated.as_str().is_some_and(|d| d.starts_with("web-")), "a device id is made: {generated}");

    // As a person would: the link the operator gave (a device and its token), fast pauses,
    // Start.
    let device = format!("browser-{:08x}", rand::random::<u32>());
    let token = agg.device_token(&device);
    b.goto(&page_url(&agg, &format!("/?device={device}&token={token}")));
    assert_eq!(b.read("#device", "value"), device.as_str());
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
        Some("time,battery_percent,charging,bytes_sent,bytes_durable,pause_min_s,pause_max_s,connection,page_visible,event,run,mode")
    );
    let last: Vec<&str> = lines.last().expect("rows").split(',').collect();
    assert_eq!(last[9], "stop", "the last row is the stop: {last:?}");
    assert_eq!((last[5], last[6]), ("0.1", "0.3"), "the pause setting is logged");
}

/// An enrolment link (`/?enrol=CODE`): the page gets a device of its own from the aggregator and
/// counts with it; the code leaves the address bar.
#[tokio::test]
async fn an_enrolment_link_gives_the_page_a_device_of_its_own() {
    if !browser::available() {
        return;
    }
    let _browser = BROWSERS.acquire().await.unwrap();
    const CODE: &str = "enrol-browser-0123456789";
    let Some(agg) = Aggregator::in_process(Kind::Postgres, &["--enrolment-code", CODE]).await else { return };
    let b = trusting(&agg, PHONE);
    b.goto(&page_url(&agg, "/?enrol=wrong-code-0123456789"));
    let refused = b.wait_for("the refusal", Duration::from_secs(30), |b| {
        let msg = b.read("#msg", "textContent");
        msg.as_str().filter(|m| !m.is_empty()).map(str::to_owned)
    });
    assert_eq!(refused, "Enrolment refused: wrong enrolment code");
    b.goto(&page_url(&agg, &format!("/?enrol={CODE}&min=0.1&max=0.3")));
    let device = b.wait_for("enrolled", Duration::from_secs(30), |b| {
        let msg = b.read("#msg", "textContent");
        let msg = msg.as_str()?;
        msg.strip_prefix("Enrolled: this phone is ").map(|d| d.trim_end_matches('.').to_owned())
    });
    assert!(device.starts_with("web-"), "{device}");
    assert_eq!(b.read("#device", "value"), device.as_str());
    assert_eq!(b.eval("return location.search"), "", "the code left the address bar");
    b.click("#run");
    b.wait_for("3 bytes durable", Duration::from_secs(60), |b| b.number("#durable").filter(|&n| n >= 3));
    b.click("#run");
    b.wait_for("stopped", Duration::from_secs(30), |b| {
        (b.read("#state", "dataset.state") == "stopped").then_some(())
    });
    let sent = b.number("#sent").unwrap();
    assert_eq!(b.number("#durable"), Some(sent));
    let totals = agg.store().await.device_totals(&device).await.unwrap();
    assert_eq!(totals, vec![(device.clone(), sent)], "the database holds what the enrolled page sent");
}

#[tokio::test]
async fn the_phone_page_reconnects_when_the_server_comes_back() {
    if !browser::available() {
        return;
    }
    let _browser = BROWSERS.acquire().await.unwrap();
    let Some(mut agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let b = trusting(&agg, PHONE);
    let device = format!("restart-{:08x}", rand::random::<u32>());
    // Settings from the address, as a link or QR code would give them.
    let token = agg.device_token(&device);
    b.goto(&page_url(&agg, &format!("/?device={device}&token={token}&min=0.1&max=0.2")));
    b.click("#run");
    let first =
        b.wait_for("5 bytes durable", Duration::from_secs(60), |b| b.number("#durable").filter(|&n| n >= 5));

    // The aggregator dies (SIGKILL): the page notices and retries with backoff ...
    agg.kill();
    b.wait_for("reconnecting", Duration::from_secs(30), |b| {
        (b.read("#state", "dataset.state") == "waiting").then_some(())
    });
    // A retry fails while the server is down (the close, then the failed retry: 2 reconnects) ...
    b.wait_for("a retry failed", Duration::from_secs(30), |b| (reconnects(b) >= 2).then_some(()));
    // ... and it carries on once the server is back on the same address.
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

/// The reconnects the phone page counts (its detail line: "... · 3 reconnects").
fn reconnects(b: &Browser) -> u64 {
    let detail = b.read("#detail", "textContent");
    let words: Vec<&str> = detail.as_str().unwrap_or_default().split_whitespace().collect();
    words.windows(2).find(|w| w[1].starts_with("reconnect")).and_then(|w| w[0].parse().ok()).unwrap_or(0)
}

/// Counts the dashboard's snapshots as they arrive (`window.__snapshots`), by wrapping the page's
/// EventSource before its scripts run (see `Browser::add_init_script`): nothing test-only in the
/// page.
const COUNT_SNAPSHOTS: &str = r#"(() => {
  window.__snapshots = 0;
  window.EventSource = class extends window.EventSource {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', () => { window.__snapshots += 1; });
    }
  };
})();"#;

fn snapshots(b: &Browser) -> u64 {
    b.eval("return window.__snapshots || 0").as_u64().unwrap_or(0)
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
    let _browser = BROWSERS.acquire().await.unwrap();
    let token = format!("{:032x}", rand::random::<u128>());
    let Some(agg) = Aggregator::in_process(Kind::Postgres, &["--dashboard-token", &token]).await else {
        return;
    };
    let url = agg.database_url.clone().expect("postgres");
    let mut gateways = String::new();
    for name in ["site-north", "site-south"] {
        let secret: String = agg.add_gateway(name).iter().map(|b| format!("{b:02x}")).collect();
        gateways.push_str(&format!("{name} {secret}\n"));
    }
    let gateways_file = agg.data_dir().join("gateways.txt");
    std::fs::write(&gateways_file, gateways).unwrap();

    let b = trusting(&agg, DESKTOP);
    b.add_init_script(COUNT_SNAPSHOTS);
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
            // Stopped by the test (SIGINT: mobile-sim drains, then verifies) once the dashboard
            // showed what it must; the duration is only a bound.
            .args(["--min-interval", "300ms", "--max-interval", "1500ms", "--duration", "120s"])
            .args(["--verify", "--database-url", &url, "--quiet"])
            .env("HOLDFAST_DEVICE_KEY", agg.data_dir().join("device-token.key"))
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
    // The rates moving, and a few seconds of chart (4 more snapshots, one a second).
    b.wait_for("bytes per second", Duration::from_secs(30), |b| {
        let bps = b.read("#phone-bps", "dataset.value").as_str()?.parse::<f64>().ok()?;
        let reports = b.read("#reports-ps", "dataset.value").as_str()?.parse::<f64>().ok()?;
        (bps > 0.0 && reports > 0.0).then_some(())
    });
    let seen = snapshots(&b);
    b.wait_for("4 more snapshots", Duration::from_secs(30), |b| (snapshots(b) >= seen + 4).then_some(()));
    let shot = b.screenshot("dashboard-1280x1000.png");
    assert_eq!(png_size(&shot), (1280, 1000));

    // mobile-sim, interrupted, proves its bytes were persisted; the dashboard sees the sessions
    // close.
    for child in [&phones, &trunks] {
        let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
    }
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

/// A battery for the page, injected before its scripts (see `Browser::add_init_script`): it
/// drains at `window.__battery.rate` percent per hour of real time, fast-forwarded (hundreds of
/// percent an hour) so a run of seconds shows what a phone shows in hours. Its level is computed
/// from the clock whenever read, so how fast the machine is does not change what the page
/// measures; it fires `levelchange` at each whole percent, as a phone does.
const SCRIPTED_BATTERY: &str = r#"(() => {
  let start = 90, rate = 0, t0 = Date.now();
  const level = () => Math.max(0, start - rate * (Date.now() - t0) / 3600000) / 100;
  const events = new EventTarget();
  const battery = {
    get level() { return level(); },
    charging: false, chargingTime: Infinity, dischargingTime: Infinity,
    onlevelchange: null, onchargingchange: null,
    addEventListener: (...a) => events.addEventListener(...a),
    removeEventListener: (...a) => events.removeEventListener(...a),
    dispatchEvent: (e) => events.dispatchEvent(e),
  };
  let whole = Math.floor(level() * 100);
  setInterval(() => {
    const now = Math.floor(level() * 100);
    if (now !== whole) { whole = now; events.dispatchEvent(new Event('levelchange')); }
  }, 50);
  // The test sets the rate between runs; the level carries on from where it is.
  window.__battery = {
    setRate(r) { start = level() * 100; t0 = Date.now(); rate = r; },
    percent: () => level() * 100,
  };
  Object.defineProperty(Navigator.prototype, 'getBattery', {
    configurable: true, value: () => Promise.resolve(battery),
  });
})();"#;

/// The runs' table rows: (mode, drain in %/h, screen-off ms, pause text).
fn runs_table(b: &Browser) -> Vec<(String, Option<f64>, u64, String)> {
    let rows = b.eval(
        "return [...document.querySelectorAll('#runs tr')].map(r => \
         [r.dataset.mode, r.dataset.drain, r.dataset.hiddenMs, r.querySelector('.pause').textContent])",
    );
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().parse().ok(),
                r[2].as_str().unwrap().parse().unwrap(),
                r[3].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn scripted_percent(b: &Browser) -> f64 {
    b.eval("return window.__battery.percent()").as_f64().unwrap()
}

#[tokio::test]
async fn the_battery_assessment_measures_each_runs_drain_and_keeps_every_row() {
    if !browser::available() {
        return;
    }
    let _browser = BROWSERS.acquire().await.unwrap();
    let Some(agg) = Aggregator::in_process(Kind::Sqlite, &[]).await else { return };
    let b = trusting(&agg, PHONE);
    b.add_init_script(SCRIPTED_BATTERY);
    let device = format!("battery-{:08x}", rand::random::<u32>());
    let token = agg.device_token(&device);
    b.goto(&page_url(&agg, &format!("/?device={device}&token={token}&min=0.2&max=0.5")));
    b.wait_for("the scripted battery", Duration::from_secs(20), |b| {
        b.read("#battery", "textContent").as_str()?.contains("90 %").then_some(())
    });
    assert_eq!(b.read("#bchart", "dataset.series"), "0", "no run, nothing drawn");

    // Baseline: the page alone, no connection, at 7200 %/h (2 points a second).
    const BASELINE: f64 = 7200.0;
    const CONNECTED: f64 = 14400.0;
    b.eval_with("window.__battery.setRate(arguments[0])", serde_json::json!([BASELINE]));
    b.click("#run-baseline");
    assert_eq!(b.read("#run-now", "dataset.mode"), "baseline");
    assert_eq!(b.read("#run", "disabled"), true, "no connection during a baseline run");
    b.wait_for("the baseline to drain 6 points", Duration::from_secs(60), |b| {
        (scripted_percent(b) <= 84.0).then_some(())
    });
    b.click("#run-end");
    assert_eq!(b.read("#state", "dataset.state"), "stopped", "the baseline never connected");

    // Connected: the page sends; the battery drains twice as fast. The screen goes "off" (the
    // page is hidden behind another tab) for a few seconds.
    b.eval_with("window.__battery.setRate(arguments[0])", serde_json::json!([CONNECTED]));
    let start_level = scripted_percent(&b);
    b.click("#run-connected");
    b.wait_for("connected", Duration::from_secs(30), |b| {
        (b.read("#state", "dataset.state") == "connected").then_some(())
    });
    let page = b.cmd("GET", "/window", serde_json::Value::Null);
    let hidden_for = Duration::from_secs(2);
    let tab = b.cmd("POST", "/window/new", serde_json::json!({ "type": "tab" }));
    b.cmd("POST", "/window", serde_json::json!({ "handle": tab["handle"] }));
    let hidden_at = std::time::Instant::now();
    std::thread::sleep(hidden_for);
    b.cmd("DELETE", "/window", serde_json::Value::Null);
    b.cmd("POST", "/window", serde_json::json!({ "handle": page }));
    let hidden_most = hidden_at.elapsed();
    // 10 points down since the page is visible again (a hidden page's timers are slowed down, so
    // it logs fewer level changes).
    let visible_level = scripted_percent(&b);
    assert!(visible_level < start_level, "the level fell while the page was hidden");
    b.wait_for("3 bytes durable and the level 10 points down", Duration::from_secs(60), |b| {
        (b.number("#durable")? >= 3 && scripted_percent(b) <= visible_level - 10.0).then_some(())
    });
    b.click("#run-end");
    b.wait_for("stopped with the run", Duration::from_secs(30), |b| {
        (b.read("#state", "dataset.state") == "stopped").then_some(())
    });
    // The battery stops draining: no more level rows while the test reads the page.
    b.eval_with("window.__battery.setRate(arguments[0])", serde_json::json!([0]));

    // Each run's drain is the scripted rate (within 1 %), its screen-off time what the test did.
    let runs = runs_table(&b);
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (connected, baseline) = (&runs[0], &runs[1]);
    assert_eq!((baseline.0.as_str(), connected.0.as_str()), ("baseline", "connected"));
    for (run, rate) in [(baseline, BASELINE), (connected, CONNECTED)] {
        let drain = run.1.unwrap_or_else(|| panic!("no drain for {run:?}"));
        assert!((drain - rate).abs() <= rate * 0.01, "{} drain {drain} %/h, scripted {rate}", run.0);
    }
    assert_eq!(baseline.2, 0, "the baseline's page stayed visible");
    let hidden = Duration::from_millis(connected.2);
    assert!(
        hidden >= hidden_for - Duration::from_millis(500) && hidden <= hidden_most + Duration::from_secs(1),
        "screen off {hidden:?}, hidden by the test for {hidden_for:?} to {hidden_most:?}"
    );
    assert_eq!(baseline.3, "no connection");
    assert_eq!(connected.3, "pause 0.2–0.5 s", "the pause setting of the run");

    // The chart: both runs drawn, in pixels.
    assert_eq!(b.read("#bchart", "dataset.series"), "2");
    let inked = b.eval(
        "const c = document.getElementById('bchart'); \
         const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
         let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n",
    );
    assert!(inked.as_u64().unwrap() > 1000, "the chart has lines: {inked} pixels");
    b.eval("document.getElementById('h-bat').scrollIntoView()");
    let shot = b.screenshot("battery-390x844.png");
    assert_eq!(png_size(&shot), (390, 844));

    // The CSV holds every row of the log, both runs' rows marked with their run and mode (a
    // minute's tick may add a row while it downloads: the log is read before and after).
    let log = |b: &Browser| b.eval("return JSON.parse(localStorage.getItem('holdfast.batterylog.v1'))");
    let before = log(&b).as_array().unwrap().len();
    b.click("#export");
    let csv = b.wait_for("the CSV download", Duration::from_secs(20), |b| {
        let file = std::fs::read_dir(b.downloads.path())
            .ok()?
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".csv"))?;
        std::fs::read_to_string(file.path()).ok()
    });
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    assert!(header.ends_with(",event,run,mode"), "{header}");
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let logged = log(&b);
    let logged = logged.as_array().unwrap();
    assert!(
        (before..=logged.len()).contains(&rows.len()),
        "every row of the log is in the CSV: {} rows, the log had {before} then {}",
        rows.len(),
        logged.len()
    );
    assert!(rows.iter().all(|r| r.len() == 12), "12 cells a row");
    for (i, (row, kept)) in rows.iter().zip(logged).enumerate() {
        assert_eq!(row[0], kept[0].as_str().unwrap(), "row {i}: same time");
        assert_eq!(row[9], kept[9].as_str().unwrap(), "row {i}: same event");
    }
    let of_run = |id: &str, mode: &str| rows.iter().filter(|r| r[10] == id && r[11] == mode).count();
    // At least its start, two level changes and its end: a busy machine's page may see two points
    // fall between two of its readings (one row), so the count of level rows is not fixed.
    assert!(of_run("1", "baseline") >= 4, "the baseline's rows: {}", of_run("1", "baseline"));
    assert!(of_run("2", "connected") >= 4, "the connected run's rows: {}", of_run("2", "connected"));
    let events: Vec<&str> = rows.iter().map(|r| r[9]).collect();
    assert!(events.contains(&"run start") && events.contains(&"run end") && events.contains(&"hidden"));
}
