//! # ws-handshake: the WebSocket opening handshake (RFC 6455 section 4), once
//!
//! Every holdfast program that opens or accepts a WebSocket shakes hands with the same rules:
//! the site gateway (firmware, `no_std`, no allocator) accepts phones and opens trunks to the
//! aggregator, mobile-sim's phones open connections to gateways and to the aggregator, and the
//! aggregator accepts both. The rules live here, so a key the gateway refuses is a key the
//! aggregator refuses too, and a client that checks its answer checks it the same way everywhere.
//!
//! - [`client`]: the request a client sends and the streaming check of the server's answer.
//! - [`valid_key`] and [`accept_key`]: what a server checks in a request's key and answers.
//! - [`head`]: HTTP/1.1 head lines as they stream in, in a fixed buffer (a gateway reads a
//!   phone's request with it; a client reads its answer).
//!
//! Reading a server's *request* is left to each server, because what each keeps differs: the
//! gateway streams it through a fixed line buffer and keeps the device and token it needs
//! (`gateway_core::upgrade`), the aggregator gets it parsed by hyper (`aggregator::websocket`).
#![no_std]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod client;
pub mod head;

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// Length of a `Sec-WebSocket-Key` (base64 of 16 bytes).
pub const KEY_LEN: usize = 24;

/// Length of a `Sec-WebSocket-Accept` (base64 of a SHA-1).
pub const ACCEPT_LEN: usize = 28;

/// The GUID a server appends to the key before hashing (RFC 6455 section 1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A request's `Sec-WebSocket-Key`, if it is one: base64 of exactly 16 bytes (RFC 6455 section
/// 4.1, item 7). Anything else is refused by every server here with 400.
pub fn valid_key(value: &[u8]) -> Option<[u8; KEY_LEN]> {
    let mut decoded = [0u8; 18];
    let ok = value.len() == KEY_LEN
        && base64::engine::general_purpose::STANDARD.decode_slice(value, &mut decoded) == Ok(16);
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(value.get(..KEY_LEN).filter(|_| ok)?);
    Some(key)
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> [u8; ACCEPT_LEN] {
    let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
    let mut out = [0u8; ACCEPT_LEN];
    // 20 bytes always encode to 28 characters.
    let _ = base64::engine::general_purpose::STANDARD.encode_slice(digest, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_key_and_answer() {
        // RFC 6455 section 1.3.
        let key = valid_key(b"dGhlIHNhbXBsZSBub25jZQ==").expect("the RFC's key");
        assert_eq!(&accept_key(&key), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn keys_that_are_not_16_bytes_of_base64_are_refused() {
        assert_eq!(valid_key(b"nope"), None);
        assert_eq!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="[..23].as_ref()), None);
        assert_eq!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ==="), None);
        assert_eq!(valid_key(b"dGhlIHNhbXBsZSBub25j!!=="), None);
        // 24 characters of base64 that decode to 17 bytes.
        assert_eq!(valid_key(b"dGhlIHNhbXBsZSBub25jZQA="), None);
    }
}
