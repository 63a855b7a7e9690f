//! A test CA for the real binaries' TLS: the certificates an aggregator is started with
//! (`--tls-cert`, `--tls-key`) and the CA that gateways and clients pin, including chains a
//! verifier must refuse.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A self-signed CA that signs test certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// Where [`TestCa::write_files`] wrote the CA, a server certificate and its key.
pub struct PemFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// A certificate chain (leaf first) and the leaf's key, as PEM.
pub struct Served {
    pub chain_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("holdfast test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).expect("a CA").pem();
        Self { issuer: Issuer::new(params, key), pem }
    }

    /// The CA certificate (PEM): what clients pin.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for `names`, signed by this CA itself (not a CA).
    pub fn server(&self, names: &[&str]) -> Served {
        let (pem, key) = leaf(names, &self.issuer);
        Served { chain_pem: pem, key_pem: key.serialize_pem() }
    }

    /// TLS 1.3 configurations for a test of a TLS layer in memory: a client that trusts only this
    /// CA, and a server with a certificate for `names` signed by it (ring, as the binaries use).
    pub fn rustls_configs(
        &self,
        names: &[&str],
    ) -> (std::sync::Arc<rustls::ClientConfig>, std::sync::Arc<rustls::ServerConfig>) {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.pem.as_bytes()).expect("the CA")).expect("a root");
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let served = self.server(names);
        let chain = CertificateDer::pem_slice_iter(served.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("the chain");
        let key = PrivateKeyDer::from_pem_slice(served.key_pem.as_bytes()).expect("the key");
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("a server configuration");
        (std::sync::Arc::new(client), std::sync::Arc::new(server))
    }

    /// Writes this CA (`{name}-ca.pem`) and a server certificate for localhost and 127.0.0.1
    /// with its key (`{name}-server.pem`, `{name}-server.key`) into `dir`: for a server that
    /// reads PEM files (the Python peer) and a client given `--ca`.
    pub fn write_files(&self, dir: &std::path::Path, name: &str) -> PemFiles {
        let served = self.server(&["localhost", "127.0.0.1"]);
        let files = PemFiles {
            ca: dir.join(format!("{name}-ca.pem")),
            cert: dir.join(format!("{name}-server.pem")),
            key: dir.join(format!("{name}-server.key")),
        };
        std::fs::write(&files.ca, &self.pem).expect("the CA file");
        std::fs::write(&files.cert, served.chain_pem).expect("the certificate file");
        std::fs::write(&files.key, served.key_pem).expect("the key file");
        files
    }

    /// A server certificate for `names`, signed by this CA itself, that expired in 2021.
    pub fn server_expired(&self, names: &[&str]) -> Served {
        let mut params = leaf_params(names);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        Served { chain_pem: cert.pem(), key_pem: key.serialize_pem() }
    }

    /// A server certificate for `names` that this CA did not sign: it was signed by another
    /// certificate this CA issued to someone (not a CA). The chain holds both; a verifier that
    /// checks only signatures along the chain, not basicConstraints, accepts it.
    pub fn server_signed_by_a_leaf(&self, names: &[&str]) -> Served {
        let middle_key = KeyPair::generate().expect("a key");
        let middle_params = leaf_params(&["someone-else.example"]);
        let middle = middle_params.signed_by(&middle_key, &self.issuer).expect("a certificate");
        let middle_issuer = Issuer::new(middle_params, middle_key);
        let (pem, key) = leaf(names, &middle_issuer);
        Served { chain_pem: format!("{pem}{}", middle.pem()), key_pem: key.serialize_pem() }
    }
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("names");
    params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    params.is_ca = IsCa::ExplicitNoCa;
    params
}

fn leaf(names: &[&str], issuer: &Issuer<'_, KeyPair>) -> (String, KeyPair) {
    let key = KeyPair::generate().expect("a key");
    let cert = leaf_params(names).signed_by(&key, issuer).expect("a certificate");
    (cert.pem(), key)
}
