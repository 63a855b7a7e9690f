//! The provisioning block: what makes one gateway this gateway, written at flash time, never in
//! source.
//!
//! A board reserves a flash sector for it (see `firmware/README.md`); the host build writes it
//! with `gateway provision` and also reads its fields from flags. Layout (all integers little
//! endian):
//!
//! ```text
//! "HFPROV1\0"                 8 bytes, magic (erased flash, 0xFF..., is "not provisioned")
//! length                      u16: bytes of the records that follow
//! records                     tag u8, length u16, value
//! crc32                       u32 (IEEE) of everything before it
//! ```
//! Records: 1 gateway id, 2 secret, 3 aggregator address (`ip:port` text), 4 TLS server name,
//! 5 pinned CA certificate (DER), 6 entropy seed (boards without a hardware RNG, see
//! [`Provisioning::seed`]), 7 trunk links (one byte), 8 the operator's device-token public key
//! (32 bytes; without it phones are not asked to prove their device). Unknown tags are skipped,
//! so later versions can add records.

use core::net::SocketAddr;

const MAGIC: &[u8; 8] = b"HFPROV1\0";

mod tag {
    pub const GATEWAY_ID: u8 = 1;
    pub const SECRET: u8 = 2;
    pub const AGGREGATOR: u8 = 3;
    pub const SERVER_NAME: u8 = 4;
    pub const CA: u8 = 5;
    pub const SEED: u8 = 6;
    pub const LINKS: u8 = 7;
    pub const DEVICE_KEY: u8 = 8;
}

/// What a gateway is provisioned with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provisioning<'a> {
    /// The id the aggregator knows it by (`aggregator gateway add ID`).
    pub gateway_id: &'a str,
    /// Its secret (the hex the aggregator printed, decoded).
    pub secret: &'a [u8],
    /// The aggregator's address, as the gateway reaches it.
    pub aggregator: SocketAddr,
    /// The name in the aggregator's certificate.
    pub server_name: &'a str,
    /// The CA that must have signed the aggregator's certificate (DER).
    pub ca_der: &'a [u8],
    /// Per-device random bytes for boards without a hardware RNG, mixed with timing jitter at
    /// boot. Empty when the board has an RNG.
    pub seed: &'a [u8],
    /// Trunk links (default 2).
    pub links: u8,
    /// The operator's Ed25519 public key for device tokens (`aggregator device public-key`):
    /// phones must show a token it signed for their device. `None`: phones are not checked.
    pub device_key: Option<[u8; 32]>,
}

