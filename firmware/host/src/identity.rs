//! The gateway's identity and trunk settings, from flags or a provisioning block; and writing
//! such a block for a board.

use std::path::Path;

use anyhow::{bail, Context, Result};
use gateway_core::provision::Provisioning;
use rand_core::{OsRng, RngCore};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::CertificateDer;

use crate::cli::{Identity, Provision};

/// Everything a gateway is provisioned with, owned.
#[derive(Debug, Clone)]
pub struct Provisioned {
    pub gateway_id: String,
    pub secret: Vec<u8>,
    pub ca_der: Vec<u8>,
    pub aggregator: std::net::SocketAddr,
    pub server_name: String,
    pub links: u8,
    /// The operator's device-token public key, if given.
    pub device_key: Option<[u8; 32]>,
}

impl Provisioned {
    /// Flags over a provisioning block over defaults.
    pub fn resolve(flags: &Identity) -> Result<Self> {
        let block = match &flags.provisioning {
            Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
            None => None,
        };
        let from_block = match &block {
            Some(bytes) => {
                Some(Provisioning::parse(bytes).map_err(|e| anyhow::anyhow!("provisioning block: {e:?}"))?)
            }
            None => None,
        };
        let gateway_id = match (&flags.id, &from_block) {
            (Some(id), _) => id.clone(),
            (None, Some(p)) => p.gateway_id.to_owned(),
            (None, None) => bail!("--id (or HOLDFAST_GATEWAY_ID, or --provisioning) is required"),
        };
        let secret = match (&flags.secret, &flags.secret_file, &from_block) {
            (Some(hex), _, _) => decode_hex(hex).context("--secret must be hex")?,
            (None, Some(path), _) => {
                let hex =
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                decode_hex(&hex).with_context(|| format!("{} must hold the secret's hex", path.display()))?
            }
            (None, None, Some(p)) => p.secret.to_vec(),
            (None, None, None) => {
                bail!("--secret-file (or --secret, HOLDFAST_GATEWAY_SECRET, or --provisioning) is required")
            }
        };
        let ca_der = match (&flags.ca, &from_block) {
            (Some(path), _) => read_ca(path)?,
            (None, Some(p)) => p.ca_der.to_vec(),
            (None, None) => bail!("--ca (the aggregator's CA certificate, PEM) is required"),
        };
        Ok(Self {
            gateway_id,
            secret,
            ca_der,
            aggregator: match (&flags.aggregator, &from_block) {
                (Some(address), _) => resolve_address(address)?,
                (None, Some(p)) => p.aggregator,
                (None, None) => std::net::SocketAddr::from(([127, 0, 0, 1], 8443)),
            },
            server_name: flags
                .server_name
                .clone()
                .or(from_block.map(|p| p.server_name.to_owned()))
                .unwrap_or_else(|| "localhost".into()),
            links: flags.links.or(from_block.map(|p| p.links)).unwrap_or(2),
            device_key: match (&flags.device_public_key, &from_block) {
                (Some(hex), _) => Some(
                    device_token::PublicKey::from_hex(hex)
                        .context("--device-public-key must be an Ed25519 public key, 64 hex digits")?
                        .to_bytes(),
                ),
                (None, Some(p)) => p.device_key,
                (None, None) => None,
            },
        })
    }
}

/// `gateway provision`: writes a block a board reads from its provisioning sector.
pub fn write_block(args: &Provision) -> Result<()> {
    let p = Provisioned::resolve(&args.identity)?;
    let mut seed = [0u8; 32];
    if args.seed {
        OsRng.fill_bytes(&mut seed);
    }
    let block = Provisioning {
        gateway_id: &p.gateway_id,
        secret: &p.secret,
        aggregator: p.aggregator,
        server_name: &p.server_name,
        ca_der: &p.ca_der,
        seed: if args.seed { &seed } else { &[] },
        links: p.links,
        device_key: p.device_key,
    };
    let mut out = vec![0u8; 16 * 1024];
    let n = block.write(&mut out).map_err(|e| anyhow::anyhow!("provisioning block: {e:?}"))?;
    write_private(&args.output, &out[..n]).with_context(|| format!("writing {}", args.output.display()))?;
    println!("wrote {} ({n} bytes) for gateway {} -> {}", args.output.display(), p.gateway_id, p.aggregator);
    if p.device_key.is_none() {
        println!("no --device-public-key: this board will not ask phones to prove their device");
    }
    Ok(())
}

fn read_ca(path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let cert = CertificateDer::pem_slice_iter(&pem)
        .next()
        .with_context(|| format!("no certificate in {}", path.display()))?
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    Ok(cert.to_vec())
}

/// `HOST:PORT` to one address: an IP as it is, a name resolved now (the first address the
/// resolver gives; the board's provisioning block holds an IP, so a name is resolved here).
fn resolve_address(address: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs as _;
    if let Ok(ip) = address.parse() {
        return Ok(ip);
    }
    address
        .to_socket_addrs()
        .with_context(|| format!("--aggregator {address:?}: expected HOST:PORT"))?
        .next()
        .with_context(|| format!("--aggregator {address:?}: the name has no address"))
}

/// Writes `bytes` to a new file only its owner may read (it holds the gateway's secret).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode: make it private too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(bytes)
}

fn decode_hex(hex: &str) -> Result<Vec<u8>> {
    let hex = hex.trim();
    if !hex.is_ascii() {
        bail!("not a hex digit");
    }
    if hex.len() % 2 != 0 {
        bail!("odd number of hex digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).context("not a hex digit"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn hex() {
        assert_eq!(super::decode_hex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(super::decode_hex("0").is_err());
        assert!(super::decode_hex("zz").is_err());
        assert!(super::decode_hex("é0").is_err(), "not a panic on a char boundary");
    }

    #[test]
    fn the_aggregator_may_be_a_name() {
        assert_eq!(super::resolve_address("10.1.2.3:443").unwrap(), "10.1.2.3:443".parse().unwrap());
        assert!(super::resolve_address("localhost:8443").unwrap().ip().is_loopback());
        assert!(super::resolve_address("localhost").is_err(), "no port");
        assert!(super::resolve_address("no-such-host.invalid:443").is_err());
    }

    #[test]
    fn the_secret_comes_from_a_file_and_blocks_are_private() {
        use clap::Parser as _;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "00ff10\n").unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let block = dir.path().join("block.bin");
        std::fs::write(&block, b"old").unwrap(); // an existing file made public
        let args = [
            "gateway",
            "provision",
            "--id",
            "site-1",
            "--secret-file",
            secret.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
            "--aggregator",
            "localhost:8443",
            "--output",
            block.to_str().unwrap(),
        ];
        let crate::cli::Command::Provision(p) = crate::cli::Cli::parse_from(args).command.unwrap();
        let resolved = super::Provisioned::resolve(&p.identity).unwrap();
        assert_eq!(resolved.secret, vec![0, 255, 16]);
        super::write_block(&p).unwrap();
        let mode = std::fs::metadata(&block).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the block holds the secret");
    }
}
