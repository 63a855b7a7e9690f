//! TLS for the aggregator's listeners: TLS 1.3 only, rustls with the ring provider.
//!
//! In production the certificate and key come from PEM files. Without them the aggregator makes
//! its own, once, in its data folder: a local CA (`ca.pem`, `ca.key`) and a server certificate it
//! signs (`server.pem`, `server.key`), for `localhost`, `127.0.0.1`, `::1` and any extra names.
//! Clients (mobile-sim, tests, gateways on a host) trust `ca.pem` through `lean_tls::pinned::client_config`.
//!
//! Everything is ECDSA P-256 with SHA-256, which the firmware's TLS stack (embedded-tls) speaks:
//! the CA has `basicConstraints CA:TRUE` (path length 0) and `keyCertSign`, the server
//! certificate `CA:FALSE`, `digitalSignature` and the `serverAuth` extended key usage.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{RootCertStore, ServerConfig};

/// Where the self-made certificates live in a data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The local CA's certificate: what clients trust.
    pub ca_cert: PathBuf,
    /// The server certificate (signed by the CA).
    pub cert: PathBuf,
    /// The server certificate's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The self-made files' paths in `data_dir` (the CA's key is `ca.key` next to `ca.pem`).
    pub fn in_dir(data_dir: &Path) -> TlsFiles {
        TlsFiles {
            ca_cert: data_dir.join("ca.pem"),
            cert: data_dir.join("server.pem"),
            key: data_dir.join("server.key"),
        }
    }
}

/// The names every self-made server certificate covers.
const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// The local CA's subject (the issuer of the server certificates it signs).
const CA_COMMON_NAME: &str = "holdfast local CA";
const SERVER_COMMON_NAME: &str = "holdfast aggregator";
/// The CA's validity, in years from January 1st of last year.
const CA_YEARS: i32 = 30;
/// The server certificate's validity from a day ago: iOS refuses server certificates valid for
/// more than 825 days, even from a CA the user installed (a phone on `--lan`).
const SERVER_DAYS: u64 = 800;
/// A server certificate that expires within this long is made again at start.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server configuration: TLS 1.3 only, the ring provider, ALPN protocols `alpn` (in
/// order of preference; empty: no ALPN), records of at most `record_plaintext` bytes of
/// plaintext (the trunk protocol's contract with gateways: [`trunk::frame::MAX_SERVER_TLS_PLAINTEXT`]).
///
/// With `cert` and `key` (PEM: the certificate chain, leaf first, and its private key) these are
/// loaded, and the second value is `None`. With neither, the self-made certificates in `data_dir`
/// are used, made on first use (see the module documentation), and the second value is the CA
/// certificate's path. A server certificate that does not cover `extra_sans` (DNS names or IP
/// addresses), is expired, or was not signed by the CA is made again; the CA is kept.
pub fn server_config(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
    extra_sans: &[String],
    alpn: &[&[u8]],
    record_plaintext: usize,
) -> anyhow::Result<(Arc<ServerConfig>, Option<PathBuf>)> {
    let (chain, private_key, ca) = match (cert, key) {
        (Some(cert), Some(key)) => (load_certs(cert)?, load_key(key)?, None),
        (None, None) => {
            let (chain, key) = self_made(data_dir, extra_sans)?;
            (chain, key, Some(TlsFiles::in_dir(data_dir).ca_cert))
        }
        _ => {
            anyhow::bail!("a TLS certificate needs its key, and a key its certificate: give both or neither")
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .context("the TLS certificate and key do not go together")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // rustls counts the record's 5-byte header in its limit.
    config.max_fragment_size = Some(record_plaintext + 5);
    Ok((Arc::new(config), ca))
}

fn root_store(ca_pem: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_pem)? {
        roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", ca_pem.display()))?;
    }
    Ok(roots)
}

/// The certificates in a PEM file (at least one).
fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate in the file", path.display());
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading a private key from {}", path.display()))
}

/// The self-made CA and server certificate in `data_dir`, made or remade as [`server_config`]
/// would (`aggregator certificate`: for a front that terminates TLS with them).
pub fn self_made_files(data_dir: &Path, extra_sans: &[String]) -> anyhow::Result<TlsFiles> {
    self_made(data_dir, extra_sans)?;
    Ok(TlsFiles::in_dir(data_dir))
}

