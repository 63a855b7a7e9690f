//! End-to-end proof: every device's bytes sent and bytes confirmed durable against the totals
//! that were persisted, read from the database (`device_totals`) or from the aggregator's
//! `/api/devices` endpoint.
//!
//! Per device, with `sent >= confirmed` as the simulator counts them:
//! - lost: confirmed durable but not persisted, `max(0, confirmed - persisted)`;
//! - double-counted: persisted more than was ever sent, `max(0, persisted - sent)`;
//! - unconfirmed: sent but never confirmed, `sent - confirmed` (the byte may or may not have
//!   arrived, so it may or may not be persisted).
//!
//! The verdict has no loophole: a run where nothing arrived, nothing was confirmed, or some
//! device was never looked at fails. Each [`Rule`] that does not hold is named in the report.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::http::Uri;

use crate::cli::VerifyArgs;
use crate::report::group;
use crate::stats::DeviceTotals;

/// How many mismatching devices the report names.
const EXAMPLES: usize = 10;

/// One property a verified run must have. [`Verification::failures`] names those that did not
/// hold, so a failed run says why.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// Every device of the run was compared (none missing from our side, e.g. a worker's).
    EveryDeviceChecked,
    /// The run sent at least one byte: a run that sent nothing proves nothing.
    BytesSent,
    /// At least one byte was confirmed durable: a server that never confirms fails.
    BytesConfirmed,
    /// Every device that sent a byte has a persisted row (unless all its bytes are unconfirmed
    /// and the caller allowed unconfirmed bytes).
    EverySenderPersisted,
    /// No byte confirmed durable is missing from the database.
    NoneLost,
    /// No device has more bytes persisted than it sent.
    NoneDoubleCounted,
    /// Unconfirmed bytes after the drain are within `--allow-unconfirmed` (default 0).
    UnconfirmedWithinBound,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::EveryDeviceChecked => "every-device-checked",
            Rule::BytesSent => "bytes-sent",
            Rule::BytesConfirmed => "bytes-confirmed",
            Rule::EverySenderPersisted => "every-sender-persisted",
            Rule::NoneLost => "none-lost",
            Rule::NoneDoubleCounted => "none-double-counted",
            Rule::UnconfirmedWithinBound => "unconfirmed-within-bound",
        }
    }
}

/// A rule that did not hold, and the figures that show it.
#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct Failure {
    pub rule: &'static str,
    pub detail: String,
}

impl Failure {
    pub fn new(rule: &'static str, detail: impl Into<String>) -> Self {
        Self { rule, detail: detail.into() }
    }
}

#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct Verification {
    /// Where the persisted totals came from (the URL without credentials).
    pub source: String,
    /// Devices the run had (phones, or sessions).
    pub devices_expected: u64,
    pub devices_checked: u64,
    /// Our devices with a persisted row.
    pub devices_persisted: u64,
    /// Our devices that sent at least one byte.
    pub devices_sent: u64,
    /// Devices that sent a byte and have no persisted row.
    pub devices_sent_not_persisted: u64,
    /// Rows with the prefix that name no device of this run (an earlier run's, with the same
    /// prefix: ignored, but worth knowing).
    pub other_devices: u64,
    pub sent_bytes: u64,
    pub confirmed_bytes: u64,
    pub lost_bytes: u64,
    pub double_counted_bytes: u64,
    pub unconfirmed_bytes: u64,
    /// The bound on unconfirmed bytes the caller allowed (`--allow-unconfirmed`).
    pub allowed_unconfirmed_bytes: u64,
    pub devices_with_lost_bytes: u64,
    pub devices_double_counted: u64,
    pub examples: Vec<Mismatch>,
    /// The rules that did not hold (empty when ok).
    pub failures: Vec<Failure>,
    /// Every rule held.
    pub ok: bool,
}

#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct Mismatch {
    pub device: String,
    pub sent: u64,
    pub confirmed: u64,
    pub persisted: u64,
}

