//! Device tokens issued before a run (`mobile-sim tokens`) and presented by the phones
//! (`phones --token-file`): what an operator's enrolment gives each phone, so that signing them
//! (about 24 us each) is not part of the ramp the load generator times. A real phone holds its
//! token; it signs nothing when it connects.
//!
//! The file holds phone i's token on line i, and every line has the same length (one expiry for
//! all, device ids of one width), so a phone's token is read at `i x line length` without
//! reading the rest: a worker of 19,000 phones reads its own 19,000 lines and no other.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context};

use crate::cli::TokensArgs;
use crate::phone::{device_id, device_width};

/// The operator's signing key from its file (64 hex digits).
pub fn load_key(path: &Path) -> anyhow::Result<device_token::SigningKey> {
    let hex = std::fs::read_to_string(path)
        .with_context(|| format!("reading the device key {}", path.display()))?;
    device_token::SigningKey::from_hex(&hex)
        .with_context(|| format!("{} does not hold a device key (64 hex digits)", path.display()))
}

/// `mobile-sim tokens`: signs every phone's token, on every core, and writes the file.
pub fn issue(args: &TokensArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.phones > 0, "--phones must be at least 1");
    let key = load_key(&args.device_key)?;
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_add(args.valid_for.as_secs());
    let width = device_width(args.phones);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let per_thread = args.phones.div_ceil(threads);
    let parts: Vec<anyhow::Result<Vec<u8>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (key, prefix) = (&key, &args.device_prefix);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in t * per_thread..((t + 1) * per_thread).min(args.phones) {
                        let device = device_id(prefix, width, i);
                        let token = key
                            .token(device.as_bytes(), expiry)
                            .with_context(|| format!("device id {device:?} is too long for a token"))?;
                        out.extend_from_slice(token.as_bytes());
                        out.push(b'\n');
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a signer panicked"))))
            .collect()
    });
    let mut file = File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut line_len = None;
    for part in parts {
        let part = part?;
        for line in part.split_inclusive(|&b| b == b'\n') {
            if *line_len.get_or_insert(line.len()) != line.len() {
                bail!("tokens of different lengths: device ids or expiry of different widths");
            }
        }
        file.write_all(&part)?;
    }
    file.sync_all()?;
    Ok(())
}

/// A token file opened for reading by index.
#[derive(Debug)]
pub struct TokenFile {
    file: File,
    /// Bytes per line, the newline included.
    line: u64,
}

/// Longest token line accepted.
const MAX_LINE: usize = 256;

impl TokenFile {
    /// Opens `path`, which must hold exactly one token per phone of a run of `phones`.
    pub fn open(path: &Path, phones: u64) -> anyhow::Result<TokenFile> {
        let file = File::open(path).with_context(|| format!("opening the token file {}", path.display()))?;
        let mut head = [0u8; MAX_LINE];
        let n = file.read_at(&mut head, 0)?;
        let Some(end) = head[..n].iter().position(|&b| b == b'\n') else {
            bail!("{}: no token line (of at most {MAX_LINE} bytes) at its start", path.display());
        };
        let line = end as u64 + 1;
        let size = file.metadata()?.len();
        if size != line * phones {
            bail!(
                "{} holds {} bytes, not {phones} lines of {line}: issue it for this run (mobile-sim tokens --phones {phones})",
                path.display(),
                size
            );
        }
        Ok(TokenFile { file, line })
    }

    /// Phone `index`'s token.
    pub fn token(&self, index: u64) -> std::io::Result<String> {
        let mut buf = vec![0u8; (self.line - 1) as usize];
        self.file.read_exact_at(&mut buf, index * self.line)?;
        String::from_utf8(buf).map_err(|_| std::io::Error::other("a token line is not text"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_are_read_back_by_index_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = device_token::SigningKey::generate();
        let key_file = dir.path().join("device-token.key");
        std::fs::write(&key_file, key.to_hex()).unwrap();
        let out = dir.path().join("tokens");
        let args = TokensArgs {
            phones: 1001,
            device_prefix: "t-".into(),
            device_key: key_file,
            valid_for: std::time::Duration::from_secs(3600),
            out: out.clone(),
        };
        issue(&args).unwrap();
        let file = TokenFile::open(&out, 1001).unwrap();
        let public = key.public_key();
        for i in [0, 1, 500, 1000] {
            let token = file.token(i).unwrap();
            let device = device_id("t-", device_width(1001), i);
            assert!(public.verify(device.as_bytes(), token.as_bytes(), None).is_ok(), "phone {i}");
            let other = device_id("t-", device_width(1001), (i + 1) % 1001);
            assert!(
                public.verify(other.as_bytes(), token.as_bytes(), None).is_err(),
                "phone {i}'s token is its own"
            );
        }
        let refused = TokenFile::open(&out, 1000).unwrap_err().to_string();
        assert!(refused.contains("not 1000 lines"), "{refused}");
    }
}
