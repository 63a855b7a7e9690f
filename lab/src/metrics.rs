//! The aggregator's Prometheus metrics, read over its listener (TLS, or plain behind a proxy):
//! counters at the edges of the hold, and the flush-lag histogram's buckets, whose difference
//! gives the lag of the flushes committed during the hold alone. The same small HTTP/1.0 client
//! asks nginx's `/healthz` in the local cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The aggregator's flush-lag histogram: age of the oldest report a flush committed.
pub const FLUSH_LAG: &str = "holdfast_flush_lag_seconds";
/// Its per-row histogram: age of each committed row's oldest report (absent from older builds).
pub const FLUSH_ROW_LAG: &str = "holdfast_flush_row_lag_seconds";
/// Bytes by which committed flushes grew the stored counts.
pub const FLUSHED_BYTES: &str = "holdfast_flushed_bytes_total";
/// Payload bytes the aggregator received from direct phones (what a build without
/// [`FLUSHED_BYTES`] is measured by).
pub const PHONE_BYTES: &str = "holdfast_phone_bytes_total";
/// Session opens reported by trunks.
pub const SESSIONS_OPENED: &str = "holdfast_trunk_sessions_opened_total";
/// Sessions waiting in the ledger.
pub const LEDGER_ENTRIES: &str = "holdfast_ledger_entries";
/// Authenticated trunk links.
pub const TRUNKS: &str = "holdfast_trunks";
/// Phones connected straight to the aggregator.
pub const DIRECT_SESSIONS: &str = "holdfast_direct_sessions";
/// Committed flushes.
pub const FLUSHES: &str = "holdfast_flushes_total";
/// Rows committed flushes wrote.
pub const FLUSH_ROWS: &str = "holdfast_flush_rows_total";
/// Flushes that failed (the database down or refusing).
pub const DB_ERRORS: &str = "holdfast_db_errors_total";
/// Gateway boots superseded by a newer boot and marked for folding.
pub const FOLDED_BOOTS: &str = "holdfast_folded_boots_total";
/// Sessions folded into per-device totals.
pub const FOLDED_SESSIONS: &str = "holdfast_folded_sessions_total";

/// Reads the metrics of one aggregator (or another page of a server of ours).
pub struct Scraper {
    addr: SocketAddr,
    /// `None`: plain HTTP (an aggregator `--plain` behind nginx).
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Scraper {
    /// For the server at `addr`, whose certificate chains to `ca` and names `localhost`.
    pub fn new(addr: SocketAddr, ca: &Path) -> anyhow::Result<Scraper> {
        let config = lean_tls::pinned::client_config(ca)?;
        Ok(Scraper { addr, tls: Some(tokio_rustls::TlsConnector::from(Arc::clone(&config))) })
    }

    /// For a server at `addr` that speaks plain HTTP.
    pub fn plain(addr: SocketAddr) -> Scraper {
        Scraper { addr, tls: None }
    }

    /// One scrape. An error is an error (never a page of zeros).
    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        Ok(Scrape::parse(&self.get("/metrics").await?))
    }

    /// The body of `path` when the answer is 200; any other answer, or none within
    /// [`SCRAPE_TIMEOUT`], is an error.
    pub async fn get(&self, path: &str) -> anyhow::Result<String> {
        tokio::time::timeout(SCRAPE_TIMEOUT, self.fetch(path))
            .await
            .with_context(|| format!("{path} of {}: no answer in {SCRAPE_TIMEOUT:?}", self.addr))?
            .with_context(|| format!("{path} of {}", self.addr))
    }

