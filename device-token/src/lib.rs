//! # Device tokens: a phone proves which device it is
//!
//! A phone names its device in the upgrade request (`?device=ID`); with a token
//! (`&token=T`) it also proves that the operator issued that id to it. A token binds one device
//! id to an expiry time, signed with the operator's Ed25519 key:
//!
//! ```text
//! token     = expiry "." signature          expiry: Unix seconds, decimal
//!                                           signature: base64url (no padding) of 64 bytes
//! signed    = "holdfast device token v1\n" || expiry as 8 bytes big-endian || device id bytes
//! ```
//!
//! Whoever terminates the phone's WebSocket (the aggregator for a direct phone, a gateway for the
//! phones of its site) verifies it with the operator's *public* key: a gateway can check tokens
//! but cannot make them. Verifying is one Ed25519 signature check per connection, no state, no
//! allocation (`no_std`); issuing (feature `sign`) is the operator's side.

#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

use core::fmt;

use ed25519_dalek::{Signature, VerifyingKey};

/// What is signed before the expiry and the device id: keeps these signatures from meaning
/// anything in another protocol that the same key might sign (it should not).
const DOMAIN: &[u8] = b"holdfast device token v1\n";

/// Bytes of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// Characters of a signature in base64url without padding.
const SIGNATURE_TEXT_LEN: usize = 86;

/// The longest token: 20 digits of expiry, the dot, the signature.
pub const MAX_TOKEN_LEN: usize = 20 + 1 + SIGNATURE_TEXT_LEN;

/// The longest device id a token may name (the trunk protocol's bound).
pub const MAX_DEVICE_LEN: usize = 32;

/// Why a token was not accepted. The variants say what to tell the phone; none says which part
/// of a signature was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was given.
    Missing,
    /// Not of the form `expiry.signature`, or the device id is too long.
    Malformed,
    /// The signature does not match this device id and expiry under the operator's key.
    BadSignature,
    /// The token expired at this Unix time (seconds).
    Expired {
        /// When it expired.
        at: u64,
    },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("a device token is required (?token=)"),
            Self::Malformed => f.write_str("the device token is malformed"),
            Self::BadSignature => f.write_str("the device token is not valid for this device"),
            Self::Expired { at } => write!(f, "the device token expired (at Unix time {at})"),
        }
    }
}

impl core::error::Error for TokenError {}

impl TokenError {
    /// A fixed text for the refusal (what a phone is told, and a metric's label).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "a device token is required (?token=)",
            Self::Malformed => "the device token is malformed",
            Self::BadSignature => "the device token is not valid for this device",
            Self::Expired { .. } => "the device token expired",
        }
    }
}

/// A public key given was not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyError;

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an Ed25519 public key (64 hex digits)")
    }
}

impl core::error::Error for KeyError {}

/// The operator's public key: what every tier that admits phones holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes).map(Self).map_err(|_| KeyError)
    }

    /// The key from 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        let mut bytes = [0u8; 32];
        decode_hex(hex.trim(), &mut bytes).ok_or(KeyError)?;
        Self::from_bytes(&bytes)
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Checks that `token` was issued for `device` and, when `now` (Unix seconds) is known, that
    /// it has not expired. A gateway without a clock passes `None` and checks the signature only.
    /// Returns the token's expiry.
    pub fn verify(&self, device: &[u8], token: &[u8], now: Option<u64>) -> Result<u64, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if device.len() > MAX_DEVICE_LEN || token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let dot = token.iter().position(|&b| b == b'.').ok_or(TokenError::Malformed)?;
        let expiry = parse_decimal(&token[..dot]).ok_or(TokenError::Malformed)?;
        let mut signature = [0u8; SIGNATURE_LEN];
        decode_base64url(&token[dot + 1..], &mut signature).ok_or(TokenError::Malformed)?;
        let mut message = [0u8; DOMAIN.len() + 8 + MAX_DEVICE_LEN];
        let n = signed_message(device, expiry, &mut message);
        // verify_strict: no malleable signatures, no small-order keys.
        self.0
            .verify_strict(&message[..n], &Signature::from_bytes(&signature))
            .map_err(|_| TokenError::BadSignature)?;
        match now {
            Some(now) if now >= expiry => Err(TokenError::Expired { at: expiry }),
            _ => Ok(expiry),
        }
    }
}

