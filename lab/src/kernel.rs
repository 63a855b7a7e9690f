//! The kernel settings a run at size needs: the deployment's own file
//! (deploy/sysctl/99-holdfast.conf, compiled in, so the lab and a real machine use the same
//! list), read from /proc/sys, applied when the lab runs as root, and reported either way.

use std::fs;
use std::path::PathBuf;

use serde::Serialize;

/// deploy/sysctl/99-holdfast.conf, as installed on a real machine.
pub const DEPLOY_SYSCTL: &str = include_str!("../../deploy/sysctl/99-holdfast.conf");

/// One `key = value` line of a sysctl.d file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub key: String,
    pub value: String,
    /// A leading `-`: the key may be missing (a module not loaded).
    pub optional: bool,
}

/// The `key = value` lines of a sysctl.d file (comments and blank lines skipped).
pub fn parse(file: &str) -> Vec<Wanted> {
    file.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (key, value) = l.split_once('=')?;
            let key = key.trim();
            let (key, optional) = match key.strip_prefix('-') {
                Some(k) => (k, true),
                None => (key, false),
            };
            Some(Wanted { key: key.to_owned(), value: normalise(value), optional })
        })
        .collect()
}

fn normalise(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// What happened to one setting.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub wanted: String,
    /// Before the lab touched it (`None`: this kernel has no such key).
    pub was: Option<String>,
    pub now: Option<String>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Already as wanted (or a limit already higher).
    Kept,
    /// Written by the lab.
    Applied,
    /// Differs, and the lab is not root: left as it is.
    NotRoot,
    /// Writing it failed (a container's read-only /proc/sys).
    Refused,
    /// This kernel has no such key.
    Missing,
}

/// Whether `now` already gives what `wanted` asks: lists must match; a single number is a limit
/// or a ceiling that a machine may already have set higher, and the lab never lowers it.
fn satisfied(now: &str, wanted: &str) -> bool {
    match (now.parse::<u64>(), wanted.parse::<u64>()) {
        (Ok(n), Ok(w)) => n >= w,
        _ => normalise(now) == wanted,
    }
}

/// Reads every wanted setting and, when `apply`, writes those that fall short.
pub fn settle(wanted: &[Wanted], apply: bool) -> Vec<Setting> {
    wanted
        .iter()
        .map(|w| {
            let p = path(&w.key);
            let was = fs::read_to_string(&p).ok().map(|v| normalise(&v));
            let outcome = match &was {
                None => Outcome::Missing,
                Some(now) if satisfied(now, &w.value) => Outcome::Kept,
                Some(_) if !apply => Outcome::NotRoot,
                Some(_) => match fs::write(&p, &w.value) {
                    Ok(()) => Outcome::Applied,
                    Err(_) => Outcome::Refused,
                },
            };
            let now = fs::read_to_string(&p).ok().map(|v| normalise(&v));
            Setting { key: w.key.clone(), wanted: w.value.clone(), was, now, outcome }
        })
        .collect()
}

/// Whether this process runs as root (and so may write /proc/sys).
pub fn is_root() -> bool {
    // SAFETY: geteuid only reads this process's credentials.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployment_file_parses() {
        let wanted = parse(DEPLOY_SYSCTL);
        let somaxconn = wanted.iter().find(|w| w.key == "net.core.somaxconn").unwrap();
        assert_eq!(somaxconn.value, "65535");
        let range = wanted.iter().find(|w| w.key == "net.ipv4.ip_local_port_range").unwrap();
        assert_eq!(range.value, "1024 65535");
        assert!(wanted.iter().any(|w| w.optional && w.key == "net.netfilter.nf_conntrack_max"));
        assert!(wanted.len() >= 10);
    }

    #[test]
    fn limits_are_never_lowered_and_lists_must_match() {
        assert!(satisfied("9223372036854775807", "4194304"));
        assert!(!satisfied("4096", "65535"));
        assert!(satisfied("4096\t16384  4194304", "4096 16384 4194304"));
        assert!(!satisfied("32768 60999", "1024 65535"));
    }

    #[test]
    fn reading_without_writing() {
        let wanted = parse("net.core.somaxconn = 1\n-no.such.key = 3\n");
        let s = settle(&wanted, false);
        assert_eq!(s[0].outcome, Outcome::Kept);
        assert_eq!(s[1].outcome, Outcome::Missing);
    }
}