    async fn fetch(&self, path: &str) -> anyhow::Result<String> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        // HTTP/1.0: the answer is the body up to the close, never chunked.
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        let mut answer = Vec::new();
        match &self.tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from("localhost")?;
                let mut tls = tls.connect(name, tcp).await?;
                tls.write_all(request.as_bytes()).await?;
                // A TLS peer that closes without close_notify still gave us the whole page.
                if let Err(e) = tls.read_to_end(&mut answer).await {
                    if answer.is_empty() {
                        return Err(e.into());
                    }
                }
            }
            None => {
                let mut tcp = tcp;
                tcp.write_all(request.as_bytes()).await?;
                tcp.read_to_end(&mut answer).await?;
            }
        }
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").context("no end of head")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            bail!("{}", head.lines().next().unwrap_or_default());
        }
        Ok(body.to_owned())
    }
}

/// One page of metrics: every sample by its series (`name{labels}`).
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: BTreeMap<String, f64>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect();
        Scrape { samples }
    }

    /// The value of an unlabelled series.
    pub fn value(&self, name: &str) -> Option<f64> {
        self.samples.get(name).copied()
    }

    /// A histogram's cumulative buckets, (upper bound, count), in order of the bound.
    pub fn buckets(&self, histogram: &str) -> Vec<(f64, f64)> {
        let prefix = format!("{histogram}_bucket{{le=\"");
        let mut b: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(series, &count)| {
                let le = series.strip_prefix(&prefix)?.strip_suffix("\"}")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count))
            })
            .collect();
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        b
    }
}

/// What a histogram observed between two scrapes.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// Cumulative (upper bound, count) over the window.
    buckets: Vec<(f64, f64)>,
}

impl Window {
    pub fn between(before: &Scrape, after: &Scrape, histogram: &str) -> Window {
        let old = before.buckets(histogram);
        let buckets = after
            .buckets(histogram)
            .into_iter()
            .map(|(le, n)| {
                let then = old.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, c)| *c);
                (le, (n - then).max(0.0))
            })
            .collect();
        Window { buckets }
    }

    /// Observations in the window.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |(_, n)| *n)
    }

    /// The upper bound of the bucket that holds quantile `q`: the value is at most this (the
    /// histogram's resolution). `None` when nothing was observed.
    pub fn quantile_at_most(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        self.buckets.iter().find(|(_, n)| *n >= rank).map(|(le, _)| *le)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# TYPE holdfast_flush_lag_seconds histogram\n\
        holdfast_flush_lag_seconds_sum 12.5\n\
        holdfast_flush_lag_seconds_count 10\n\
        holdfast_flush_lag_seconds_bucket{le=\"0.5\"} 4\n\
        holdfast_flush_lag_seconds_bucket{le=\"1.0\"} 8\n\
        holdfast_flush_lag_seconds_bucket{le=\"2.0\"} 9\n\
        holdfast_flush_lag_seconds_bucket{le=\"+Inf\"} 10\n\
        holdfast_flushed_bytes_total 1234\n\
        # EOF\n";

    #[test]
    fn values_and_buckets() {
        let s = Scrape::parse(PAGE);
        assert_eq!(s.value(FLUSHED_BYTES), Some(1234.0));
        assert_eq!(s.value("holdfast_nothing"), None);
        let b = s.buckets(FLUSH_LAG);
        assert_eq!(b.len(), 4);
        assert_eq!(b[0], (0.5, 4.0));
        assert_eq!(b[3].0, f64::INFINITY);
    }

    #[test]
    fn the_window_counts_only_what_came_between() {
        let before = Scrape::parse(PAGE);
        let after = Scrape::parse(
            &PAGE
                .replace("} 8\n", "} 108\n")
                .replace("} 9\n", "} 109\n")
                .replace("{le=\"+Inf\"} 10", "{le=\"+Inf\"} 110"),
        );
        let w = Window::between(&before, &after, FLUSH_LAG);
        assert_eq!(w.count(), 100.0);
        // All 100 new flushes fell in (0.5, 1.0].
        assert_eq!(w.quantile_at_most(0.5), Some(1.0));
        assert_eq!(w.quantile_at_most(0.99), Some(1.0));
        let nothing = Window::between(&before, &before, FLUSH_LAG);
        assert_eq!(nothing.quantile_at_most(0.99), None);
    }
}