/// The self-made server certificate chain and key in `data_dir`, made or remade as needed.
fn self_made(
    data_dir: &Path,
    extra_sans: &[String],
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let files = TlsFiles::in_dir(data_dir);
    let ca_key_path = data_dir.join("ca.key");
    let names = san_list(extra_sans)?;

    if !files.ca_cert.exists() {
        // No CA certificate: nobody can trust this CA yet, so (re)making it loses nothing.
        tracing::info!(ca = %files.ca_cert.display(), "making a local TLS certificate authority");
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let ca_cert = ca_params().self_signed(&ca_key)?;
        write_file(&ca_key_path, ca_key.serialize_pem().as_bytes(), true)?;
        write_file(&files.ca_cert, ca_cert.pem().as_bytes(), false)?;
    }
    let roots = Arc::new(root_store(&files.ca_cert)?);

    match current_server_cert(&files, &roots, &names) {
        Ok(found) => return Ok(found),
        Err(why) => {
            tracing::info!(cert = %files.cert.display(), "making a TLS server certificate: {why:#}")
        }
    }

    let ca_key_pem = fs::read_to_string(&ca_key_path).with_context(|| {
        format!(
            "the server certificate must be made again, but the CA's key {} cannot be read",
            ca_key_path.display()
        )
    })?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("{}: not a private key", ca_key_path.display()))?;
    anyhow::ensure!(
        ca_key.algorithm() == &PKCS_ECDSA_P256_SHA256,
        "{}: not an ECDSA P-256 key",
        ca_key_path.display()
    );
    let issuer = Issuer::new(ca_params(), ca_key);

    let mut params = CertificateParams::new(names.clone()).context("invalid TLS server name")?;
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(86_400)).into();
    params.not_after = (now + Duration::from_secs(SERVER_DAYS * 86_400)).into();
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::CommonName, SERVER_COMMON_NAME);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let server_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let server_cert = params.signed_by(&server_key, &issuer)?;
    write_file(&files.key, server_key.serialize_pem().as_bytes(), true)?;
    write_file(&files.cert, server_cert.pem().as_bytes(), false)?;

    current_server_cert(&files, &roots, &names).with_context(|| {
        format!(
            "the new server certificate does not verify against {}: were {} and {} made by holdfast? \
             Delete them to make a new CA, or give a certificate and key",
            files.ca_cert.display(),
            files.ca_cert.display(),
            ca_key_path.display()
        )
    })
}

/// The local CA's parameters. They are rebuilt from scratch when it signs again (its subject and
/// key identifier follow from these constants and its key), so no certificate parser is needed.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    set_validity(&mut params, CA_YEARS);
    params.distinguished_name.remove(DnType::CommonName);
    params.distinguished_name.push(DnType::OrganizationName, "holdfast");
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// Valid from January 1st of last year, for `years` years.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Mean Gregorian year: good enough to land within a day of the truth.
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year - 1 + years, 1, 1);
}

/// `localhost`, `127.0.0.1`, `::1` and `extra`, without duplicates or blanks.
fn san_list(extra: &[String]) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for name in extra.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_owned());
        }
    }
    for name in &names {
        check_name(name)?;
    }
    Ok(names)
}

/// The name a client would connect with to check `san` (a wildcard: some name under it).
fn check_name(san: &str) -> anyhow::Result<ServerName<'static>> {
    let name = match san.strip_prefix("*.") {
        Some(rest) => format!("x.{rest}"),
        None => san.to_owned(),
    };
    ServerName::try_from(name).map_err(|e| anyhow::anyhow!("invalid TLS server name {san:?}: {e}"))
}

/// The server certificate and key in `files` if they go together, verify against the CA in
/// `roots` now and for [`RENEW_BEFORE`], and cover all `names`; otherwise why not.
fn current_server_cert(
    files: &TlsFiles,
    roots: &Arc<RootCertStore>,
    names: &[String],
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    anyhow::ensure!(files.cert.exists() && files.key.exists(), "none yet");
    let chain = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
        .context("the key does not match the certificate")?;
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider()).build()?;
    // Valid now and for RENEW_BEFORE more: a certificate about to expire is replaced at start.
    let now = UnixTime::since_unix_epoch(
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default() + RENEW_BEFORE,
    );
    for name in names {
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &check_name(name)?, &[], now)
            .with_context(|| format!("it does not verify for {name:?}"))?;
    }
    Ok((chain, key))
}

/// Writes `contents` to `path` atomically (a temporary file renamed over it), synced; `private`:
/// readable by the owner only (0600).
fn write_file(path: &Path, contents: &[u8], private: bool) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.{:016x}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(if private { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = private;
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}
