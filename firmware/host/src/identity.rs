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
        let secret = match (&flags.secret, &from_block) {
            (Some(hex), _) => decode_hex(hex).context("--secret must be hex")?,
            (None, Some(p)) => p.secret.to_vec(),
            (None, None) => bail!("--secret (or HOLDFAST_GATEWAY_SECRET, or --provisioning) is required"),
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
            aggregator: flags
                .aggregator
                .or(from_block.map(|p| p.aggregator))
                .unwrap_or_else(|| "127.0.0.1:8443".parse().expect("a valid address")),
            server_name: flags
                .server_name
                .clone()
                .or(from_block.map(|p| p.server_name.to_owned()))
                .unwrap_or_else(|| "localhost".into()),
            links: flags.links.or(from_block.map(|p| p.links)).unwrap_or(2),
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
    };
    let mut out = vec![0u8; 16 * 1024];
    let n = block.write(&mut out).map_err(|e| anyhow::anyhow!("provisioning block: {e:?}"))?;
    std::fs::write(&args.output, &out[..n]).with_context(|| format!("writing {}", args.output.display()))?;
    println!("wrote {} ({n} bytes) for gateway {} -> {}", args.output.display(), p.gateway_id, p.aggregator);
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

fn decode_hex(hex: &str) -> Result<Vec<u8>> {
    let hex = hex.trim();
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
    #[test]
    fn hex() {
        assert_eq!(super::decode_hex("00ff10").unwrap(), vec![0, 255, 16]);
        assert!(super::decode_hex("0").is_err());
        assert!(super::decode_hex("zz").is_err());
    }
}
