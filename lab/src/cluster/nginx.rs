//! nginx in front of the cluster's aggregators: deploy/nginx's templates filled in for this
//! cluster (the same files a server uses; compiled into the lab, so what runs is what is
//! checked), `nginx -t`, and nginx started with a prefix of its own as the invoking user.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::cluster::TlsMode;

/// deploy/nginx/holdfast-tls.conf.in: nginx terminates TLS 1.3, aggregators run `--plain`.
pub const TERMINATE_TEMPLATE: &str = include_str!("../../../deploy/nginx/holdfast-tls.conf.in");
/// deploy/nginx/holdfast-passthrough.conf.in: nginx passes TCP through, aggregators serve TLS.
pub const PASSTHROUGH_TEMPLATE: &str = include_str!("../../../deploy/nginx/holdfast-passthrough.conf.in");

/// Files and descriptors nginx keeps for itself (logs, listeners) within its open-file limit.
const NGINX_SPARE_FILES: u64 = 256;

/// The values a template's `@NAME@` placeholders take.
#[derive(Debug, Clone)]
pub struct Values {
    /// nginx's prefix (pid, logs, temporary files).
    pub prefix: PathBuf,
    pub listen: SocketAddr,
    /// Another listen address for each listen line (LAN mode: a real phone on the network).
    pub lan_listen: Option<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub aggregators: Vec<SocketAddr>,
    pub worker_processes: u32,
    /// Open files a worker may hold (its hard limit).
    pub worker_rlimit_nofile: u64,
    /// Where nginx's dynamic modules are (the stream module for passthrough).
    pub modules: PathBuf,
}

impl Values {
    /// For this process's open-file limit and Debian's module folder.
    pub fn new(
        prefix: &Path,
        listen: SocketAddr,
        cert: &Path,
        key: &Path,
        aggregators: Vec<SocketAddr>,
    ) -> Values {
        Values {
            prefix: prefix.to_owned(),
            listen,
            lan_listen: None,
            cert: cert.to_owned(),
            key: key.to_owned(),
            aggregators,
            worker_processes: 1,
            worker_rlimit_nofile: hard_files_limit(),
            modules: PathBuf::from("/usr/lib/nginx/modules"),
        }
    }
}

/// The hard limit of open files (what nginx may raise its own to).
fn hard_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if !ok || limit.rlim_max == libc::RLIM_INFINITY {
        1_048_576
    } else {
        limit.rlim_max
    }
}

/// The template for a TLS mode.
pub fn template(tls: TlsMode) -> &'static str {
    match tls {
        TlsMode::Terminate => TERMINATE_TEMPLATE,
        TlsMode::Passthrough => PASSTHROUGH_TEMPLATE,
    }
}

/// Fills in `template`: a line holding `@AGGREGATOR@` is repeated once per aggregator, a
/// `listen @LISTEN@` line once more for the LAN address (not 0.0.0.0, which would collide with
/// the aggregators on 127.0.1.i at the same port). Refuses to leave a placeholder unfilled
/// outside comments.
pub fn render(template: &str, v: &Values) -> anyhow::Result<String> {
    // Every proxied connection needs two files; leave room for logs and listeners.
    let connections = v.worker_rlimit_nofile.saturating_sub(NGINX_SPARE_FILES);
    let fill = |line: &str| -> String {
        line.replace("@PREFIX@", &v.prefix.display().to_string())
            .replace("@LISTEN@", &v.listen.to_string())
            .replace("@SERVER_NAME@", "localhost")
            .replace("@CERT@", &v.cert.display().to_string())
            .replace("@KEY@", &v.key.display().to_string())
            .replace("@WORKER_RLIMIT_NOFILE@", &v.worker_rlimit_nofile.to_string())
            .replace("@WORKER_CONNECTIONS@", &connections.to_string())
            .replace("@WORKER_PROCESSES@", &v.worker_processes.to_string())
            .replace("@MODULES@", &v.modules.display().to_string())
    };
    let mut out = String::with_capacity(template.len() + 256);
    for line in template.lines() {
        if let Some(lan) = v.lan_listen {
            if line.trim_start().starts_with("listen @LISTEN@") {
                out.push_str(&fill(&line.replace("@LISTEN@", &lan.to_string())));
                out.push('\n');
            }
        }
        if line.contains("@AGGREGATOR@") {
            for a in &v.aggregators {
                out.push_str(&fill(&line.replace("@AGGREGATOR@", &a.to_string())));
                out.push('\n');
            }
            continue;
        }
        out.push_str(&fill(line));
        out.push('\n');
    }
    let left: Vec<&str> = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split('@').skip(1).step_by(2))
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    if !left.is_empty() {
        bail!("unfilled placeholders: {}", left.join(" "));
    }
    Ok(out)
}

/// The nginx binary (PATH, else Debian's /usr/sbin/nginx).
pub fn binary() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file());
    match on_path.or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file())) {
        Some(p) => Ok(p),
        None => bail!("nginx is not installed: run scripts/install-deps.sh"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> Values {
        let mut v = Values::new(
            Path::new("/tmp/c/nginx"),
            "127.0.0.1:8443".parse().unwrap(),
            Path::new("/tmp/c/pki/server.pem"),
            Path::new("/tmp/c/pki/server.key"),
            vec!["127.0.1.1:8443".parse().unwrap(), "127.0.1.2:8443".parse().unwrap()],
        );
        v.worker_rlimit_nofile = 20_000;
        v
    }

    #[test]
    fn both_templates_fill_completely_with_one_upstream_line_per_aggregator() {
        for tls in [TlsMode::Terminate, TlsMode::Passthrough] {
            let conf = render(template(tls), &values()).unwrap();
            assert_eq!(conf.matches("server 127.0.1.").count(), 2, "{tls:?}");
            assert!(conf.contains("worker_connections 19744;"), "{tls:?}");
            assert!(conf.contains("listen 127.0.0.1:8443"), "{tls:?}");
            assert!(conf.contains("pid /tmp/c/nginx/nginx.pid;"), "{tls:?}");
        }
    }

    #[test]
    fn lan_mode_listens_twice() {
        let mut v = values();
        v.lan_listen = Some("192.168.1.20:8443".parse().unwrap());
        let conf = render(TERMINATE_TEMPLATE, &v).unwrap();
        assert!(conf.contains("listen 192.168.1.20:8443 ssl;"));
        assert!(conf.contains("listen 127.0.0.1:8443 ssl;"));
    }

    #[test]
    fn an_unknown_placeholder_is_refused() {
        let err = render("worker_processes @WORKERS@;\n# @IN_A_COMMENT@\n", &values()).unwrap_err();
        assert_eq!(err.to_string(), "unfilled placeholders: WORKERS");
    }
}
