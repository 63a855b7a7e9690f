//! The host gateway (the firmware's core on the kernel's TCP) between real phones and a real
//! aggregator on Postgres.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{python_phones, wait_totals, Aggregator, Gateway, Kind};
use testkit::phones::wait_durable;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn python_phones_through_the_gateway_reach_postgres_exactly() {
    let Some(agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let gw = Gateway::start(&agg, "site-python", &[]);
    gw.wait_links_up(2);
    // 40 phones, 20 to 59 bytes each: binary, text and fragmented messages; each waits until the
    // gateway tells it all of its bytes are durable.
    let sent = python_phones(&agg, &gw.base_url(), "py", 40, 20);
    assert_eq!(sent.len(), 40);
    let persisted = wait_totals(&agg, "py-", &sent).await;
    assert_eq!(persisted, sent, "what Postgres holds is exactly what the phones sent");
}

type Phone = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A phone for `device` with its device token, as the operator issued it.
async fn connect(agg: &Aggregator, gw: &Gateway, device: &str) -> Phone {
    let url = format!("{}/ws?device={device}&token={}", gw.base_url(), agg.device_token(device));
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws
}

/// [`connect`] from the local address `from` (any 127.x.y.z), or why the gateway would not have it.
async fn connect_from(
    from: &str,
    agg: &Aggregator,
    gw: &Gateway,
    device: &str,
) -> Result<Phone, tokio_tungstenite::tungstenite::Error> {
    let url = format!("{}/ws?device={device}&token={}", gw.base_url(), agg.device_token(device));
    let tcp = testkit::tcp_from(Some(from.parse().unwrap()), gw.listen).await?;
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    tokio_tungstenite::client_async(url, stream).await.map(|(ws, _)| ws)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aggregator_restart_disconnects_no_phone_and_loses_nothing() {
    let Some(mut agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let gw = Gateway::start(&agg, "site-restart", &[]);
    gw.wait_links_up(2);
    let mut phones = Vec::new();
    for i in 0..20 {
        phones.push(connect(&agg, &gw, &format!("rs-{i}")).await);
    }
    let mut sent = BTreeMap::new();
    for (i, ws) in phones.iter_mut().enumerate() {
        for _ in 0..5 {
            ws.send(Message::binary(vec![1u8])).await.unwrap();
        }
        sent.insert(format!("rs-{i}"), 5u64);
    }
    for ws in phones.iter_mut() {
        assert_eq!(wait_durable(ws, 5).await, 5);
    }

    // The aggregator dies; phones keep sending into the gateway while it is away.
    agg.kill();
    let down_at = gw.log_len();
    for (i, ws) in phones.iter_mut().enumerate() {
        for _ in 0..(i + 1) {
            ws.send(Message::text("x")).await.unwrap();
        }
        *sent.get_mut(&format!("rs-{i}")).unwrap() += i as u64 + 1;
    }
    gw.wait_for("down", down_at, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(1)).await;
    agg.spawn(); // the same port and database
    gw.wait_for("TLS 1.3 and WebSocket up", down_at, Duration::from_secs(60));

    // Every phone is still connected: it is told all of its bytes are durable on the same
    // connection, and can go on sending.
    for (i, ws) in phones.iter_mut().enumerate() {
        let want = sent[&format!("rs-{i}")];
        assert_eq!(wait_durable(ws, want).await, want);
        ws.send(Message::binary(vec![2u8])).await.unwrap();
        *sent.get_mut(&format!("rs-{i}")).unwrap() += 1;
    }
    for (i, ws) in phones.iter_mut().enumerate() {
        let want = sent[&format!("rs-{i}")];
        assert_eq!(wait_durable(ws, want).await, want);
    }
    let persisted = wait_totals(&agg, "rs-", &sent).await;
    assert_eq!(persisted, sent);
}

/// Sends raw bytes and returns everything the gateway answers until it closes, and how long
/// after the connect it closed; fails the test if it has not closed within `bound`.
async fn raw_within(gw: &Gateway, request: &[u8], bound: Duration) -> (Vec<u8>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    // A timeout here must fail: every exchange below ends with the gateway closing, and one it
    // kept open (a slow handshake never dropped) would otherwise look like an empty answer.
    let read = tokio::time::timeout(bound, s.read_to_end(&mut out)).await;
    let closed_after = started.elapsed();
    let Ok(result) = read else {
        panic!(
            "the gateway did not close the connection within {bound:?}; it answered {:?}",
            String::from_utf8_lossy(&out)
        )
    };
    // A reset is a close too (the gateway aborts some connections); what came before it is kept.
    drop(result);
    (out, closed_after)
}

/// [`raw_within`] with a bound far above anything the gateway should take to answer and close.
async fn raw(gw: &Gateway, request: &[u8]) -> Vec<u8> {
    raw_within(gw, request, Duration::from_secs(10)).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_answer_and_costs_no_other_phone() {
    let agg = Aggregator::start(Kind::Sqlite, &[]).await.unwrap();
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(1000);
    let handshake_timeout_ms = HANDSHAKE_TIMEOUT.as_millis().to_string();
    let gw = Gateway::start(
        &agg,
        "site-bad",
        &["--capacity", "3", "--handshake-timeout-ms", &handshake_timeout_ms],
    );
    gw.wait_links_up(2);
    let mut healthy = connect(&agg, &gw, "healthy").await;
    healthy.send(Message::binary(vec![1u8; 3])).await.unwrap();
    assert_eq!(wait_durable(&mut healthy, 3).await, 3);

    // Capacity 3: the healthy phone and two more fit, the fourth gets 503.
    let a = connect(&agg, &gw, "a").await;
    let b = connect(&agg, &gw, "b").await;
    let c = format!("{}/ws?device=c&token={}", gw.base_url(), agg.device_token("c"));
    let err = tokio_tungstenite::connect_async(c).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    drop((a, b));
    // Their sessions are freed once the aggregator acknowledges the closes (a flush or two).
    tokio::time::sleep(Duration::from_secs(2)).await;

    let status = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).lines().next().unwrap_or("").to_owned();
    assert_eq!(status(raw(&gw, b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n").await), "HTTP/1.1 404 Not Found");
    assert_eq!(
        status(raw(&gw, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await),
        "HTTP/1.1 426 Upgrade Required"
    );
    let bad_key = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: nope\r\n\r\n";
    assert_eq!(status(raw(&gw, bad_key).await), "HTTP/1.1 400 Bad Request");
    assert_eq!(
        status(raw(&gw, b"GET /ws HTTP/1.0\r\n\r\n").await),
        "HTTP/1.1 505 HTTP Version Not Supported"
    );
    assert_eq!(status(raw(&gw, &[b'x'; 9000]).await), "HTTP/1.1 431 Request Header Fields Too Large");
    // A slow handshake is dropped after --handshake-timeout-ms, silently: within the timeout
    // plus a margin for a loaded machine, and not before the timeout (the gateway's deadline
    // starts at its accept, after this connect began; half of it leaves room for a coarse timer).
    let (answer, closed_after) =
        raw_within(&gw, b"GET /ws HTTP/1.1\r\n", HANDSHAKE_TIMEOUT + Duration::from_secs(5)).await;
    assert!(answer.is_empty(), "a slow handshake gets no answer: {:?}", String::from_utf8_lossy(&answer));
    assert!(
        closed_after >= HANDSHAKE_TIMEOUT / 2,
        "the slow handshake was dropped after {closed_after:?}, before --handshake-timeout-ms"
    );

    // Oversized and unmasked frames close that phone with 1009 and 1002.
    let mut big = connect(&agg, &gw, "big").await;
    big.send(Message::binary(vec![0u8; 5000])).await.unwrap();
    let close = big.next().await;
    assert!(matches!(&close, Some(Ok(Message::Close(Some(f)))) if f.code == CloseCode::Size), "{close:?}");
    let mut upgrade = format!("GET /ws?device=unmasked&token={} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", agg.device_token("unmasked")).into_bytes();
    upgrade.extend_from_slice(b"\x82\x01\x07");
    let answer = raw(&gw, &upgrade).await;
    assert!(answer.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&answer));
    assert!(answer.ends_with(&[0x88, 0x02, 0x03, 0xea]), "close 1002: {answer:x?}");

    // None of it cost the healthy phone anything.
    healthy.send(Message::binary(vec![1u8; 2])).await.unwrap();
    assert_eq!(wait_durable(&mut healthy, 5).await, 5);
    let persisted = wait_totals(&agg, "healthy", &BTreeMap::from([("healthy".to_owned(), 5)])).await;
    assert_eq!(persisted["healthy"], 5);
}

/// One address holds at most --max-connections-per-address phone connections (issue #12, M7);
/// beyond it a connection is closed at once, another address is not affected, and a place that
/// frees up can be taken again.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_take_every_place_at_the_gateway() {
    let agg = Aggregator::start(Kind::Sqlite, &[]).await.unwrap();
    let args = ["--max-connections-per-address", "2", "--address-limit-exempt"];
    let gw = Gateway::start(&agg, "site-addresses", &args);
    gw.wait_links_up(2);
    let first = connect_from("127.0.0.41", &agg, &gw, "addr-1").await.expect("within the bound");
    let _second = connect_from("127.0.0.41", &agg, &gw, "addr-2").await.expect("within the bound");
    let third = connect_from("127.0.0.41", &agg, &gw, "addr-3").await;
    assert!(third.is_err(), "a third connection from one address is refused");
    let mut other = connect_from("127.0.0.42", &agg, &gw, "addr-other").await.expect("another address");
    other.send(Message::binary(vec![1u8; 2])).await.unwrap();
    assert_eq!(wait_durable(&mut other, 2).await, 2);
    drop(first);
    let mut back = None;
    for _ in 0..50 {
        if let Ok(ws) = connect_from("127.0.0.41", &agg, &gw, "addr-3").await {
            back = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut back = back.expect("a closed connection's place is free again");
    back.send(Message::binary(vec![1u8; 3])).await.unwrap();
    assert_eq!(wait_durable(&mut back, 3).await, 3);
    let want = BTreeMap::from([("addr-other".to_owned(), 2)]);
    assert_eq!(wait_totals(&agg, "addr-other", &want).await, want);
}

/// A phone that only pings does not keep its place at the gateway (issue #12, M7): idle means no
/// byte counted. One that sends bytes as often stays, and its bytes reach the database exactly.
#[tokio::test(flavor = "multi_thread")]
async fn a_phone_that_only_pings_is_closed_as_idle_at_the_gateway() {
    let agg = Aggregator::start(Kind::Sqlite, &[]).await.unwrap();
    let gw = Gateway::start(&agg, "site-idle", &["--phone-idle-timeout-ms", "1500"]);
    gw.wait_links_up(2);
    // The pinger's idle time runs from its upgrade, before the talker connects: counted from
    // before the pinger connects (timed from after the talker's handshake, a busy machine made
    // the close look early).
    let connecting = std::time::Instant::now();
    let mut pinger = connect(&agg, &gw, "pinger").await;
    let mut talker = connect(&agg, &gw, "talker").await;
    let connected = connecting.elapsed();
    let every = Duration::from_millis(250);
    let pinged =
        testkit::phones::ping_and_talk(&mut pinger, &mut talker, every, Duration::from_secs(6)).await;
    assert!(pinged.closed, "the pinging phone was closed within 6 s (idle timeout 1.5 s): {pinged:?}");
    assert_eq!(pinged.close.map(|f| f.code), Some(CloseCode::Normal));
    let idle = connected + pinged.after;
    assert!(idle >= Duration::from_millis(1400), "not before its idle timeout: {idle:?}");
    let sent = pinged.talked;
    assert_eq!(wait_durable(&mut talker, sent).await, sent);
    let persisted = wait_totals(&agg, "talker", &BTreeMap::from([("talker".to_owned(), sent)])).await;
    assert_eq!(persisted["talker"], sent);
}

/// A phone over wss to `gw` that trusts `ca`, for `device` with its device token.
async fn connect_wss(agg: &Aggregator, gw: &Gateway, ca: &support::pki::TestCa, device: &str) -> Phone {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let url = format!("wss://{}/ws?device={device}&token={}", gw.listen, agg.device_token(device));
    let connector = tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(config));
    let (ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector)).await.unwrap();
    ws
}

/// TLS phones that break TLS or stall in its handshake (#12): the gateway's TLS server lets each
/// go, never hangs on one nor panics: at once, with an alert or a bare close, for bytes that are
/// not TLS; at --handshake-timeout-ms, silently, for a handshake begun and not finished. A phone
/// that does TLS right is served all along, and one connects after them.
#[tokio::test(flavor = "multi_thread")]
async fn tls_phones_that_break_tls_or_stall_are_let_go_and_cost_no_other_phone() {
    let agg = Aggregator::start(Kind::Sqlite, &[]).await.unwrap();
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(1000);
    let ca = support::pki::TestCa::new("gateway-phones-broken");
    let served = ca.server(&["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("gw.pem"), dir.path().join("gw.key"));
    std::fs::write(&cert, &served.chain_pem).unwrap();
    std::fs::write(&key, &served.key_pem).unwrap();
    let timeout_ms = HANDSHAKE_TIMEOUT.as_millis().to_string();
    let args = [
        "--phone-tls-cert",
        cert.to_str().unwrap(),
        "--phone-tls-key",
        key.to_str().unwrap(),
        "--handshake-timeout-ms",
        &timeout_ms,
    ];
    let gw = Gateway::start(&agg, "site-wss-broken", &args);
    gw.wait_links_up(2);
    let mut healthy = connect_wss(&agg, &gw, &ca, "wss-healthy").await;
    healthy.send(Message::binary(vec![1u8; 3])).await.unwrap();
    assert_eq!(wait_durable(&mut healthy, 3).await, 3);

    let refused_at_once = [
        ("plain HTTP", b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a record longer than TLS allows", vec![0x16, 0x03, 0x01, 0xff, 0xff, 0x01]),
        ("an alert before any handshake", vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]),
        ("a handshake record that is not a ClientHello", vec![0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0]),
    ];
    for (case, bytes) in refused_at_once {
        let (answer, after) = raw_within(&gw, &bytes, Duration::from_secs(10)).await;
        // 21: a TLS alert record.
        assert!(answer.is_empty() || answer[0] == 21, "{case}: answered {answer:x?}");
        assert!(after < HANDSHAKE_TIMEOUT, "{case}: let go after {after:?}, not at once");
    }
    let stalled = [
        ("a ClientHello begun", vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01]),
        ("a record header only", vec![0x16, 0x03, 0x01]),
    ];
    for (case, bytes) in stalled {
        let (answer, after) = raw_within(&gw, &bytes, HANDSHAKE_TIMEOUT + Duration::from_secs(5)).await;
        assert!(answer.is_empty(), "{case}: answered {answer:x?}");
        assert!(after >= HANDSHAKE_TIMEOUT / 2, "{case}: let go after {after:?}, before the timeout");
    }

    healthy.send(Message::binary(vec![1u8; 2])).await.unwrap();
    assert_eq!(wait_durable(&mut healthy, 5).await, 5);
    let mut late = connect_wss(&agg, &gw, &ca, "wss-late").await;
    late.send(Message::binary(vec![1u8; 4])).await.unwrap();
    assert_eq!(wait_durable(&mut late, 4).await, 4);
}

/// The pinned CA must have signed the aggregator's certificate itself, and on the host build the
/// certificate must be within its validity period (#12, M5). A certificate
/// for the aggregator's name signed by another certificate the CA issued to someone (not a CA)
/// passes a verifier that checks only the signatures along the chain; the gateway refuses it.
/// The control: the same CA signing the certificate directly brings the links up.
#[tokio::test(flavor = "multi_thread")]
async fn only_a_certificate_the_pinned_ca_signed_itself_is_trusted() {
    let ca = support::pki::TestCa::new("m5");
    for (case, served) in [
        ("signed by the CA", ca.server(&["localhost"])),
        ("signed by a leaf under the CA", ca.server_signed_by_a_leaf(&["localhost"])),
        // The host build checks validity periods against its clock (#12 M5; a board has none).
        ("signed by the CA, expired", ca.server_expired(&["localhost"])),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
        std::fs::write(&cert, &served.chain_pem).unwrap();
        std::fs::write(&key, &served.key_pem).unwrap();
        let args = ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
        let agg = Aggregator::start(Kind::Sqlite, &args).await.unwrap();
        std::fs::write(agg.ca(), ca.pem()).unwrap(); // what the gateway pins
        let gw = Gateway::start(&agg, "site-m5", &["--links", "1"]);
        if case == "signed by the CA" {
            gw.wait_links_up(1);
        } else {
            gw.wait_for("trunk link 0 down", 0, Duration::from_secs(30));
            std::thread::sleep(Duration::from_secs(2));
            let up = gw.logged("TLS 1.3 and WebSocket up");
            assert!(!up, "{case}: the link came up");
        }
    }
}

/// The trunk protocol promises gateways TLS records of at most 4 KiB of plaintext, which is all a
/// board's link buffers hold (issue #14). An aggregator that breaks it (a test setting) gets its
/// link dropped with a reason that says so, not a hang or a vague I/O error. Enough phones send a
/// byte at once that their acknowledgements leave in one message of several KiB.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_record_larger_than_the_protocol_allows_drops_the_link_with_a_clear_reason() {
    // Flushes 3 s apart: each acknowledges every session that sent meanwhile in one message, far
    // above 4 KiB, however slowly a busy machine connects the phones (at 200 ms, only the busiest
    // flushes of the fastest runs went over).
    let args = ["--tls-record-plaintext", "16384", "--flush-interval-ms", "3000"];
    let Some(agg) = Aggregator::start(Kind::Sqlite, &args).await else {
        return;
    };
    let gw = Gateway::start(&agg, "site-records", &["--links", "1"]);
    gw.wait_links_up(1);
    let mut phones = std::process::Command::new(support::process::workspace_binary("mobile-sim"))
        .args(["phones", "--target", &format!("{}/ws", gw.base_url()), "--phones", "3000"])
        .arg("--device-key")
        .arg(agg.device_key_file())
        .args(["--rate", "3000", "-C", "256", "--min-interval", "50ms", "--max-interval", "100ms"])
        .args(["--duration", "30s", "--device-prefix", "records-", "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mobile-sim");
    let seen = std::panic::catch_unwind(|| {
        gw.wait_for("larger than the trunk protocol's 4 KiB", 0, Duration::from_secs(60))
    });
    let _ = phones.kill();
    let _ = phones.wait();
    assert!(seen.is_ok(), "the link was not dropped for the oversized record");
}

/// A phone proves which device it is (#12): without a valid token for its own device it gets 401
/// with the reason, and the bytes it sent along with its request are never counted. The same
/// gateway counts a phone with its token, and `--phone-auth off` is the only way to run without
/// the operator's key.
#[tokio::test(flavor = "multi_thread")]
async fn a_phone_needs_a_token_for_its_own_device_at_the_gateway() {
    let Some(agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let gw = Gateway::start(&agg, "site-tokens", &[]);
    gw.wait_links_up(2);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let issuer =
        device_token::SigningKey::from_hex(&std::fs::read_to_string(agg.device_key_file()).unwrap()).unwrap();
    let forged = device_token::SigningKey::generate().token(b"mine", now + 3600).unwrap();
    let expired = issuer.token(b"mine", now - 1).unwrap();
    let theirs = agg.device_token("theirs");
    for (query, status, reason) in [
        ("device=mine".to_owned(), "401 Unauthorized", "a device token is required (?token=)"),
        ("device=mine&token=12.x".to_owned(), "401 Unauthorized", "the device token is malformed"),
        (
            format!("device=mine&token={theirs}"),
            "401 Unauthorized",
            "the device token is not valid for this device",
        ),
        (
            format!("device=mine&token={forged}"),
            "401 Unauthorized",
            "the device token is not valid for this device",
        ),
        (format!("device=mine&token={expired}"), "401 Unauthorized", "the device token expired"),
        (format!("token={theirs}"), "401 Unauthorized", "a device id is required (?device=)"),
    ] {
        // The request and a 3-byte message in one write: were it let in, the bytes would count.
        let mut request = format!("GET /ws?{query} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").into_bytes();
        request.extend_from_slice(&[0x82, 0x83, 0, 0, 0, 0, 1, 2, 3]);
        let answer = String::from_utf8_lossy(&raw(&gw, &request).await).into_owned();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{query}: {answer}");
        assert!(answer.contains("WWW-Authenticate: Bearer"), "{query}: {answer}");
        assert!(answer.ends_with(&format!("\r\n\r\n{reason}\n")), "{query}: {answer}");
    }
    // The control: the same bytes with the device's own token are counted.
    let mut ok = connect(&agg, &gw, "mine-ok").await;
    ok.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(wait_durable(&mut ok, 3).await, 3);
    // Flushes ran since (the control's bytes are durable): nothing was counted for "mine".
    let store = agg.store().await;
    assert_eq!(store.device_totals("mine-ok").await.unwrap(), vec![("mine-ok".to_owned(), 3)]);
    assert_eq!(
        store.device_totals("mine").await.unwrap(),
        vec![("mine-ok".to_owned(), 3)],
        "only the control"
    );
    assert_eq!(store.device_totals("theirs").await.unwrap(), vec![]);
    drop(gw);

    // Without the key the gateway does not start, unless told phones are not checked.
    let out = std::process::Command::new(support::gateway_binary())
        .args(["--id", "site-tokens", "--secret", "00", "--ca"])
        .arg(agg.ca())
        .args(["--aggregator", &agg.addr.to_string(), "--listen", "127.0.0.1:0"])
        .env_remove("HOLDFAST_DEVICE_PUBLIC_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--device-public-key"), "{stderr}");
    let open = Gateway::start(&agg, "site-open", &["--phone-auth", "off"]);
    open.wait_links_up(2);
    let (mut anyone, _) =
        tokio_tungstenite::connect_async(format!("{}/ws?device=anyone", open.base_url())).await.unwrap();
    anyone.send(Message::binary(vec![9u8])).await.unwrap();
    assert_eq!(wait_durable(&mut anyone, 1).await, 1);
}

/// Phones over TLS 1.3 to the host gateway (`--phone-tls-cert`, #12 item 2): mobile-sim phones
/// over wss, every byte verified in Postgres; a phone that speaks plain ws gets nowhere. Prints
/// the gateway's resident memory per held TLS phone (measured, not asserted: docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread")]
async fn phones_over_wss_through_the_gateway_are_counted_exactly() {
    let Some(agg) = Aggregator::start(Kind::Postgres, &[]).await else { return };
    let ca = support::pki::TestCa::new("gateway-phones");
    let served = ca.server(&["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, ca_pem) =
        (dir.path().join("gw.pem"), dir.path().join("gw.key"), dir.path().join("ca.pem"));
    std::fs::write(&cert, &served.chain_pem).unwrap();
    std::fs::write(&key, &served.key_pem).unwrap();
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let tls = ["--phone-tls-cert", cert.to_str().unwrap(), "--phone-tls-key", key.to_str().unwrap()];
    let gw = Gateway::start(&agg, "site-wss", &tls);
    gw.wait_links_up(2);

    // Plain ws to the TLS port: no upgrade, nothing counted.
    let plain = format!("ws://{}/ws?device=wss-plain&token={}", gw.listen, agg.device_token("wss-plain"));
    assert!(tokio_tungstenite::connect_async(plain).await.is_err(), "a plain ws upgrade must fail");

    // Few phones: a TLS handshake costs the (debug-built) gateway and mobile-sim milliseconds of
    // CPU each; the release figures are in docs/benchmarks.md.
    let phones: u64 = 100;
    let rss_before = gw.rss_kib();
    let prefix = format!("wss-{}-", std::process::id());
    let sim = std::process::Command::new(support::process::workspace_binary("mobile-sim"))
        .args(["phones", "--target", &format!("wss://{}/ws", gw.listen), "--ca"])
        .arg(&ca_pem)
        .arg("--device-key")
        .arg(agg.device_key_file())
        .args(["--phones", &phones.to_string(), "--rate", "100", "-C", "16", "--connect-timeout", "30s"])
        .args(["--min-interval", "2s", "--max-interval", "6s", "--duration", "25s", "--drain-timeout", "30s"])
        .args(["--device-prefix", &prefix, "--quiet", "--json", "--verify", "--database-url"])
        .arg(agg.database_url.as_deref().expect("a Postgres aggregator"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mobile-sim");
    // While they are held: the gateway's memory per phone.
    let held = gw.wait_for(&format!("live={phones} "), 0, Duration::from_secs(60));
    let rss_held = gw.rss_kib();
    println!(
        "gateway RSS {rss_before} KiB before, {rss_held} KiB with {phones} TLS phones held: {} B per phone (log line {held})",
        (rss_held.saturating_sub(rss_before)) * 1024 / phones
    );
    let out = sim.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("mobile-sim printed no report ({e}): {stderr}"));
    assert!(out.status.success(), "mobile-sim's verdict: {}\n{stderr}", report["failures"]);
    let (c, b, v) = (&report["connections"], &report["bytes"], &report["verification"]);
    assert_eq!(c["established"].as_u64(), Some(phones), "every phone connected over wss");
    assert!(b["sent"].as_u64().unwrap_or(0) >= phones, "every phone sent at least a byte");
    assert_eq!(b["durable"], b["sent"], "every byte told durable");
    assert_eq!(v["devices_persisted"].as_u64(), Some(phones), "every device has its row in Postgres");
    assert_eq!((v["lost_bytes"].as_u64(), v["double_counted_bytes"].as_u64()), (Some(0), Some(0)));
    assert!(agg.store().await.device_totals("wss-plain").await.unwrap().is_empty());
}
