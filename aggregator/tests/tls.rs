//! TLS: the self-made CA and server certificate, and real handshakes over loopback.

use std::path::Path;
use std::sync::Arc;

use aggregator::tls::{server_config, TlsFiles};
use lean_tls::pinned::client_config;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const ALPN: &[u8] = b"holdfast-trunk/1";
/// TLS records as the aggregator sends them (the trunk protocol's contract).
const RECORD: usize = trunk::frame::MAX_SERVER_TLS_PLAINTEXT;

fn der(pem_path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(pem_path).unwrap().to_vec()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn self_made_certificates_are_made_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data"); // does not exist yet
    let files = TlsFiles::in_dir(&data);
    let (_, ca) = server_config(None, None, &data, &[], &[], RECORD).unwrap();
    assert_eq!(ca.as_deref(), Some(files.ca_cert.as_path()));
    let ca_bytes = std::fs::read(&files.ca_cert).unwrap();
    let server_bytes = std::fs::read(&files.cert).unwrap();
    let key_bytes = std::fs::read(&files.key).unwrap();
    let ca_key_bytes = std::fs::read(data.join("ca.key")).unwrap();
    #[cfg(unix)]
    {
        assert_eq!(mode(&data.join("ca.key")), 0o600);
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&files.ca_cert) & 0o077, 0o044, "certificates are public");
    }

    // Started again: everything reused.
    let (_, ca2) = server_config(None, None, &data, &[], &[], RECORD).unwrap();
    assert_eq!(ca2, ca);
    assert_eq!(std::fs::read(&files.ca_cert).unwrap(), ca_bytes);
    assert_eq!(std::fs::read(&files.cert).unwrap(), server_bytes);
    assert_eq!(std::fs::read(&files.key).unwrap(), key_bytes);

    // Extra names (a DNS name, an IP): a new server certificate, the same CA.
    let extra = vec!["agg.example.net".to_owned(), "10.1.2.3".to_owned()];
    server_config(None, None, &data, &extra, &[], RECORD).unwrap();
    assert_eq!(std::fs::read(&files.ca_cert).unwrap(), ca_bytes);
    assert_eq!(std::fs::read(data.join("ca.key")).unwrap(), ca_key_bytes);
    let server_bytes2 = std::fs::read(&files.cert).unwrap();
    assert_ne!(server_bytes2, server_bytes);
    // ... kept when the same names come again, or fewer (it still covers them).
    server_config(None, None, &data, &extra, &[], RECORD).unwrap();
    server_config(None, None, &data, &[], &[], RECORD).unwrap();
    assert_eq!(std::fs::read(&files.cert).unwrap(), server_bytes2);

    // A damaged server certificate is made again; the CA stays.
    std::fs::write(&files.cert, b"garbage").unwrap();
    server_config(None, None, &data, &[], &[], RECORD).unwrap();
    assert_eq!(std::fs::read(&files.ca_cert).unwrap(), ca_bytes);
    assert_ne!(std::fs::read(&files.cert).unwrap(), b"garbage");

    // No temporary files left behind.
    let mut names: Vec<String> =
        std::fs::read_dir(&data).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["ca.key", "ca.pem", "server.key", "server.pem"]);
}

#[test]
fn certificates_suit_embedded_clients() {
    let dir = tempfile::tempdir().unwrap();
    server_config(None, None, dir.path(), &[], &[], RECORD).unwrap();
    let files = TlsFiles::in_dir(dir.path());
    let ca = der(&files.ca_cert);
    let server = der(&files.cert);
    let ecdsa_with_sha256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let prime256v1 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    let basic_constraints = [0x06, 0x03, 0x55, 0x1d, 0x13];
    let ca_true_pathlen_0 = [0x30, 0x06, 0x01, 0x01, 0xff, 0x02, 0x01, 0x00];
    let server_auth = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    for cert in [&ca, &server] {
        assert!(contains(cert, &ecdsa_with_sha256), "signed with ECDSA SHA-256");
        assert!(contains(cert, &prime256v1), "a P-256 key");
        assert!(contains(cert, &basic_constraints));
    }
    assert!(contains(&ca, &ca_true_pathlen_0), "CA:TRUE, pathlen 0");
    assert!(contains(&server, &server_auth), "serverAuth extended key usage");
    assert!(!contains(&server, &ca_true_pathlen_0));
}

/// A TLS echo server on 127.0.0.1; the number of connections to serve is `n`.
async fn echo_server(config: Arc<rustls::ServerConfig>, n: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = [0u8; 64];
                let n = tls.read(&mut buf).await.unwrap();
                tls.write_all(&buf[..n]).await.unwrap();
                tls.shutdown().await.unwrap();
            });
        }
    });
    addr
}

async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

