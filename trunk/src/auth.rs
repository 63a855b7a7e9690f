//! Link authentication: a gateway proves it holds its per-gateway secret without sending it.
//!
//! The aggregator opens every link with a fresh random [`Challenge`](crate::frame::Challenge)
//! nonce; the gateway answers with a [`Hello`](crate::frame::Hello) whose proof is
//! HMAC-SHA256(secret, transcript), where the transcript binds everything the Hello claims: the
//! protocol version, both nonces, the link index, the boot epoch and the gateway id. A recorded
//! Hello is useless on another link (different challenge), and a proof cannot be moved to another
//! gateway id or epoch. Verification is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::{Hello, NONCE_LEN, PROOF_LEN, PROTOCOL_VERSION};

type HmacSha256 = Hmac<Sha256>;

/// Domain separation, so this MAC can never be confused with another use of the same secret.
const LABEL: &[u8] = b"holdfast trunk hello";

fn transcript(secret: &[u8], challenge: &[u8; NONCE_LEN], hello: &Hello<'_>) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(LABEL);
    mac.update(&[hello.version]);
    mac.update(challenge);
    mac.update(&hello.nonce);
    mac.update(&[hello.link]);
    mac.update(&hello.boot_epoch.to_be_bytes());
    mac.update(&[hello.gateway_id.len() as u8]);
    mac.update(hello.gateway_id);
    mac
}

/// The proof a gateway puts in its Hello (the `proof` field of `hello` is ignored).
pub fn prove(secret: &[u8], challenge: &[u8; NONCE_LEN], hello: &Hello<'_>) -> [u8; PROOF_LEN] {
    transcript(secret, challenge, hello).finalize().into_bytes().into()
}

/// Whether `hello` proves knowledge of `secret` for this `challenge`, in constant time.
pub fn verify(secret: &[u8], challenge: &[u8; NONCE_LEN], hello: &Hello<'_>) -> bool {
    hello.version == PROTOCOL_VERSION
        && transcript(secret, challenge, hello).verify_slice(&hello.proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &[u8]) -> Hello<'_> {
        Hello {
            version: PROTOCOL_VERSION,
            link: 1,
            boot_epoch: 42,
            nonce: [7; NONCE_LEN],
            gateway_id: id,
            proof: [0; PROOF_LEN],
        }
    }

    #[test]
    fn proof_verifies_only_for_the_same_secret_challenge_and_claims() {
        let challenge = [9; NONCE_LEN];
        let mut h = hello(b"site-1");
        h.proof = prove(b"secret", &challenge, &h);
        assert!(verify(b"secret", &challenge, &h));
        assert!(!verify(b"other", &challenge, &h));
        assert!(!verify(b"secret", &[8; NONCE_LEN], &h));
        let mut moved = h;
        moved.gateway_id = b"site-2";
        assert!(!verify(b"secret", &challenge, &moved));
        let mut epoch = h;
        epoch.boot_epoch = 43;
        assert!(!verify(b"secret", &challenge, &epoch));
        let mut link = h;
        link.link = 0;
        assert!(!verify(b"secret", &challenge, &link));
    }
}
