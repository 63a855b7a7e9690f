//! TLS for wss:// targets and https:// verification: TLS 1.3 only, trusting only the CA given with
//! `--ca` (pinning), so a load test can never end up talking to something else by accident.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// A client configuration whose only roots are the certificates in the PEM file `ca`.
pub fn client_config(ca: &Path) -> anyhow::Result<Arc<ClientConfig>> {
    let certs =
        CertificateDer::pem_file_iter(ca).with_context(|| format!("opening --ca {}", ca.display()))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        let cert = cert.with_context(|| format!("reading --ca {}", ca.display()))?;
        roots.add(cert).with_context(|| format!("--ca {}: not a usable CA certificate", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("--ca {}: no PEM certificate in the file", ca.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // WebSocket upgrades and the verification GET are HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
