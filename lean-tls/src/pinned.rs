//! The one TLS client configuration every holdfast client uses: TLS 1.3 only, with the ring
//! provider (what the binaries build with), trusting only the CA certificate(s) of a PEM file
//! (pinning: a client never talks to something a public CA vouched for by accident). mobile-sim's
//! phones and verification, the lab's metrics scrapes, and the tests use it.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// A client configuration whose only roots are the certificates in the PEM file `ca_pem`, with
/// ALPN `http/1.1` (WebSocket upgrades and HTTP requests are HTTP/1.1). Fails, naming the file,
/// when it cannot be read, holds no certificate, or one is not usable as a root.
pub fn client_config(ca_pem: &Path) -> io::Result<Arc<ClientConfig>> {
    let named = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}: {e}", ca_pem.display()))
    };
    let certs = CertificateDer::pem_file_iter(ca_pem).map_err(|e| named("cannot be read", &e))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        let cert = cert.map_err(|e| named("not PEM", &e))?;
        roots.add(cert).map_err(|e| named("not a usable CA certificate", &e))?;
    }
    if roots.is_empty() {
        return Err(named("no certificate in the file", &"empty"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| named("TLS 1.3 with the ring provider", &e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_file_of_certificates_is_a_pin() {
        let dir = std::env::temp_dir().join(format!("lean-tls-pinned-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = testkit::pki::TestCa::new("pinned");
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let config = client_config(&good).expect("a CA file");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = client_config(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem: no certificate in the file"), "{e}");
        let missing = client_config(&dir.join("missing.pem")).unwrap_err().to_string();
        assert!(missing.contains("missing.pem: cannot be read"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
