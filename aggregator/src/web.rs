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

/// Headers of every page: the phone page's policy (the gateways serve the same page with it).
pub const CONTENT_SECURITY_POLICY: &str = trunk::phone::PAGE_CONTENT_SECURITY_POLICY;

/// Who may read the dashboard's data and `/api/devices`: requests carrying the token, always.
///
/// There is no open mode, not even on a loopback listener: behind a TLS-passthrough proxy (the
/// documented deployment, deploy/nginx/holdfast-passthrough.conf.in) a loopback listener serves
/// the world. Without `--dashboard-token` the aggregator makes one for the run
/// ([`make_token_if_unset`]) and prints the dashboard's address with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    token: String,
}

/// Sets a random dashboard token (128 bits, hex) when none was given; whether it made one (then
/// the start-up message prints it: nobody else knows it).
pub fn make_token_if_unset(s: &mut Settings) -> bool {
    if !s.dashboard_token.is_empty() {
        return false;
    }
    s.dashboard_token = format!("{:032x}", rand::random::<u128>());
    true
}

impl Access {
    /// The rule for these settings ([`make_token_if_unset`] must have run: an empty token, which
    /// only a caller that skipped it can have, lets nobody in).
    pub fn of(s: &Settings) -> Access {
        Access { token: s.dashboard_token.clone() }
    }

    /// Whether `req` may read; otherwise the status and the reason to answer.
    pub fn check<B>(&self, req: &Request<B>) -> Result<(), (http::StatusCode, &'static str)> {
        let bearer = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let given = bearer.or_else(|| crate::request::query_param(req.uri().query(), "token"));
        match given {
            Some(given)
                if !self.token.is_empty()
                    && crate::request::constant_time_eq(given.as_bytes(), self.token.as_bytes()) =>
            {
                Ok(())
            }
            _ => Err((http::StatusCode::UNAUTHORIZED, "token required")),
        }
    }
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
    fn without_a_token_one_is_made_for_the_run_whatever_the_listener() {
        for args in [&["--listen", "127.0.0.1:1"][..], &["--listen", "0.0.0.0:1", "--plain"][..]] {
            let mut s = settings(args);
            assert!(make_token_if_unset(&mut s));
            assert_eq!(s.dashboard_token.len(), 32);
            let a = Access::of(&s);
            // A loopback TLS listener is no exception: behind a passthrough proxy it serves anyone.
            assert_eq!(a.check(&request("/api/dashboard", None)).unwrap_err().0, 401, "{args:?}");
            assert!(a.check(&request(&format!("/api/devices?token={}", s.dashboard_token), None)).is_ok());
        }
        let mut given = settings(&["--dashboard-token", "s3cret"]);
        assert!(!make_token_if_unset(&mut given));
        assert_eq!(given.dashboard_token, "s3cret");
        // Settings that skipped it let nobody in, not everybody.
        let unset = Access::of(&settings(&[]));
        assert_eq!(unset.check(&request("/api/dashboard?token=", None)).unwrap_err().0, 401);
        assert_eq!(unset.check(&request("/api/dashboard", Some(""))).unwrap_err().0, 401);
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