impl Verification {
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let verdict = if self.ok { "OK" } else { "FAILED" };
        let _ = writeln!(
            o,
            "verification {verdict}: {} of {} devices checked against {} ({} with a persisted total)",
            group(self.devices_checked),
            group(self.devices_expected),
            self.source,
            group(self.devices_persisted)
        );
        let _ = writeln!(
            o,
            "  bytes sent {}, confirmed durable {}",
            group(self.sent_bytes),
            group(self.confirmed_bytes)
        );
        let _ = writeln!(
            o,
            "  lost bytes (confirmed durable, not persisted)   {:>12}  in {} devices",
            group(self.lost_bytes),
            group(self.devices_with_lost_bytes)
        );
        let _ = writeln!(
            o,
            "  double-counted bytes (persisted > sent)         {:>12}  in {} devices",
            group(self.double_counted_bytes),
            group(self.devices_double_counted)
        );
        let _ = writeln!(
            o,
            "  unconfirmed bytes (sent, never confirmed)       {:>12}  (allowed: {})",
            group(self.unconfirmed_bytes),
            group(self.allowed_unconfirmed_bytes)
        );
        if self.other_devices > 0 {
            let _ = writeln!(
                o,
                "  {} persisted devices with the prefix are not from this run (ignored)",
                group(self.other_devices)
            );
        }
        for f in &self.failures {
            let _ = writeln!(o, "  rule {} failed: {}", f.rule, f.detail);
        }
        for m in &self.examples {
            let _ = writeln!(
                o,
                "  {}: sent {} confirmed {} persisted {}",
                m.device, m.sent, m.confirmed, m.persisted
            );
        }
        o
    }
}

/// Compares our totals with the persisted ones. `expected`: the devices the run had;
/// `allowed_unconfirmed`: bytes that may stay unconfirmed (a crash drill's in-flight bytes).
pub fn compare(
    source: String,
    expected: u64,
    allowed_unconfirmed: u64,
    ours: &[(String, DeviceTotals)],
    persisted: &HashMap<String, u64>,
) -> Verification {
    let mut v = Verification {
        source,
        devices_expected: expected,
        devices_checked: ours.len() as u64,
        devices_persisted: 0,
        devices_sent: 0,
        devices_sent_not_persisted: 0,
        other_devices: 0,
        sent_bytes: 0,
        confirmed_bytes: 0,
        lost_bytes: 0,
        double_counted_bytes: 0,
        unconfirmed_bytes: 0,
        allowed_unconfirmed_bytes: allowed_unconfirmed,
        devices_with_lost_bytes: 0,
        devices_double_counted: 0,
        examples: Vec::new(),
        failures: Vec::new(),
        ok: false,
    };
    // Devices with no row whose every byte is unconfirmed: excused only by an allowance.
    let mut silent_unconfirmed_devices = 0u64;
    for (device, t) in ours {
        let p = persisted.get(device).copied();
        v.devices_persisted += u64::from(p.is_some());
        v.devices_sent += u64::from(t.sent > 0);
        if t.sent > 0 && p.is_none() {
            v.devices_sent_not_persisted += 1;
            silent_unconfirmed_devices += u64::from(t.durable == 0);
        }
        let p = p.unwrap_or(0);
        let lost = t.durable.saturating_sub(p);
        let double = p.saturating_sub(t.sent);
        v.sent_bytes += t.sent;
        v.confirmed_bytes += t.durable;
        v.lost_bytes += lost;
        v.double_counted_bytes += double;
        v.unconfirmed_bytes += t.sent.saturating_sub(t.durable);
        v.devices_with_lost_bytes += u64::from(lost > 0);
        v.devices_double_counted += u64::from(double > 0);
        if (lost > 0 || double > 0 || (t.sent > 0 && persisted.get(device).is_none()))
            && v.examples.len() < EXAMPLES
        {
            v.examples.push(Mismatch {
                device: device.clone(),
                sent: t.sent,
                confirmed: t.durable,
                persisted: p,
            });
        }
    }
    v.other_devices = persisted.len() as u64 - v.devices_persisted;

    let mut fail = |rule: Rule, detail: String| v.failures.push(Failure::new(rule.name(), detail));
    if v.devices_checked != expected || expected == 0 {
        fail(
            Rule::EveryDeviceChecked,
            format!("{} devices checked, the run had {}", v.devices_checked, expected),
        );
    }
    if v.sent_bytes == 0 {
        fail(Rule::BytesSent, "no byte was sent: the run proves nothing".into());
    }
    if v.sent_bytes > 0 && v.confirmed_bytes == 0 {
        fail(Rule::BytesConfirmed, format!("{} bytes sent, none confirmed durable", v.sent_bytes));
    }
    let excused = if allowed_unconfirmed > 0 { silent_unconfirmed_devices } else { 0 };
    if v.devices_sent_not_persisted > excused {
        fail(
            Rule::EverySenderPersisted,
            format!(
                "{} devices sent bytes and have no persisted row",
                v.devices_sent_not_persisted - excused
            ),
        );
    }
    if v.lost_bytes > 0 {
        fail(
            Rule::NoneLost,
            format!(
                "{} bytes confirmed durable are not persisted, in {} devices",
                v.lost_bytes, v.devices_with_lost_bytes
            ),
        );
    }
    if v.double_counted_bytes > 0 {
        fail(
            Rule::NoneDoubleCounted,
            format!(
                "{} bytes persisted more than sent, in {} devices",
                v.double_counted_bytes, v.devices_double_counted
            ),
        );
    }
    if v.unconfirmed_bytes > allowed_unconfirmed {
        fail(
            Rule::UnconfirmedWithinBound,
            format!(
                "{} bytes were never confirmed durable (allowed: {allowed_unconfirmed}, --allow-unconfirmed)",
                v.unconfirmed_bytes
            ),
        );
    }
    v.ok = v.failures.is_empty();
    v
}

