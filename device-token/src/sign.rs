//! Issuing tokens: the operator's side (the aggregator's `device token` command and its issuing
//! endpoint, mobile-sim for its simulated phones, tests).

use std::string::String;

use ed25519_dalek::Signer as _;

use crate::{signed_message, PublicKey, BASE64URL, DOMAIN, MAX_DEVICE_LEN};

/// The operator's signing key. Keep it where only the issuer reads it.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// A new random key (from the operating system's generator).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        Self::from_seed(&seed)
    }

    /// The key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The key from its seed as 64 hex digits (surrounding whitespace ignored): the key file's
    /// format.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let mut seed = [0u8; 32];
        crate::decode_hex(hex.trim(), &mut seed)?;
        Some(Self::from_seed(&seed))
    }

    /// The seed as 64 hex digits: the key file's format.
    pub fn to_hex(&self) -> String {
        hex(&self.0.to_bytes())
    }

    /// The public key that verifies this key's tokens.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// A token for `device` (at most 32 bytes) valid until `expires_at` (Unix seconds).
    pub fn token(&self, device: &[u8], expires_at: u64) -> Option<String> {
        if device.len() > MAX_DEVICE_LEN {
            return None;
        }
        let mut message = [0u8; DOMAIN.len() + 8 + MAX_DEVICE_LEN];
        let n = signed_message(device, expires_at, &mut message);
        let signature = self.0.sign(&message[..n]).to_bytes();
        let mut token = std::format!("{expires_at}.");
        encode_base64url(&signature, &mut token);
        Some(token)
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| std::format!("{b:02x}")).collect()
}

fn encode_base64url(bytes: &[u8], out: &mut String) {
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(BASE64URL[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TokenError;

    #[test]
    fn a_token_proves_its_device_until_it_expires() {
        let key = SigningKey::from_seed(&[7; 32]);
        let public = key.public_key();
        let token = key.token(b"phone-1", 2_000_000_000).unwrap();
        assert!(token.len() <= crate::MAX_TOKEN_LEN && token.starts_with("2000000000."), "{token}");
        assert_eq!(public.verify(b"phone-1", token.as_bytes(), Some(1_900_000_000)), Ok(2_000_000_000));
        assert_eq!(public.verify(b"phone-1", token.as_bytes(), None), Ok(2_000_000_000), "no clock");
        assert_eq!(
            public.verify(b"phone-1", token.as_bytes(), Some(2_000_000_000)),
            Err(TokenError::Expired { at: 2_000_000_000 })
        );
        // Another device, another expiry, another key, a flipped character: refused.
        assert_eq!(public.verify(b"phone-2", token.as_bytes(), None), Err(TokenError::BadSignature));
        let later = token.replacen("2000000000", "2000000001", 1);
        assert_eq!(public.verify(b"phone-1", later.as_bytes(), None), Err(TokenError::BadSignature));
        let other = SigningKey::from_seed(&[8; 32]).public_key();
        assert_eq!(other.verify(b"phone-1", token.as_bytes(), None), Err(TokenError::BadSignature));
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 5;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        assert!(public.verify(b"phone-1", &flipped, None).is_err());
        assert_eq!(public.verify(b"phone-1", b"", None), Err(TokenError::Missing));
    }

    #[test]
    fn keys_round_trip_as_hex() {
        let key = SigningKey::generate();
        let again = SigningKey::from_hex(&std::format!("  {}\n", key.to_hex())).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = PublicKey::from_hex(&hex(&key.public_key().to_bytes())).unwrap();
        assert_eq!(public, key.public_key());
        assert!(PublicKey::from_hex("00").is_err());
        assert!(SigningKey::from_hex("zz").is_none());
    }

    #[test]
    fn base64url_round_trips() {
        for len in 0..70 {
            let bytes: std::vec::Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let mut text = String::new();
            encode_base64url(&bytes, &mut text);
            let mut back = std::vec![0u8; len];
            assert_eq!(crate::decode_base64url(text.as_bytes(), &mut back), Some(()), "{len}");
            assert_eq!(back, bytes);
        }
    }
}
