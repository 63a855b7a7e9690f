//! The routes of the one listener: phones (`/ws`), trunks (`/trunk`), probes, metrics and the
//! small JSON API that mobile-sim's verification and the dashboard read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{CONTENT_TYPE, SEC_WEBSOCKET_VERSION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use crate::state::Shared;
use crate::{phone, trunk_link, websocket};

pub type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static header"));
    r
}

fn json(body: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(CONTENT_TYPE, "application/json".parse().expect("static header"));
    r
}

/// Decodes `%XX` escapes and `+` of a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `name` in the request's query string.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn authorized<B>(shared: &Shared, req: &Request<B>) -> bool {
    let token = &shared.settings.dashboard_token;
    if token.is_empty() {
        return true;
    }
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    bearer.or_else(|| query_param(req.uri().query(), "token")).as_deref() == Some(token.as_str())
}

/// Answers one request.
pub async fn route(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match path.as_str() {
        "/ws" => upgrade_phone(shared, req),
        "/trunk" => upgrade_trunk(shared, peer, req),
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match shared.store.ping().await {
            Ok(()) if !stopping(&shared) => text(StatusCode::OK, "ready\n"),
            Ok(()) => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {e}\n")),
        },
        "/metrics" => {
            let mut r = text(StatusCode::OK, crate::metrics::render(&shared.registry));
            r.headers_mut().insert(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8".parse().expect("static header"),
            );
            r
        }
        "/api/devices" if authorized(&shared, &req) => {
            let prefix = query_param(req.uri().query(), "prefix").unwrap_or_default();
            match shared.store.device_totals(&prefix).await {
                Ok(totals) => json(serde_json::json!({
                    "devices": totals.iter().map(|(d, b)| serde_json::json!({"device": d, "bytes": b})).collect::<Vec<_>>()
                })),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {e}\n")),
            }
        }
        "/api/devices" => text(StatusCode::UNAUTHORIZED, "token required\n"),
        "/" => text(
            StatusCode::OK,
            "holdfast aggregator\n\n/ws      phones (WebSocket; ?device=ID)\n/trunk   gateway trunks (WebSocket, subprotocol trunk.v1)\n/healthz /readyz /metrics\n/api/devices?prefix=P\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    })
}

fn stopping(shared: &Shared) -> bool {
    *shared.shutdown.borrow()
}

fn refuse(shared: &Shared, status: StatusCode, reason: &'static str) -> Response<Body> {
    shared.metrics.refuse(reason);
    let mut r = text(status, format!("{reason}\n"));
    if status == StatusCode::UPGRADE_REQUIRED {
        r.headers_mut().insert(SEC_WEBSOCKET_VERSION, "13".parse().expect("static header"));
    }
    r
}

fn switching(head: Response<()>) -> Response<Body> {
    let (parts, ()) = head.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}

fn upgrade_phone(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    if stopping(&shared) {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let head = match websocket::accept(&req, None) {
        Ok(head) => head,
        Err(r) => return refuse(&shared, r.status, r.reason),
    };
    // The same decoding as a gateway's (trunk::phone), so a device has one id at either door.
    let device = match trunk::phone::device_id(req.uri().query().unwrap_or("").as_bytes()) {
        Ok(id) => id.map(|id| String::from_utf8_lossy(id.as_slice()).into_owned()),
        Err(_) => return refuse(&shared, StatusCode::BAD_REQUEST, "device id longer than 32 bytes"),
    };
    let Ok(permit) = shared.phones.clone().try_acquire_owned() else {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, "phone capacity reached");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                let config = websocket::phone_config(shared.settings.max_phone_message);
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
                phone::serve(shared, ws, device, permit).await;
            }
            Err(e) => debug!(error = %e, "phone upgrade failed"),
        }
    });
    switching(head)
}

fn upgrade_trunk(shared: Arc<Shared>, peer: SocketAddr, mut req: Request<Incoming>) -> Response<Body> {
    if stopping(&shared) {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let head = match websocket::accept(&req, Some(trunk::frame::SUBPROTOCOL)) {
        Ok(head) => head,
        Err(r) => return refuse(&shared, r.status, r.reason),
    };
    let Ok(permit) = shared.trunks.clone().try_acquire_owned() else {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, "trunk capacity reached");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                let config = websocket::trunk_config(shared.settings.max_trunk_message);
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
                trunk_link::serve(shared, ws, peer.to_string(), permit).await;
            }
            Err(e) => debug!(error = %e, "trunk upgrade failed"),
        }
    });
    switching(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_param(Some("a=1&device=ph%20one+x"), "device").as_deref(), Some("ph one x"));
        assert_eq!(query_param(Some("device=%zz%4"), "device").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(Some("x=1"), "device"), None);
        assert_eq!(query_param(None, "device"), None);
    }
}