#[tokio::test]
async fn tls13_handshake_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = server_config(None, None, dir.path(), &["agg.test".into()], &[ALPN], RECORD).unwrap();
    let addr = echo_server(server, 3).await;
    // Without ALPN (the pinned configuration offers http/1.1, which this server does not speak).
    let mut client = (*client_config(&ca.unwrap()).unwrap()).clone();
    client.alpn_protocols.clear();
    let client = Arc::new(client);
    let mut with_alpn = (*client).clone();
    with_alpn.alpn_protocols = vec![ALPN.to_vec()];
    let with_alpn = Arc::new(with_alpn);

    for (config, name) in [(&client, "localhost"), (&with_alpn, "127.0.0.1"), (&client, "agg.test")] {
        let mut tls = connect(config.clone(), addr, name).await.unwrap();
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        if Arc::ptr_eq(config, &with_alpn) {
            assert_eq!(conn.alpn_protocol(), Some(ALPN));
        }
        tls.write_all(b"hello holdfast").await.unwrap();
        let mut back = Vec::new();
        tls.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello holdfast");
    }
}

#[tokio::test]
async fn a_client_trusting_another_ca_fails() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (server, _) = server_config(None, None, dir.path(), &[], &[], RECORD).unwrap();
    let (_, other_ca) = server_config(None, None, other.path(), &[], &[], RECORD).unwrap();
    let addr = echo_server(server, 1).await;
    let err = connect(client_config(&other_ca.unwrap()).unwrap(), addr, "localhost").await.unwrap_err();
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_name_the_certificate_lacks_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = server_config(None, None, dir.path(), &[], &[], RECORD).unwrap();
    let addr = echo_server(server, 1).await;
    assert!(connect(client_config(&ca.unwrap()).unwrap(), addr, "elsewhere.test").await.is_err());
}

#[tokio::test]
async fn a_tls12_only_client_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca) = server_config(None, None, dir.path(), &[], &[], RECORD).unwrap();
    let addr = echo_server(server, 1).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca.unwrap()).unwrap()).unwrap();
    let tls12 =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let err = connect(Arc::new(tls12), addr, "localhost").await.expect_err("a TLS 1.2 client gets in");
    // Any failure is not enough (a refused TCP connection, a certificate error): the server must
    // have refused the protocol version itself, with the protocol_version alert. tokio-rustls
    // carries the TLS error inside the io::Error.
    let tls_err = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    assert!(
        matches!(tls_err, Some(rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion))),
        "expected the server to refuse TLS 1.2 with a protocol_version alert, got {err:?}"
    );
}

#[tokio::test]
async fn certificates_from_files() {
    // Production: the certificate and key are given (here: the self-made ones, copied).
    let made = tempfile::tempdir().unwrap();
    server_config(None, None, made.path(), &[], &[], RECORD).unwrap();
    let files = TlsFiles::in_dir(made.path());
    let prod = tempfile::tempdir().unwrap();
    let (cert, key) = (prod.path().join("fullchain.pem"), prod.path().join("privkey.pem"));
    std::fs::copy(&files.cert, &cert).unwrap();
    std::fs::copy(&files.key, &key).unwrap();
    let data = prod.path().join("data");

    let (server, ca) = server_config(Some(&cert), Some(&key), &data, &[], &[], RECORD).unwrap();
    assert_eq!(ca, None);
    assert!(!data.join("ca.pem").exists(), "nothing self-made when files are given");
    let addr = echo_server(server, 1).await;
    let mut tls = connect(client_config(&files.ca_cert).unwrap(), addr, "localhost").await.unwrap();
    tls.write_all(b"x").await.unwrap();
    let mut back = Vec::new();
    tls.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"x");

    // Half a pair, a key that is not the certificate's, or a missing file: errors.
    assert!(server_config(Some(&cert), None, &data, &[], &[], RECORD).is_err());
    assert!(server_config(None, Some(&key), &data, &[], &[], RECORD).is_err());
    let other = tempfile::tempdir().unwrap();
    server_config(None, None, other.path(), &[], &[], RECORD).unwrap();
    let other_key = TlsFiles::in_dir(other.path()).key;
    assert!(server_config(Some(&cert), Some(&other_key), &data, &[], &[], RECORD).is_err());
    assert!(
        server_config(Some(&prod.path().join("missing.pem")), Some(&key), &data, &[], &[], RECORD).is_err()
    );
    assert!(client_config(&key).is_err(), "a key is no CA certificate");
}

#[test]
fn invalid_extra_names_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(server_config(None, None, dir.path(), &["not a name".into()], &[], RECORD).is_err());
    // Blanks and duplicates are ignored.
    server_config(None, None, dir.path(), &[" ".into(), "localhost".into(), "::1".into()], &[], RECORD)
        .unwrap();
}
