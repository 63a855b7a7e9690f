//! A real browser for the page tests: Debian's headless Chromium driven over the W3C WebDriver
//! protocol through `chromedriver` (both from `scripts/install-deps.sh`).
//!
//! The client is a few blocking HTTP/1.1 requests to chromedriver on loopback (JSON in, JSON out),
//! which is all WebDriver is; it blocks the test's thread, which is fine: the aggregator, the
//! gateways and mobile-sim run as other processes. Used by the aggregator's page tests and by the
//! gateway's (the same page served from a gateway, on the host and on the QEMU board).
//!
//! Trust: the browser trusts the aggregator's self-made certificate and nothing else new, through
//! `--ignore-certificate-errors-spki-list` with the SHA-256 of that certificate's public key, so
//! certificate errors are ignored for that one key only (not `--ignore-certificate-errors`); or
//! ([`Trust::CaIn`]) a CA installed in the NSS database of the browser's home, as a person who
//! installed the CA has it.
//! Network: every host name but `localhost` fails to resolve (`--host-resolver-rules`), and
//! Chromium's background services are off, so the browser talks to loopback only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::free_port;
use serde_json::{json, Value};

/// The WebDriver key codes used by tests.
pub const CONTROL: char = '\u{E009}';
pub const TAB: char = '\u{E004}';
/// Releases held modifier keys.
pub const RELEASE: char = '\u{E000}';

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
/// The W3C identifier of an element in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Where the screenshots go: `HOLDFAST_SCREENSHOT_DIR`, or `screenshots/` in Cargo's directory
/// for integration tests' files (`$CARGO_TARGET_DIR/tmp`, found from the test binary's place,
/// `$CARGO_TARGET_DIR/<profile>/deps/`).
pub fn screenshot_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HOLDFAST_SCREENSHOT_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    match exe.ancestors().nth(3) {
        Some(target) => target.join("tmp").join("screenshots"),
        None => std::env::temp_dir().join("holdfast-screenshots"),
    }
}

/// chromedriver and Chromium, or `None` (and the test is skipped) when they are not installed
/// outside CI. In CI their absence fails the test: the browser tests must run there.
pub fn available() -> bool {
    let driver = chromedriver_path();
    if Path::new(&driver).exists() && Path::new(&chromium_path()).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{driver} or {} is missing: scripts/install-deps.sh installs chromium and chromium-driver",
            chromium_path()
        );
    }
    eprintln!("skipping a browser test: {driver} is not installed (scripts/install-deps.sh)");
    false
}

fn chromedriver_path() -> String {
    std::env::var("HOLDFAST_CHROMEDRIVER").unwrap_or_else(|_| CHROMEDRIVER.into())
}

fn chromium_path() -> String {
    std::env::var("HOLDFAST_CHROMIUM").unwrap_or_else(|_| CHROMIUM.into())
}

