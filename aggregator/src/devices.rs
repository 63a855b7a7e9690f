//! Phones prove which device they are: the operator's device-token key, the `aggregator device`
//! command that issues tokens, enrolment (`--enrolment-code`: a phone page gets a new device of
//! its own), and the check at a direct phone's upgrade. The token format and
//! its verification are the `device-token` crate's, shared with the gateways.
//!
//! The key is an Ed25519 seed in a file (`--device-key`, default `DATA_DIR/device-token.key`,
//! mode 600), made at the first start. Several aggregators must share one key file (a token
//! issued by one is checked by all); gateways get only its public key.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use device_token::{PublicKey, SigningKey};

use crate::config::{DeviceCommand, PhoneAuth, Settings};

/// How long `aggregator device token` tokens last unless told otherwise.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long the demo phone's token in the start-up message lasts.
const DEMO_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The key file these settings name.
pub fn key_path(s: &Settings) -> PathBuf {
    s.device_key.clone().unwrap_or_else(|| s.data_dir.join("device-token.key"))
}

/// Reads the signing key, making it (mode 600) when the file does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<SigningKey> {
    match std::fs::read_to_string(path) {
        Ok(text) => SigningKey::from_hex(&text)
            .with_context(|| format!("{} does not hold a device-token key (64 hex digits)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let key = SigningKey::generate();
            write_private_new(path, format!("{}\n", key.to_hex()).as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("reading {}", path.display()))),
    }
}

fn write_private_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)
}

/// The key that checks phones' tokens, or `None` with `--phone-auth off`.
pub fn verifier(s: &Settings) -> anyhow::Result<Option<PublicKey>> {
    Ok(match s.phone_auth {
        PhoneAuth::Required => Some(load_or_create(&key_path(s))?.public_key()),
        PhoneAuth::Off => None,
    })
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Checks a direct phone's upgrade: `device` and `token` from its query. The refusal is a fixed
/// text (for the phone and the metrics).
pub fn check(key: &PublicKey, device: Option<&[u8]>, token: Option<&str>) -> Result<(), &'static str> {
    key.admit(device, token.map(str::as_bytes), Some(unix_now()))
}

/// A token for the start-up message's phone page link: a random demo device, 30 days.
pub fn demo_link(s: &Settings) -> anyhow::Result<Option<(String, String)>> {
    if s.phone_auth == PhoneAuth::Off {
        return Ok(None);
    }
    let key = load_or_create(&key_path(s))?;
    let device = format!("web-{:08x}", rand::random::<u32>());
    let token =
        key.token(device.as_bytes(), unix_now() + DEMO_VALIDITY.as_secs()).expect("a short device id");
    Ok(Some((device, token)))
}

/// Enrolment (`--enrolment-code`): whoever shows the code gets a new device, never an existing
/// one, so the code cannot be used to add bytes to anyone's device.
pub struct Enrolment {
    code: String,
    key: SigningKey,
    pace: std::sync::Mutex<Pace>,
}

/// A token bucket: `per_minute` requests a minute, a burst of as many.
#[derive(Debug)]
struct Pace {
    per_minute: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Pace {
    fn new(per_minute: u32) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        Pace { per_minute, tokens: per_minute, at: std::time::Instant::now() }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: std::time::Instant) -> Result<(), std::time::Duration> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.per_minute / 60.0;
        self.tokens = (self.tokens + refill).min(self.per_minute);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64((1.0 - self.tokens) * 60.0 / self.per_minute))
        }
    }
}

/// Why an enrolment was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    WrongCode,
    /// Too many requests: try again after this many seconds.
    TooMany {
        retry_after_s: u64,
    },
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::WrongCode => "wrong enrolment code",
            Refused::TooMany { .. } => "too many enrolments (--enrolments-per-minute)",
        }
    }
}

impl std::fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Enrolment")
    }
}

/// A device made by [`Enrolment::enrol`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    pub device: String,
    pub token: String,
    /// Unix seconds.
    pub expires: u64,
}

