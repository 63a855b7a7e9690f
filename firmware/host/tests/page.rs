//! The phone page served by the gateway itself (gateway_core::page): the aggregator's page,
//! compressed at build time, from the host build and from the firmware image in QEMU; loaded in
//! Chromium, it connects to the gateway it came from and shows bytes durable that Postgres holds.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::browser::{self, Browser, Trust, Viewport};
use support::qemu::{Qemu, ROOT};
use support::{Aggregator, Gateway, Kind};

/// One browser at a time: Chromium, QEMU, an aggregator and Postgres are a lot for two cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const PHONE: Viewport = Viewport::Phone { width: 390, height: 844 };

/// `GET path` with these extra header lines; the answer's head and body (the gateway closes).
fn get(addr: SocketAddr, path: &str, headers: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("the gateway answers and closes");
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head") + 4;
    let body = answer.split_off(end);
    (String::from_utf8(answer).unwrap(), body)
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_serves_the_aggregators_phone_page_compressed() {
    let agg = Aggregator::start(Kind::Sqlite, &[]).await.unwrap();
    let gw = Gateway::start(&agg, "page-files", &[]);
    gw.wait_links_up(2);
    for (path, file, content_type) in [
        ("/", "app.html", "text/html"),
        ("/app.js", "app.js", "text/javascript"),
        ("/style.css", "style.css", "text/css"),
    ] {
        let (head, body) = get(gw.listen, path, "Accept-Encoding: gzip, deflate, br\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {head}");
        assert!(header(&head, "content-type").unwrap().starts_with(content_type), "{path}: {head}");
        assert_eq!(header(&head, "content-encoding"), Some("gzip"));
        assert_eq!(header(&head, "content-length"), Some(body.len().to_string().as_str()));
        assert!(header(&head, "content-security-policy").unwrap().contains("script-src 'self'"));
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain).unwrap();
        // Byte for byte the file the aggregator serves at the same path (it embeds these files).
        let original = std::fs::read(format!("{ROOT}/aggregator/web/{file}")).unwrap();
        assert!(plain == original, "{path}: the gateway's copy differs from aggregator/web/{file}");
        assert!(
            body.len() * 2 < original.len(),
            "{path}: {} B compressed to {} B",
            original.len(),
            body.len()
        );
    }
    // A client that takes no gzip, and a path that is not the page's: clear refusals.
    let (head, body) = get(gw.listen, "/", "Accept-Encoding: identity\r\n");
    assert!(head.starts_with("HTTP/1.1 406 "), "{head}");
    assert_eq!(body, b"the page is served gzip-compressed only\n");
    let (head, _) = get(gw.listen, "/dashboard", "");
    assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
}

/// Loads the page from `page` (the gateway's http:// address) in Chromium, runs it as a person
/// would, stops it, and checks that what it showed durable is exactly what Postgres holds.
async fn the_page_counts_bytes_durable(agg: &Aggregator, page: &str, device: &str) {
    let b = Browser::start_trusting(PHONE, Trust::Nothing, &["127.0.0.1"]);
    b.goto(&format!("{page}/?device={device}&token={}&min=0.1&max=0.3", agg.device_token(device)));
    assert_eq!(b.eval("return document.title"), "holdfast phone");
    // How long the page took (for docs/benchmarks.md; never asserted): the load and each file.
    let timing = b.eval(
        "return performance.getEntries().filter(e => e.duration !== undefined && e.name.startsWith('http'))\
         .map(e => e.name.replace(/^.*\\//, '/') + ' ' + Math.round(e.duration) + ' ms ' + e.transferSize + ' B').join(', ')",
    );
    println!("page from {page}: {}", timing.as_str().unwrap_or_default());
    // The page connects to the gateway it came from.
    let server = b.read("#server", "placeholder");
    assert_eq!(server, format!("{}/ws", page.replace("http://", "ws://")));
    b.click("#run");
    b.wait_for("connected", Duration::from_secs(60), |b| {
        (b.read("#state", "dataset.state") == "connected").then_some(())
    });
    let durable =
        b.wait_for("5 bytes durable", Duration::from_secs(90), |b| b.number("#durable").filter(|&n| n >= 5));
    assert!(b.number("#sent").unwrap() >= durable);
    b.click("#run");
    b.wait_for("stopped", Duration::from_secs(60), |b| {
        (b.read("#state", "dataset.state") == "stopped").then_some(())
    });
    let sent = b.number("#sent").unwrap();
    assert_eq!(b.number("#durable"), Some(sent), "everything sent was confirmed durable");
    let totals = agg.store().await.device_totals(device).await.unwrap();
    assert_eq!(totals, vec![(device.to_owned(), sent)], "Postgres holds exactly what the page sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_from_the_host_gateway_counts_bytes_durable_in_chromium() {
    if !browser::available() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let Some(agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let gw = Gateway::start(&agg, "page-host", &[]);
    gw.wait_links_up(2);
    let device = format!("gw-page-{:08x}", rand::random::<u32>());
    the_page_counts_bytes_durable(&agg, &format!("http://{}", gw.listen), &device).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_from_the_qemu_board_counts_bytes_durable_in_chromium() {
    if !browser::available() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let Some(agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let qemu = Qemu::boot(&agg, "page-qemu", None);
    let device = format!("qemu-page-{:08x}", rand::random::<u32>());
    the_page_counts_bytes_durable(&agg, &format!("http://127.0.0.1:{}", qemu.port), &device).await;
    drop(qemu);
}