/// The raw value of `token=` in a URL query (`a=1&token=T`): tokens use only URL-safe
/// characters, so nothing is decoded. `None` when absent.
pub fn from_query(query: &[u8]) -> Option<&[u8]> {
    query.split(|&b| b == b'&').find_map(|pair| pair.strip_prefix(b"token="))
}

impl PublicKey {
    /// The check at a phone's upgrade: a device id and a valid token for it (see
    /// [`PublicKey::verify`]); otherwise the refusal's fixed text.
    pub fn admit(
        &self,
        device: Option<&[u8]>,
        token: Option<&[u8]>,
        now: Option<u64>,
    ) -> Result<(), &'static str> {
        let Some(device) = device else { return Err("a device id is required (?device=)") };
        self.verify(device, token.unwrap_or_default(), now).map(drop).map_err(|e| e.reason())
    }
}

/// The bytes a token's signature covers; returns their length.
fn signed_message(device: &[u8], expiry: u64, out: &mut [u8; DOMAIN.len() + 8 + MAX_DEVICE_LEN]) -> usize {
    out[..DOMAIN.len()].copy_from_slice(DOMAIN);
    out[DOMAIN.len()..DOMAIN.len() + 8].copy_from_slice(&expiry.to_be_bytes());
    out[DOMAIN.len() + 8..DOMAIN.len() + 8 + device.len()].copy_from_slice(device);
    DOMAIN.len() + 8 + device.len()
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        } else {
            None
        }
    })
}

fn decode_hex(hex: &str, out: &mut [u8]) -> Option<()> {
    let hex = hex.as_bytes();
    if hex.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *o = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(())
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Decodes unpadded base64url into exactly `out.len()` bytes; `None` for anything else
/// (including non-canonical trailing bits, so that one signature has one spelling).
fn decode_base64url(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != (out.len() * 4).div_ceil(3) {
        return None;
    }
    let value = |c: u8| BASE64URL.iter().position(|&b| b == c).map(|v| v as u32);
    let (mut acc, mut bits, mut at) = (0u32, 0u32, 0usize);
    for &c in text {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(at)? = (acc >> bits) as u8;
            at += 1;
            acc &= (1 << bits) - 1;
        }
    }
    (at == out.len() && acc == 0).then_some(())
}

#[cfg(feature = "sign")]
mod sign;
#[cfg(feature = "sign")]
pub use sign::{hex, SigningKey};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_found_in_a_query() {
        assert_eq!(from_query(b"device=a&token=12.xy"), Some(&b"12.xy"[..]));
        assert_eq!(from_query(b"token=&device=a"), Some(&b""[..]));
        assert_eq!(from_query(b"device=a&tokens=1"), None);
        assert_eq!(from_query(b""), None);
    }

    #[test]
    fn decimal_and_hex_edges() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_decimal(b"18446744073709551616"), None, "overflow");
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"12a"), None);
        let mut out = [0u8; 2];
        assert_eq!(decode_hex("0aFF", &mut out), Some(()));
        assert_eq!(out, [0x0a, 0xff]);
        assert_eq!(decode_hex("0g00", &mut out), None);
        assert_eq!(decode_hex("é0", &mut out), None);
    }

    #[test]
    fn base64url_is_strict() {
        let mut out = [0u8; 2];
        assert_eq!(decode_base64url(b"AQI", &mut out), Some(()));
        assert_eq!(out, [1, 2]);
        assert_eq!(decode_base64url(b"AQJ", &mut out), None, "non-canonical trailing bits");
        assert_eq!(decode_base64url(b"AQ=", &mut out), None, "padding is not base64url here");
        assert_eq!(decode_base64url(b"AQIA", &mut out), None, "too long");
    }

    #[test]
    fn nothing_panics_on_any_input() {
        let key = PublicKey::from_bytes(&[
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
            0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
        ])
        .unwrap();
        for token in [&b""[..], b".", b"1.", b".AAAA", &[b'9'; 200], &[0xff; 107], b"1.\xff\xfe"] {
            assert!(key.verify(b"d", token, Some(0)).is_err());
        }
        assert_eq!(key.verify(&[b'x'; 33], b"1.A", None), Err(TokenError::Malformed));
    }
}
