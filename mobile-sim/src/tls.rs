//! TLS for wss:// targets and https:// verification: TLS 1.3 only, trusting only the CA given with
//! `--ca` (pinning), so a load test can never end up talking to something else by accident.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::ClientConfig;

/// A client configuration whose only roots are the certificates in the PEM file `ca`
/// (`lean_tls::pinned`, the one every holdfast client uses).
pub fn client_config(ca: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    lean_tls::pinned::client_config(ca).with_context(|| format!("--ca {}", ca.display()))
}

/// The configuration for `--ca` when any URL in `urls` needs TLS; an error if one does and no CA
/// was given.
pub fn for_urls<'a>(
    ca: Option<&Path>,
    mut urls: impl Iterator<Item = &'a str>,
) -> anyhow::Result<Option<Arc<ClientConfig>>> {
    let needs_tls = urls.any(|u| {
        let u = u.trim().to_ascii_lowercase();
        u.starts_with("wss://") || u.starts_with("https://")
    });
    match (ca, needs_tls) {
        (Some(ca), _) => client_config(ca).map(Some),
        (None, true) => {
            bail!("wss:// and https:// need --ca FILE: the CA the server's certificate chains to")
        }
        (None, false) => Ok(None),
    }
}
