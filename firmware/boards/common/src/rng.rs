//! The random number generator handed to the app on every board.
//!
//! A hash DRBG over SHA-256 in the spirit of NIST SP 800-90A's Hash_DRBG,
//! simplified: the state is a 256-bit key and a block counter; output block i
//! is SHA-256("out" || key || i); after every request the key is replaced by
//! SHA-256("next" || key || counter), so a later compromise of the state does
//! not reveal earlier output. New entropy is hashed into the key with
//! [`Drbg::mix`], and, when the board gives a [`EntropySource`], before every
//! request that finds fresh material there.
//!
//! The quality of the output is exactly the quality of the seed: on the
//! NUCLEO it comes from the STM32 hardware RNG; on the QEMU board from timer
//! jitter and the provisioning block, which is for the emulator only (see
//! [`crate::entropy`]).

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

/// A source of fresh entropy polled before each request: writes up to 32
/// bytes into the buffer and returns true when it had new material.
pub type EntropySource = fn(&mut [u8; 32]) -> bool;

/// SHA-256 hash DRBG; implements `rand_core` 0.6's `RngCore + CryptoRng`
/// (the traits embedded-tls takes).
pub struct Drbg {
    key: [u8; 32],
    counter: u64,
    source: Option<EntropySource>,
}

impl Drbg {
    /// A generator seeded from every part of `seed` (each hashed with its
    /// length, so that the split between parts matters).
    pub fn new(seed: &[&[u8]], source: Option<EntropySource>) -> Self {
        let mut h = Sha256::new();
        h.update(b"holdfast-drbg-seed");
        for part in seed {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        Self { key: h.finalize().into(), counter: 0, source }
    }

    /// Hashes `data` into the state (more entropy never hurts).
    pub fn mix(&mut self, data: &[u8]) {
        let mut h = Sha256::new();
        h.update(b"mix");
        h.update(self.key);
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
        self.key = h.finalize().into();
    }

    fn poll_source(&mut self) {
        if let Some(source) = self.source {
            let mut fresh = [0u8; 32];
            if source(&mut fresh) {
                self.mix(&fresh);
            }
        }
    }

    fn block(&mut self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"out");
        h.update(self.key);
        h.update(self.counter.to_le_bytes());
        self.counter = self.counter.wrapping_add(1);
        h.finalize().into()
    }

    fn rekey(&mut self) {
        let mut h = Sha256::new();
        h.update(b"next");
        h.update(self.key);
        h.update(self.counter.to_le_bytes());
        self.key = h.finalize().into();
    }
}

impl RngCore for Drbg {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.poll_source();
        for chunk in dest.chunks_mut(32) {
            let block = self.block();
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        self.rekey();
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for Drbg {}