/// Fetches the persisted totals named in `args` and compares.
pub async fn verify(
    args: &VerifyArgs,
    prefix: &str,
    expected: u64,
    ours: &[(String, DeviceTotals)],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Verification> {
    let (source, persisted) = if let Some(url) = &args.database_url {
        (redact(url), from_database(url, prefix).await?)
    } else if let Some(url) = &args.verify_url {
        let url = with_prefix(url, prefix);
        (redact(&url), from_endpoint(&url, tls).await?)
    } else {
        bail!("--verify needs --database-url or --verify-url");
    };
    Ok(compare(source, expected, args.allow_unconfirmed, ours, &persisted))
}

/// The URL without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..s + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn with_prefix(url: &str, prefix: &str) -> String {
    if url.contains('?') {
        url.to_string()
    } else {
        format!("{url}?prefix={}", crate::net::percent_encode(prefix))
    }
}

/// `SELECT device, bytes FROM device_totals WHERE device LIKE prefix || '%'`, kept to the
/// devices that really start with the prefix (LIKE also treats `_` as a wildcard).
async fn from_database(url: &str, prefix: &str) -> anyhow::Result<HashMap<String, u64>> {
    let rows: Vec<(String, i64)> = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .with_context(|| format!("connecting to {}", redact(url)))?;
        let rows = sqlx::query_as(
            "SELECT device, CAST(bytes AS BIGINT) AS bytes FROM device_totals WHERE device LIKE $1 || '%'",
        )
        .bind(prefix)
        .fetch_all(&pool)
        .await
        .context("SELECT ... FROM device_totals")?;
        pool.close().await;
        rows
    } else if url.starts_with("sqlite:") {
        let options: sqlx::sqlite::SqliteConnectOptions =
            url.parse().with_context(|| format!("--database-url {url}"))?;
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.read_only(true))
            .await
            .with_context(|| format!("opening {url}"))?;
        let rows = sqlx::query_as(
            "SELECT device, CAST(bytes AS INTEGER) AS bytes FROM device_totals WHERE device LIKE ?1 || '%'",
        )
        .bind(prefix)
        .fetch_all(&pool)
        .await
        .context("SELECT ... FROM device_totals")?;
        pool.close().await;
        rows
    } else {
        bail!("--database-url must be postgres://... or sqlite://...");
    };
    let mut totals = HashMap::with_capacity(rows.len());
    for (device, bytes) in rows {
        if device.starts_with(prefix) {
            let bytes = u64::try_from(bytes).map_err(|_| anyhow!("{device}: negative total {bytes}"))?;
            *totals.entry(device).or_insert(0) += bytes;
        }
    }
    Ok(totals)
}