impl Enrolment {
    /// Enrolment as the settings say: `None` without a code (or with `--phone-auth off`, where a
    /// device needs no token).
    pub fn from_settings(s: &Settings) -> anyhow::Result<Option<Self>> {
        if s.enrolment_code.is_empty() || s.phone_auth == PhoneAuth::Off {
            return Ok(None);
        }
        if s.enrolment_code.len() < 16 {
            anyhow::bail!("--enrolment-code must be at least 16 characters: it is all that guards enrolment");
        }
        Ok(Some(Self {
            code: s.enrolment_code.clone(),
            key: load_or_create(&key_path(s))?,
            pace: std::sync::Mutex::new(Pace::new(s.enrolments_per_minute)),
        }))
    }

    /// A new device for whoever shows `code`: a random id (`web-` and 96 random bits) and its
    /// token, valid for [`DEFAULT_VALIDITY`]; or why not. Every request, right or wrong, takes
    /// its turn under `--enrolments-per-minute` first.
    pub fn enrol(&self, code: &str) -> Result<Enrolled, Refused> {
        let paced = self.pace.lock().unwrap_or_else(|e| e.into_inner()).take(std::time::Instant::now());
        if let Err(wait) = paced {
            return Err(Refused::TooMany { retry_after_s: wait.as_secs() + 1 });
        }
        if !crate::request::constant_time_eq(code.as_bytes(), self.code.as_bytes()) {
            return Err(Refused::WrongCode);
        }
        let device = format!("web-{:024x}", rand::random::<u128>() >> 32);
        let expires = unix_now() + DEFAULT_VALIDITY.as_secs();
        let token = self.key.token(device.as_bytes(), expires).expect("28 bytes is a short device id");
        Ok(Enrolled { device, token, expires })
    }
}

/// `aggregator device ...`.
pub fn command(cmd: DeviceCommand, s: &Settings) -> anyhow::Result<()> {
    let path = key_path(s);
    let key = load_or_create(&path)?;
    match cmd {
        DeviceCommand::Token { devices, valid_for_days } => {
            let expires = unix_now() + valid_for_days.saturating_mul(24 * 3600);
            for device in devices {
                let token = key.token(device.as_bytes(), expires).with_context(|| {
                    format!("device id {device:?} is longer than {} bytes", device_token::MAX_DEVICE_LEN)
                })?;
                println!("{device} {token}");
            }
            eprintln!("signed with {} (expires at Unix time {expires})", path.display());
        }
        DeviceCommand::PublicKey => {
            println!("{}", device_token::hex(&key.public_key().to_bytes()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_made_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/device-token.key");
        let first = load_or_create(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(&path).unwrap().public_key(), first.public_key(), "the same key");
        std::fs::write(&path, "not a key").unwrap();
        assert!(load_or_create(&path).is_err(), "a damaged key file is an error, not a new key");
    }

    #[test]
    fn enrolments_are_paced() {
        let start = std::time::Instant::now();
        let mut pace = Pace::new(6); // one every 10 s, a burst of 6
        pace.at = start;
        for _ in 0..6 {
            assert!(pace.take(start).is_ok());
        }
        let wait = pace.take(start).unwrap_err();
        assert!(wait > std::time::Duration::from_secs(9) && wait <= std::time::Duration::from_secs(10));
        let later = start + std::time::Duration::from_secs(10);
        assert!(pace.take(later).is_ok(), "a token came back after 10 s");
        assert!(pace.take(later).is_err(), "only one");
        let much_later = later + std::time::Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| pace.take(much_later).is_ok()).count(), 6, "the burst never grows");
    }

    #[test]
    fn a_phone_needs_its_own_devices_unexpired_token() {
        let key = SigningKey::from_seed(&[1; 32]);
        let public = key.public_key();
        let token = key.token(b"phone-1", unix_now() + 60).unwrap();
        assert_eq!(check(&public, Some(b"phone-1"), Some(&token)), Ok(()));
        assert!(check(&public, Some(b"phone-2"), Some(&token)).unwrap_err().contains("not valid"));
        assert!(check(&public, Some(b"phone-1"), None).unwrap_err().contains("required"));
        assert!(check(&public, None, Some(&token)).unwrap_err().contains("device id"));
        let old = key.token(b"phone-1", unix_now() - 1).unwrap();
        assert!(check(&public, Some(b"phone-1"), Some(&old)).unwrap_err().contains("expired"));
    }
}
