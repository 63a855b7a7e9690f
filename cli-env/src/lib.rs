//! How every holdfast binary starts ([`start`]: the aggregator, mobile-sim, the lab; the host
//! gateway, which logs on stdout, calls [`unset_empty_settings`] itself). One rule first: an
//! environment variable that holds a setting (`HOLDFAST_*`, `DATABASE_URL`) but is empty means
//! unset, as if it were not there.
//!
//! Why this is needed: clap's `#[arg(env = ...)]` takes an empty variable as a value. An empty
//! `DATABASE_URL` then becomes `Some("")` (a database URL that cannot be opened, instead of the
//! embedded store), and an empty `HOLDFAST_LISTEN` fails to parse as an address. Empty variables
//! are common: `DATABASE_URL= cmd`, a systemd `Environment=` line, a compose file's
//! `HOLDFAST_X: ${X}` with X unset. Clap has no setting to skip empty variables, so each binary
//! removes them from its own environment before it parses its command line, with
//! [`unset_empty_settings`], before any thread starts.

use std::ffi::{OsStr, OsString};

#[cfg(all(unix, feature = "signals"))]
mod signals;

#[cfg(all(unix, feature = "signals"))]
pub use signals::{Interrupt, Interrupts};
use std::time::Duration;

/// How every holdfast binary starts, first thing in `main`: the empty settings removed
/// ([`unset_empty_settings`]), then logging to stderr at `RUST_LOG`'s levels, or at
/// `default_level` (`info`, `warn`) when `RUST_LOG` is unset or unreadable.
pub fn start(default_level: &str) {
    unset_empty_settings();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Whether the variable `name` carries a holdfast setting.
pub fn is_setting(name: &OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name == b"DATABASE_URL" || name.starts_with(b"HOLDFAST_")
}

/// The names among `vars` that hold a setting and are empty.
pub fn empty_settings(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<OsString> {
    vars.into_iter()
        .filter(|(name, value)| value.is_empty() && is_setting(name))
        .map(|(name, _)| name)
        .collect()
}

/// Removes every empty setting variable from this process's environment (and so from its
/// children's); returns their names.
///
/// Call it first thing in `main`, before any other thread exists: changing the environment while
/// another thread may read it is not safe on every platform (glibc's `getenv` is not locked).
pub fn unset_empty_settings() -> Vec<OsString> {
    let names = empty_settings(std::env::vars_os());
    for name in &names {
        std::env::remove_var(name);
    }
    names
}

/// A duration as every binary's options take it: `250ms`, `10s`, `1.5s`, `5m`, `2h`, or a bare
/// number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{s:?}: expected a duration like 10s, 500ms, 5m"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A count as every binary's reports print it: 1234567 -> "1,234,567".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    fn vars(list: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        list.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect()
    }

    #[test]
    fn only_empty_settings_are_picked() {
        let found = empty_settings(vars(&[
            ("DATABASE_URL", ""),
            ("HOLDFAST_LISTEN", ""),
            ("HOLDFAST_WORKERS", "2"),
            ("DATABASE_URL_OTHER", ""),
            ("PATH", ""),
            ("XHOLDFAST_A", ""),
        ]));
        assert_eq!(found, vec![OsString::from("DATABASE_URL"), OsString::from("HOLDFAST_LISTEN")]);
    }

    #[test]
    fn the_environment_loses_empty_settings_only() {
        // This test binary is the only user of these names.
        std::env::set_var("HOLDFAST_CLI_ENV_TEST_EMPTY", "");
        std::env::set_var("HOLDFAST_CLI_ENV_TEST_SET", "x");
        let removed = unset_empty_settings();
        assert!(removed.contains(&OsString::from("HOLDFAST_CLI_ENV_TEST_EMPTY")));
        assert!(std::env::var_os("HOLDFAST_CLI_ENV_TEST_EMPTY").is_none());
        assert_eq!(std::env::var("HOLDFAST_CLI_ENV_TEST_SET").as_deref(), Ok("x"));
    }
}