/// The base64 SHA-256 of the SubjectPublicKeyInfo of the key in `key_pem` (PEM, PKCS#8): what
/// Chromium's `--ignore-certificate-errors-spki-list` takes.
pub fn spki_hash(key_pem: &Path) -> String {
    use rcgen::PublicKeyData as _;
    let pem = std::fs::read_to_string(key_pem).unwrap_or_else(|e| panic!("{}: {e}", key_pem.display()));
    let key = rcgen::KeyPair::from_pem(&pem).expect("a PEM private key");
    let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The window: a phone (mobile emulation) or a desktop.
#[derive(Debug, Clone, Copy)]
pub enum Viewport {
    /// CSS pixels, device pixel ratio 1, a phone's user agent and touch.
    Phone {
        width: u32,
        height: u32,
    },
    Desktop {
        width: u32,
        height: u32,
    },
}

/// What the browser trusts beyond its built-in roots.
#[derive(Debug, Clone, Copy)]
pub enum Trust<'a> {
    /// The certificate with this public key (base64 SHA-256 of its SPKI, see [`spki_hash`]).
    Key(&'a str),
    /// The CA certificate (PEM) at this path, installed with `certutil` into an NSS database in
    /// the browser's own home folder, where Chromium on Linux reads locally trusted CAs.
    CaIn(&'a Path),
    /// Nothing more: for pages over plain `http://` (a site gateway's phone page).
    Nothing,
}

/// One browser session; the browser and chromedriver end when it is dropped.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
    _home: tempfile::TempDir,
    pub downloads: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium that trusts the public key whose hash is
    /// `trusted_spki` (see [`spki_hash`]).
    pub fn start(viewport: Viewport, trusted_spki: &str) -> Browser {
        Browser::start_trusting(viewport, Trust::Key(trusted_spki), &[])
    }

    /// Starts chromedriver and a headless Chromium that trusts what `trust` says and reaches
    /// `hosts` (IP addresses; host names do not resolve) besides localhost.
    pub fn start_trusting(viewport: Viewport, trust: Trust<'_>, hosts: &[&str]) -> Browser {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // A home of its own: Chromium keeps its NSS database (the CAs a person installed) there,
        // so nothing of this machine's user leaks in or out.
        let home = tempfile::tempdir().unwrap();
        if let Trust::CaIn(ca) = trust {
            install_ca(home.path(), ca);
        }
        let driver = Command::new(chromedriver_path())
            .env("HOME", home.path())
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let downloads = tempfile::tempdir().unwrap();
        let mut b =
            Browser { driver, addr, session: String::new(), _profile: profile, _home: home, downloads };
        let deadline = Instant::now() + Duration::from_secs(30);
        while b.request("GET", "/status", None).map(|v| v["ready"] != json!(true)).unwrap_or(true) {
            assert!(Instant::now() < deadline, "chromedriver did not become ready on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }

        let mut args = vec![
            "--headless=new".to_owned(),
            // Tests run as root in CI, where Chromium's sandbox cannot start; the pages are ours.
            "--no-sandbox".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-gpu".into(),
            format!("--user-data-dir={}", b._profile.path().display()),
            format!(
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost{}",
                hosts.iter().map(|h| format!(" , EXCLUDE {h}")).collect::<String>()
            ),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-domain-reliability".into(),
            "--disable-client-side-phishing-detection".into(),
            "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider".into(),
            "--hide-scrollbars".into(),
            "--lang=en-US".into(),
        ];
        if let Trust::Key(spki) = trust {
            args.push(format!("--ignore-certificate-errors-spki-list={spki}"));
        }
        let mut options = json!({
            "binary": chromium_path(),
            "prefs": {
                "download.default_directory": b.downloads.path(),
                "download.prompt_for_download": false,
            },
        });
        match viewport {
            Viewport::Phone { width, height } => {
                options["mobileEmulation"] = json!({
                    "deviceMetrics": { "width": width, "height": height, "pixelRatio": 1, "touch": true, "mobile": true },
                    "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
                });
            }
            Viewport::Desktop { width, height } => args.push(format!("--window-size={width},{height}")),
        }
        options["args"] = json!(args);
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": options,
            "timeouts": { "script": 30_000, "pageLoad": 60_000 },
        }}});
        let session =
            b.request("POST", "/session", Some(caps)).unwrap_or_else(|e| panic!("new session: {e}"));
        b.session = session["sessionId"].as_str().expect("a session id").to_owned();
        if let Viewport::Desktop { width, height } = viewport {
            // --window-size sets the outer window; make the page itself this size.
            let inner: Value = b.eval(
                "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]",
            );
            let (dw, dh) = (inner[0].as_u64().unwrap_or(0), inner[1].as_u64().unwrap_or(0));
            b.cmd(
                "POST",
                "/window/rect",
                json!({"width": u64::from(width) + dw, "height": u64::from(height) + dh}),
            );
        }
        b
    }

    /// One WebDriver request; the `value` of the answer, or the error's text.
    fn request(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut tcp =
            TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        tcp.write_all(head.as_bytes())
            .and_then(|()| tcp.write_all(body.as_bytes()))
            .map_err(|e| e.to_string())?;
        // chromedriver keeps the connection open whatever the request says: read by length.
        let mut reader = BufReader::new(tcp);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).map_err(|e| e.to_string())?;
        let status: u16 =
            status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            let line = line.trim_end().to_ascii_lowercase();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.strip_prefix("content-length:") {
                length = v.trim().parse().map_err(|_| "bad content-length")?;
            }
            chunked |= line.starts_with("transfer-encoding:") && line.contains("chunked");
        }
        let body = if chunked {
            read_chunked(&mut reader)?
        } else {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).map_err(|e| e.to_string())?;
            body
        };
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))?;
        if status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!("{status}: {} {}", v["value"]["error"], v["value"]["message"]))
        }
    }

    /// A command of this session; panics on an error.
    pub fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let body = (method == "POST").then_some(body);
        self.request(method, &path, body).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A Chrome DevTools Protocol command (chromedriver's `goog/cdp/execute`); its result.
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd("POST", "/goog/cdp/execute", json!({ "cmd": cmd, "params": params }))
    }

    /// Runs `source` in every document this browser loads from now on, before the page's own
    /// scripts (CDP `Page.addScriptToEvaluateOnNewDocument`): how tests script what the browser
    /// would report (a battery), with nothing test-only in the page.
    pub fn add_init_script(&self, source: &str) {
        self.cdp("Page.addScriptToEvaluateOnNewDocument", json!({ "source": source }));
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    /// Navigates; the error's text when the browser refuses (an untrusted certificate).
    pub fn try_goto(&self, url: &str) -> Result<(), String> {
        let path = format!("/session/{}/url", self.session);
        self.request("POST", &path, Some(json!({ "url": url }))).map(|_| ())
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub fn eval_with(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", json!({ "script": script, "args": args }))
    }

    pub fn eval(&self, script: &str) -> Value {
        self.eval_with(script, json!([]))
    }

    fn element(&self, css: &str) -> String {
        let path = format!("/session/{}/element", self.session);
        let found = self.request("POST", &path, Some(json!({ "using": "css selector", "value": css })));
        match found.as_ref().map(|found| found[ELEMENT].as_str()) {
            Ok(Some(id)) => id.to_owned(),
            // Which page was there instead (an error page, an interstitial, a page half loaded)
            // is what a failure here needs to be understood: a flake of this kind was seen once.
            _ => panic!("no element {css}: {found:?}; the page: {}", self.what_page()),
        }
    }

    /// The page's address, title, ready state and the start of its text, for failure messages.
    fn what_page(&self) -> Value {
        self.eval(
            "return { url: document.location.href, title: document.title,              ready: document.readyState,              text: document.body ? document.body.innerText.slice(0, 300) : null };",
        )
    }

    pub fn click(&self, css: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/click"), json!({}));
    }

    /// Types `keys` into the element (see [`CONTROL`], [`TAB`], [`RELEASE`]).
    pub fn type_keys(&self, css: &str, keys: &str) {
        let id = self.element(css);
        self.cmd("POST", &format!("/element/{id}/value"), json!({ "text": keys }));
    }

    /// Replaces an input's text as a person would: select all, type, leave the field (which
    /// fires `change`).
    pub fn fill(&self, css: &str, text: &str) {
        self.type_keys(css, &format!("{CONTROL}a{RELEASE}{text}{TAB}"));
    }

    /// `document.querySelector(css)[property]` (e.g. `textContent`, `dataset.value`, `hidden`).
    pub fn read(&self, css: &str, property: &str) -> Value {
        self.eval_with(
            "const e = document.querySelector(arguments[0]); if (!e) return null; \
             return arguments[1].split('.').reduce((o, k) => (o == null ? o : o[k]), e);",
            json!([css, property]),
        )
    }

    /// The number in an element's `data-value`.
    pub fn number(&self, css: &str) -> Option<u64> {
        self.read(css, "dataset.value").as_str().and_then(|s| s.parse().ok())
    }

    /// Polls `check` until it returns `Some`, failing the test with `what` after `limit`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if Instant::now() >= deadline {
                let body = self.read("body", "innerText");
                panic!("waited {limit:?} for {what}; the page says:\n{}", body.as_str().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves a PNG of the viewport to `screenshot_dir()/name`; returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd("GET", "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 PNG"))
            .expect("valid base64");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, &png).unwrap();
        println!("screenshot: {}", path.display());
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ends Chromium; chromedriver is then stopped (it would leave a browser behind if
            // killed first).
            let _ = self.request("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Installs the CA certificate `ca` (PEM) as trusted for websites into a new NSS database in
/// `home` (`$HOME/.pki/nssdb`), with certutil from libnss3-tools.
fn install_ca(home: &Path, ca: &Path) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| {
        let out = Command::new("certutil")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("certutil (scripts/install-deps.sh installs libnss3-tools): {e}"));
        assert!(out.status.success(), "certutil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    certutil(&["-N", "-d", &db, "--empty-password"]);
    // "C,,": a CA trusted to issue server certificates (and nothing else).
    certutil(&["-A", "-d", &db, "-n", "holdfast test CA", "-t", "C,,", "-i", &ca.display().to_string()]);
}

fn read_chunked(reader: &mut impl BufRead) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(line.trim(), 16).map_err(|_| "bad chunk size")?;
        let mut chunk = vec![0u8; size + 2]; // and its CRLF
        reader.read_exact(&mut chunk).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&chunk[..size]);
    }
}

/// The PNG's width and height, from its header.
pub fn png_size(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[1..4], b"PNG", "{} is a PNG", path.display());
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}
