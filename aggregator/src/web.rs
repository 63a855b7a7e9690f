//! The browser side: the phone page at `/` and the dashboard at `/dashboard`, hand-written
//! HTML, CSS and JavaScript embedded in the binary (no build step, nothing from a CDN), and the
//! rule for who may read the dashboard's data.

use http::Request;

use crate::config::Settings;

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file the aggregator serves to browsers. The pages load only these (and connect only to
/// WebSockets and the event stream), which the Content-Security-Policy below enforces.
pub const ASSETS: &[Asset] = &[
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("../web/app.html") },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/app.js"),
    },
    Asset {
        path: "/dashboard",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../web/dashboard.html"),
    },
    Asset {
        path: "/dashboard.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../web/dashboard.js"),
    },
    Asset { path: "/ca", content_type: "text/html; charset=utf-8", body: include_str!("../web/ca.html") },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../web/style.css"),
    },
];

/// The embedded file at `path`, if any.
pub fn asset(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

/// Headers of every page: scripts and styles only from this origin, no framing; `connect-src`
/// allows any ws:/wss: because the phone page may be pointed at another server.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Who may read the dashboard's data and `/api/devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No token, and the listener is loopback with TLS: only this machine can connect.
    Open,
    /// Only requests carrying the token.
    Token(String),
    /// No token on a listener others can reach: nobody, until a token is set.
    Closed,
}

impl Access {
    pub fn of(s: &Settings) -> Access {
        if !s.dashboard_token.is_empty() {
            Access::Token(s.dashboard_token.clone())
        } else if s.listen.ip().is_loopback() && !s.plain {
            // With --plain the aggregator sits behind a TLS proxy, usually on the same machine:
            // a loopback listener would then be reachable by anyone the proxy serves.
            Access::Open
        } else {
            Access::Closed
        }
    }

    /// One line for the start-up message.
    pub fn describe(&self) -> &'static str {
        match self {
            Access::Open => "open: loopback listener, no --dashboard-token",
            Access::Token(_) => "token required",
            Access::Closed => "disabled: set --dashboard-token",
        }
    }

    /// Whether `req` may read; otherwise the status and the reason to answer.
    pub fn check<B>(&self, req: &Request<B>) -> Result<(), (http::StatusCode, &'static str)> {
        match self {
            Access::Open => Ok(()),
            Access::Closed => Err((
                http::StatusCode::FORBIDDEN,
                "the dashboard is disabled: this aggregator is reachable from other machines and has no --dashboard-token",
            )),
            Access::Token(token) => {
                let bearer = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::to_owned);
                let given = bearer.or_else(|| crate::http::query_param(req.uri().query(), "token"));
                match given {
                    Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
                    _ => Err((http::StatusCode::UNAUTHORIZED, "token required")),
                }
            }
        }
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right
/// (the length may show; tokens should be long and random).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn settings(args: &[&str]) -> Settings {
        let mut argv = vec!["aggregator"];
        argv.extend_from_slice(args);
        crate::config::Cli::parse_from(argv).serve
    }

    fn request(uri: &str, bearer: Option<&str>) -> Request<()> {
        let mut r = Request::builder().uri(uri);
        if let Some(b) = bearer {
            r = r.header("authorization", format!("Bearer {b}"));
        }
        r.body(()).unwrap()
    }

    #[test]
    fn without_a_token_only_a_loopback_tls_listener_is_open() {
        assert_eq!(Access::of(&settings(&["--listen", "127.0.0.1:1"])), Access::Open);
        assert_eq!(Access::of(&settings(&["--listen", "[::1]:1"])), Access::Open);
        assert_eq!(Access::of(&settings(&["--listen", "0.0.0.0:1"])), Access::Closed);
        assert_eq!(Access::of(&settings(&["--listen", "127.0.0.1:1", "--plain"])), Access::Closed);
        let closed = Access::of(&settings(&["--listen", "10.1.2.3:443"]));
        assert_eq!(closed.check(&request("/api/dashboard", None)).unwrap_err().0, 403);
    }

    #[test]
    fn a_token_is_required_when_set() {
        let a = Access::of(&settings(&["--listen", "127.0.0.1:1", "--dashboard-token", "s3cret"]));
        assert!(a.check(&request("/api/dashboard?token=s3cret", None)).is_ok());
        assert!(a.check(&request("/api/dashboard", Some("s3cret"))).is_ok());
        assert_eq!(a.check(&request("/api/dashboard", None)).unwrap_err().0, 401);
        assert_eq!(a.check(&request("/api/dashboard?token=s3cre", None)).unwrap_err().0, 401);
        assert_eq!(a.check(&request("/api/dashboard?token=s3cret", Some("x"))).unwrap_err().0, 401);
    }

    #[test]
    fn every_asset_is_small() {
        // The phone page must load fast on a bad mobile link: all of it in a few tens of KiB.
        let total: usize = ASSETS.iter().map(|a| a.body.len()).sum();
        assert!(total < 64 * 1024, "assets are {total} bytes");
        assert!(asset("/").is_some() && asset("/dashboard").is_some() && asset("/nope").is_none());
    }
}