#[derive(Deserialize)]
struct Devices {
    devices: Vec<DeviceRow>,
}

#[derive(Deserialize)]
struct DeviceRow {
    device: String,
    bytes: u64,
}

/// GET `url` (http:// or https:// with the pinned CA), expecting
/// `{"devices":[{"device":"sim-000001","bytes":12}, ...]}`.
async fn from_endpoint(
    url: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<HashMap<String, u64>> {
    let body = http_get(url, tls).await.with_context(|| format!("GET {url}"))?;
    let devices: Devices = serde_json::from_slice(&body)
        .with_context(|| format!("GET {url}: expected {{\"devices\":[{{\"device\":..,\"bytes\":..}}]}}"))?;
    let mut totals = HashMap::with_capacity(devices.devices.len());
    for row in devices.devices {
        *totals.entry(row.device).or_insert(0) += row.bytes;
    }
    Ok(totals)
}

/// Most bytes a verification response may have.
const MAX_RESPONSE: usize = 1 << 30;

/// A minimal HTTP/1.1 GET with `Connection: close`: the status must be 200; the body is read to
/// its Content-Length, its chunks, or the end of the connection.
pub async fn http_get(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> anyhow::Result<Vec<u8>> {
    let uri: Uri = url.parse().context("not a URL")?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("the URL must be http:// or https://"),
    };
    let authority = uri.authority().ok_or_else(|| anyhow!("no host"))?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\nUser-Agent: mobile-sim\r\n\r\n"
    );
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.context("connecting")?;
    let raw = if https {
        let config = tls.ok_or_else(|| anyhow!("https:// needs --ca FILE"))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.context("TLS")?;
        exchange(stream, request.as_bytes()).await?
    } else {
        exchange(tcp, request.as_bytes()).await?
    };
    parse_response(&raw)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> anyhow::Result<Vec<u8>> {
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                anyhow::ensure!(raw.len() <= MAX_RESPONSE, "response larger than {MAX_RESPONSE} bytes");
            }
            // A server that closes without TLS close_notify: what arrived is judged below.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw)? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => bail!("incomplete HTTP response"),
    };
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = header("content-length").and_then(|v| v.parse::<usize>().ok());
    let body = &raw[head_len..];
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        anyhow::ensure!(body.len() >= length, "response body cut short ({} of {length} bytes)", body.len());
        body[..length].to_vec()
    } else {
        body.to_vec()
    };
    if status != 200 {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    }
    Ok(body)
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("bad chunk"))?;
        let size_text = std::str::from_utf8(&data[..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| anyhow!("bad chunk size"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        anyhow::ensure!(data.len() >= size + 2, "chunk cut short");
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(sent: u64, durable: u64) -> DeviceTotals {
        DeviceTotals { sent, durable }
    }

    fn persisted(rows: &[(&str, u64)]) -> HashMap<String, u64> {
        rows.iter().map(|&(d, b)| (d.to_string(), b)).collect()
    }

    fn rules(v: &Verification) -> Vec<&'static str> {
        v.failures.iter().map(|f| f.rule).collect()
    }

    #[test]
    fn lost_double_and_unconfirmed() {
        let ours = vec![
            ("d1".to_string(), totals(10, 10)), // exact
            ("d2".to_string(), totals(10, 8)),  // 2 unconfirmed, persisted 9: fine
            ("d3".to_string(), totals(10, 8)),  // persisted 5: 3 lost
            ("d4".to_string(), totals(10, 10)), // persisted 12: 2 double
            ("d5".to_string(), totals(3, 0)),   // nothing persisted, nothing confirmed
        ];
        let db = persisted(&[("d1", 10), ("d2", 9), ("d3", 5), ("d4", 12), ("old", 7)]);
        let v = compare("test".into(), 5, 0, &ours, &db);
        assert_eq!(v.devices_checked, 5);
        assert_eq!(v.devices_persisted, 4);
        assert_eq!(v.devices_sent_not_persisted, 1);
        assert_eq!(v.other_devices, 1);
        assert_eq!(v.lost_bytes, 3);
        assert_eq!(v.double_counted_bytes, 2);
        assert_eq!(v.unconfirmed_bytes, 2 + 2 + 3);
        assert_eq!(v.examples.len(), 3);
        assert_eq!(
            rules(&v),
            ["every-sender-persisted", "none-lost", "none-double-counted", "unconfirmed-within-bound"]
        );
        assert!(!v.ok);
        // With an allowance that covers the 7 unconfirmed bytes (and so d5's silence), only the
        // lost and double-counted bytes remain.
        let v = compare("test".into(), 5, 7, &ours, &db);
        assert_eq!(rules(&v), ["none-lost", "none-double-counted"]);
    }

    #[test]
    fn an_exact_run_is_ok() {
        let ours = vec![("d1".to_string(), totals(4, 4)), ("d2".to_string(), totals(0, 0))];
        let v = compare("test".into(), 2, 0, &ours, &persisted(&[("d1", 4)]));
        assert!(v.ok, "{:?}", v.failures);
        assert_eq!(v.devices_sent, 1);
    }

    #[test]
    fn nothing_sent_nothing_confirmed_or_devices_missing_fail() {
        // Nothing sent at all: 0 lost of 0 is no proof.
        let idle = vec![("d1".to_string(), totals(0, 0))];
        let v = compare("test".into(), 1, 0, &idle, &HashMap::new());
        assert_eq!(rules(&v), ["bytes-sent"]);
        // A server that accepts and never confirms: everything unconfirmed, nothing persisted.
        let unconfirmed = vec![("d1".to_string(), totals(5, 0))];
        let v = compare("test".into(), 1, 0, &unconfirmed, &HashMap::new());
        assert_eq!(rules(&v), ["bytes-confirmed", "every-sender-persisted", "unconfirmed-within-bound"]);
        // Even an allowance does not excuse a run where nothing at all was confirmed.
        let v = compare("test".into(), 1, 100, &unconfirmed, &HashMap::new());
        assert_eq!(rules(&v), ["bytes-confirmed"]);
        // A server that confirms and persists nothing.
        let confirmed = vec![("d1".to_string(), totals(5, 5))];
        let v = compare("test".into(), 1, 0, &confirmed, &HashMap::new());
        assert_eq!(rules(&v), ["every-sender-persisted", "none-lost"]);
        // Devices missing from our side (a worker's report that never came).
        let v = compare("test".into(), 3, 0, &confirmed, &persisted(&[("d1", 5)]));
        assert_eq!(rules(&v), ["every-device-checked"]);
    }

    #[test]
    fn http_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), b"hello");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), b"hello");
        let error = b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope";
        assert!(parse_response(error).unwrap_err().to_string().contains("404"));
    }

    #[test]
    fn urls() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(with_prefix("https://h/api/devices", "sim-"), "https://h/api/devices?prefix=sim-");
        assert_eq!(with_prefix("https://h/api/devices?prefix=a", "sim-"), "https://h/api/devices?prefix=a");
    }
}
