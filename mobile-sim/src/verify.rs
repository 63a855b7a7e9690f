//! End-to-end proof: every device's bytes sent and bytes confirmed durable against the totals
//! that were persisted, read from the database (`device_totals`) or from the aggregator's
//! `/api/devices` endpoint.
//!
//! Per device, with `sent >= confirmed` as the simulator counts them:
//! - lost: confirmed durable but not persisted, `max(0, confirmed - persisted)`;
//! - double-counted: persisted more than was ever sent, `max(0, persisted - sent)`;
//! - unconfirmed: sent but never confirmed, `sent - confirmed` (allowed: the byte may or may
//!   not have arrived, so it may or may not be persisted).
//!
//! Lost and double-counted must both be zero.

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

#[derive(Debug, Serialize, Clone, PartialEq)]
pub struct Verification {
    /// Where the persisted totals came from (the URL without credentials).
    pub source: String,
    pub devices_checked: u64,
    /// Our devices with a persisted row.
    pub devices_persisted: u64,
    /// Rows with the prefix that name no device of this run (an earlier run's, with the same
    /// prefix: ignored, but worth knowing).
    pub other_devices: u64,
    pub lost_bytes: u64,
    pub double_counted_bytes: u64,
    pub unconfirmed_bytes: u64,
    pub devices_with_lost_bytes: u64,
    pub devices_double_counted: u64,
    pub examples: Vec<Mismatch>,
    /// No lost and no double-counted bytes.
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
            "verification {verdict}: {} devices checked against {} ({} with a persisted total)",
            group(self.devices_checked),
            self.source,
            group(self.devices_persisted)
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
            "  unconfirmed bytes (sent, never confirmed)       {:>12}",
            group(self.unconfirmed_bytes)
        );
        if self.other_devices > 0 {
            let _ = writeln!(
                o,
                "  {} persisted devices with the prefix are not from this run (ignored)",
                group(self.other_devices)
            );
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

/// Compares our totals with the persisted ones.
pub fn compare(
    source: String,
    ours: &[(String, DeviceTotals)],
    persisted: &HashMap<String, u64>,
) -> Verification {
    let mut v = Verification {
        source,
        devices_checked: ours.len() as u64,
        devices_persisted: 0,
        other_devices: 0,
        lost_bytes: 0,
        double_counted_bytes: 0,
        unconfirmed_bytes: 0,
        devices_with_lost_bytes: 0,
        devices_double_counted: 0,
        examples: Vec::new(),
        ok: true,
    };
    for (device, t) in ours {
        let p = persisted.get(device).copied();
        v.devices_persisted += u64::from(p.is_some());
        let p = p.unwrap_or(0);
        let lost = t.durable.saturating_sub(p);
        let double = p.saturating_sub(t.sent);
        v.lost_bytes += lost;
        v.double_counted_bytes += double;
        v.unconfirmed_bytes += t.sent.saturating_sub(t.durable);
        v.devices_with_lost_bytes += u64::from(lost > 0);
        v.devices_double_counted += u64::from(double > 0);
        if (lost > 0 || double > 0) && v.examples.len() < EXAMPLES {
            v.examples.push(Mismatch {
                device: device.clone(),
                sent: t.sent,
                confirmed: t.durable,
                persisted: p,
            });
        }
    }
    v.other_devices = persisted.len() as u64 - v.devices_persisted;
    v.ok = v.lost_bytes == 0 && v.double_counted_bytes == 0;
    v
}

/// Fetches the persisted totals named in `args` and compares.
pub async fn verify(
    args: &VerifyArgs,
    prefix: &str,
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
    Ok(compare(source, ours, &persisted))
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

    #[test]
    fn lost_double_and_unconfirmed() {
        let ours = vec![
            ("d1".to_string(), totals(10, 10)), // exact
            ("d2".to_string(), totals(10, 8)),  // 2 unconfirmed, persisted 9: fine
            ("d3".to_string(), totals(10, 8)),  // persisted 5: 3 lost
            ("d4".to_string(), totals(10, 10)), // persisted 12: 2 double
            ("d5".to_string(), totals(3, 0)),   // nothing persisted, nothing confirmed: fine
        ];
        let persisted: HashMap<String, u64> = [("d1", 10), ("d2", 9), ("d3", 5), ("d4", 12), ("old", 7)]
            .map(|(d, b)| (d.to_string(), b))
            .into();
        let v = compare("test".into(), &ours, &persisted);
        assert_eq!(v.devices_checked, 5);
        assert_eq!(v.devices_persisted, 4);
        assert_eq!(v.other_devices, 1);
        assert_eq!(v.lost_bytes, 3);
        assert_eq!(v.double_counted_bytes, 2);
        assert_eq!(v.unconfirmed_bytes, 2 + 2 + 3);
        assert_eq!(v.examples.len(), 2);
        assert!(!v.ok);
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