/// Why a block was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProvisionError {
    /// No magic: the sector is erased or holds something else.
    NotProvisioned,
    /// Truncated, a bad checksum, or a malformed record.
    Corrupt(&'static str),
    /// A required record is missing.
    Missing(&'static str),
    /// The output buffer is too small (when writing).
    TooSmall,
}

impl<'a> Provisioning<'a> {
    /// Reads a block (trailing bytes after it, such as the rest of an erased sector, are ignored).
    pub fn parse(block: &'a [u8]) -> Result<Self, ProvisionError> {
        if block.get(..8) != Some(&MAGIC[..]) {
            return Err(ProvisionError::NotProvisioned);
        }
        let len = usize::from(u16::from_le_bytes([
            block.get(8).copied().unwrap_or(0),
            block.get(9).copied().unwrap_or(0),
        ]));
        let end = 10 + len;
        let crc_bytes = block.get(end..end + 4).ok_or(ProvisionError::Corrupt("truncated"))?;
        if crc32(&block[..end]).to_le_bytes() != crc_bytes {
            return Err(ProvisionError::Corrupt("checksum"));
        }
        let mut records = &block[10..end];
        let (mut id, mut secret, mut aggregator, mut name, mut ca) = (None, None, None, None, None);
        let mut seed: &[u8] = &[];
        let mut links = 2;
        let mut device_key = None;
        while !records.is_empty() {
            let [t, l0, l1, rest @ ..] = records else {
                return Err(ProvisionError::Corrupt("record header"));
            };
            let n = usize::from(u16::from_le_bytes([*l0, *l1]));
            let value = rest.get(..n).ok_or(ProvisionError::Corrupt("record length"))?;
            records = &rest[n..];
            let text = || core::str::from_utf8(value).map_err(|_| ProvisionError::Corrupt("text record"));
            match *t {
                tag::GATEWAY_ID => id = Some(text()?),
                tag::SECRET => secret = Some(value),
                tag::AGGREGATOR => {
                    aggregator =
                        Some(text()?.parse().map_err(|_| ProvisionError::Corrupt("aggregator address"))?)
                }
                tag::SERVER_NAME => name = Some(text()?),
                tag::CA => ca = Some(value),
                tag::SEED => seed = value,
                tag::LINKS => links = value.first().copied().unwrap_or(2),
                tag::DEVICE_KEY => {
                    device_key =
                        Some(value.try_into().map_err(|_| ProvisionError::Corrupt("device key length"))?)
                }
                _ => {}
            }
        }
        Ok(Self {
            gateway_id: id.ok_or(ProvisionError::Missing("gateway id"))?,
            secret: secret.ok_or(ProvisionError::Missing("secret"))?,
            aggregator: aggregator.ok_or(ProvisionError::Missing("aggregator address"))?,
            server_name: name.ok_or(ProvisionError::Missing("server name"))?,
            ca_der: ca.ok_or(ProvisionError::Missing("CA certificate"))?,
            seed,
            links,
            device_key,
        })
    }

    /// Writes the block into `out`; returns its length.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, ProvisionError> {
        let mut addr = [0u8; 64];
        let addr_len = fmt_addr(self.aggregator, &mut addr);
        let records: [(u8, &[u8]); 8] = [
            (tag::GATEWAY_ID, self.gateway_id.as_bytes()),
            (tag::SECRET, self.secret),
            (tag::AGGREGATOR, &addr[..addr_len]),
            (tag::SERVER_NAME, self.server_name.as_bytes()),
            (tag::CA, self.ca_der),
            (tag::SEED, self.seed),
            (tag::LINKS, core::slice::from_ref(&self.links)),
            (tag::DEVICE_KEY, self.device_key.as_ref().map_or(&[][..], |k| &k[..])),
        ];
        let mut len = 10;
        for (t, value) in records {
            if t == tag::DEVICE_KEY && value.is_empty() {
                continue; // no key: no record (an empty one would be malformed)
            }
            let n = u16::try_from(value.len()).map_err(|_| ProvisionError::TooSmall)?;
            let dst = out.get_mut(len..len + 3 + value.len()).ok_or(ProvisionError::TooSmall)?;
            dst[0] = t;
            dst[1..3].copy_from_slice(&n.to_le_bytes());
            dst[3..].copy_from_slice(value);
            len += 3 + value.len();
        }
        let body = u16::try_from(len - 10).map_err(|_| ProvisionError::TooSmall)?;
        out[..8].copy_from_slice(MAGIC);
        out[8..10].copy_from_slice(&body.to_le_bytes());
        let crc = crc32(&out[..len]);
        out.get_mut(len..len + 4).ok_or(ProvisionError::TooSmall)?.copy_from_slice(&crc.to_le_bytes());
        Ok(len + 4)
    }
}

fn fmt_addr(addr: SocketAddr, out: &mut [u8; 64]) -> usize {
    struct W<'a>(&'a mut [u8], usize);
    impl core::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let dst = self.0.get_mut(self.1..self.1 + s.len()).ok_or(core::fmt::Error)?;
            dst.copy_from_slice(s.as_bytes());
            self.1 += s.len();
            Ok(())
        }
    }
    let mut w = W(out, 0);
    let _ = core::fmt::write(&mut w, format_args!("{addr}"));
    w.1
}

/// CRC-32 (IEEE 802.3), bit by bit: the block is read once at boot, so speed does not matter.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_round_trips_and_damage_is_caught() {
        let p = Provisioning {
            gateway_id: "site-1",
            secret: &[1, 2, 3],
            aggregator: "10.0.2.2:8443".parse().unwrap(),
            server_name: "localhost",
            ca_der: &[0x30, 0x82, 1, 2],
            seed: &[9; 32],
            links: 2,
            device_key: Some([7; 32]),
        };
        let mut block = [0xffu8; 512];
        let n = p.write(&mut block).unwrap();
        assert_eq!(Provisioning::parse(&block), Ok(p));
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let mut bad = block;
        bad[20] ^= 1;
        assert_eq!(Provisioning::parse(&bad), Err(ProvisionError::Corrupt("checksum")));
        assert_eq!(Provisioning::parse(&[0xff; 64]), Err(ProvisionError::NotProvisioned));
        assert!(Provisioning::parse(&block[..n - 1]).is_err());
        assert_eq!(p.write(&mut [0; 40]), Err(ProvisionError::TooSmall));
        let open = Provisioning { device_key: None, ..p };
        open.write(&mut block).unwrap();
        assert_eq!(Provisioning::parse(&block), Ok(open), "a block without a device key");
    }
}
