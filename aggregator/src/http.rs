//! The routes of the one listener: phones (`/ws`), trunks (`/trunk`), probes, metrics, the phone
//! page and the dashboard (`/`, `/dashboard`, see [`crate::web`]), and the small JSON API that
//! mobile-sim's verification and the dashboard read.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    SEC_WEBSOCKET_VERSION, WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS,
};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use crate::dashboard::EventStream;
use crate::devices::Refused;
use crate::request::query_param;
use crate::state::Shared;
use crate::{dashboard, phone, trunk_link, web, websocket};
use address_limits::Slot;

/// A whole body, or the dashboard's endless event stream.
pub type Body = Either<Full<Bytes>, EventStream>;

fn full(body: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(body.into()))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("static header"));
    r
}

fn json(body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An embedded page, script or style sheet.
fn page(asset: &web::Asset) -> Response<Body> {
    let mut r = Response::new(full(asset.body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    // Small files; always revalidated, so a new aggregator's pages are picked up at once.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(web::CONTENT_SECURITY_POLICY));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The dashboard's URL may carry its token: never send it to another site.
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// The dashboard's data: the latest snapshot, or (`events`) a stream of them.
fn dashboard_data(shared: &Arc<Shared>, events: bool) -> Response<Body> {
    if !events {
        return json(shared.dashboard.latest());
    }
    let Some(stream) = dashboard::events(&shared.dashboard, &shared.shutdown) else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many dashboard streams (--dashboard-streams)\n");
    };
    let mut r = Response::new(Either::Right(stream));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A proxy (nginx) must pass each event on at once rather than buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The answer to a request the access rule turned away.
fn denied(status: StatusCode, reason: &'static str) -> Response<Body> {
    let mut r = text(status, format!("{reason}\n"));
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// Answers one request. `slot`: the connection's place under its address's bounds (an upgrade
/// keeps it for the session's life).
pub async fn route(
    shared: Arc<Shared>,
    peer: SocketAddr,
    slot: Slot,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    Ok(match path.as_str() {
        "/ws" => upgrade_phone(shared, slot, req),
        "/trunk" => upgrade_trunk(shared, peer, slot, req),
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
        "/api/devices" | "/api/dashboard" | "/api/dashboard/events" => {
            if let Err((status, reason)) = shared.access.check(&req) {
                return Ok(denied(status, reason));
            }
            match path.as_str() {
                "/api/devices" => devices(&shared, &req).await,
                "/api/dashboard" => dashboard_data(&shared, false),
                _ => dashboard_data(&shared, true),
            }
        }
        "/ca.crt" => ca_certificate(&shared),
        "/api/enrol" => enrol(&shared, &req),
        "/favicon.ico" => {
            let mut r = text(StatusCode::NO_CONTENT, "");
            r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("max-age=86400"));
            r
        }
        other => match web::asset(other) {
            Some(asset) => page(asset),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    })
}

/// The CA certificate phones install (`/ca` says how). Served as a download with the type
/// phones' installers expect: iOS offers to install a profile, Android saves it for Settings.
fn ca_certificate(shared: &Shared) -> Response<Body> {
    let Some(pem) = shared.ca_pem.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            "no CA certificate to offer: this aggregator was given its certificate (--tls-cert) without --ca-cert\n",
        );
    };
    let mut r = Response::new(full(pem));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-x509-ca-cert"));
    h.insert(CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"holdfast-ca.crt\""));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// `POST /api/enrol` with "Authorization: Bearer CODE": a new device of the caller's own and its
/// token, as JSON (`--enrolment-code`).
fn enrol(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let Some(enrolment) = &shared.enrolment else {
        return text(StatusCode::NOT_FOUND, "enrolment is off (--enrolment-code)\n");
    };
    if req.method() != http::Method::POST {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n");
        r.headers_mut().insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let code = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match enrolment.enrol(code) {
        Ok(e) => {
            tracing::info!(device = %e.device, "a phone enrolled");
            let mut r = json(
                serde_json::json!({"device": e.device, "token": e.token, "expires": e.expires}).to_string(),
            );
            r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(refused @ Refused::WrongCode) => {
            shared.metrics.refuse("bad enrolment code");
            denied(StatusCode::UNAUTHORIZED, refused.reason())
        }
        Err(refused @ Refused::TooMany { retry_after_s }) => {
            shared.metrics.refuse("enrolment rate");
            let mut r = text(StatusCode::TOO_MANY_REQUESTS, format!("{}\n", refused.reason()));
            r.headers_mut().insert(http::header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            r
        }
    }
}

async fn devices(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let prefix = query_param(req.uri().query(), "prefix").unwrap_or_default();
    match shared.store.device_totals(&prefix).await {
        Ok(totals) => json(
            serde_json::json!({
                "devices": totals.iter().map(|(d, b)| serde_json::json!({"device": d, "bytes": b})).collect::<Vec<_>>()
            })
            .to_string(),
        ),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {e}\n")),
    }
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
    Response::from_parts(parts, full(Bytes::new()))
}

fn upgrade_phone(shared: Arc<Shared>, slot: Slot, mut req: Request<Incoming>) -> Response<Body> {
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
    // The phone proves which device it is (docs/SECURITY.md); refused before it takes a place.
    if let Some(key) = &shared.phone_key {
        let token = query_param(req.uri().query(), "token");
        if let Err(reason) =
            crate::devices::check(key, device.as_deref().map(str::as_bytes), token.as_deref())
        {
            return refuse(&shared, StatusCode::UNAUTHORIZED, reason);
        }
    }
    let Ok(permit) = shared.phones.clone().try_acquire_owned() else {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, "phone capacity reached");
    };
    // Shutdown waits for the session while it holds this (shutdown::Drain).
    let Some(drain) = shared.drain.guard() else {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    // Admitted: a session now, no longer a handshake of its address.
    slot.settle();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                let config = websocket::phone_config(shared.settings.max_phone_message);
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
                phone::serve(shared, ws, device, permit).await;
                drop(slot);
                drop(drain);
            }
            Err(e) => debug!(error = %e, "phone upgrade failed"),
        }
    });
    switching(head)
}

fn upgrade_trunk(
    shared: Arc<Shared>,
    peer: SocketAddr,
    slot: Slot,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if stopping(&shared) {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    let head = match websocket::accept(&req, Some(trunk::frame::SUBPROTOCOL)) {
        Ok(head) => head,
        Err(r) => return refuse(&shared, r.status, r.reason),
    };
    // Only a place to shake hands: the trunk's own place is taken after authentication.
    let Ok(permit) = shared.pending_trunks.clone().try_acquire_owned() else {
        return refuse(&shared, StatusCode::SERVICE_UNAVAILABLE, "too many trunk handshakes");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                let config = websocket::trunk_config(shared.settings.max_trunk_message);
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
                trunk_link::serve(shared, ws, peer.to_string(), permit, slot).await;
            }
            Err(e) => debug!(error = %e, "trunk upgrade failed"),
        }
    });
    switching(head)
}
