//! Timer jitter as a source of entropy, for a board without a hardware RNG.
//!
//! EMULATOR ONLY, NOT FOR PRODUCTION. The mps2-an386 board that QEMU emulates
//! has no random number generator. What differs between two boots of the same
//! image is the host: when QEMU delivers a network frame (and so the Ethernet
//! interrupt) relative to the guest's 25 MHz timer depends on host scheduling.
//! Interrupt handlers call [`JitterPool::feed`] with the timer's value; the
//! pool keeps a lossy mix of those samples, and [`JitterPool::take`] hands out
//! a snapshot that the [`Drbg`](crate::rng::Drbg) hashes into its state.
//!
//! How many unpredictable bits that gives is unknown and could be small (an
//! attacker on the same host, or a replayed boot, may predict much of it).
//! This is why the mps2 board also hashes its provisioning block, which holds
//! per-device secrets once provisioned, into the seed. A real board uses its
//! hardware RNG (the NUCLEO-H743ZI does).

use core::sync::atomic::{AtomicU32, Ordering};

/// Number of 32-bit accumulators; samples are spread over them round-robin.
const SLOTS: usize = 8;

/// A lock-free pool of timer samples, safe to feed from interrupt handlers.
pub struct JitterPool {
    acc: [AtomicU32; SLOTS],
    /// Number of samples fed so far (wrapping).
    fed: AtomicU32,
    /// Value of `fed` at the last [`take`](Self::take).
    taken: AtomicU32,
}

impl JitterPool {
    /// An empty pool.
    pub const fn new() -> Self {
        Self { acc: [const { AtomicU32::new(0) }; SLOTS], fed: AtomicU32::new(0), taken: AtomicU32::new(0) }
    }

    /// Mixes one sample (typically a free-running counter read in an
    /// interrupt handler) into the pool. Cheap: a few arithmetic operations.
    /// A race with another `feed` can lose a sample; that costs entropy, never
    /// correctness.
    pub fn feed(&self, sample: u32) {
        let n = self.fed.fetch_add(1, Ordering::Relaxed);
        let slot = &self.acc[n as usize % SLOTS];
        // Rotate and multiply by an odd constant so that the low bits (which
        // carry the jitter) spread over the whole word.
        let old = slot.load(Ordering::Relaxed);
        slot.store(old.rotate_left(5) ^ sample.wrapping_mul(0x9E37_79B1), Ordering::Relaxed);
    }

    /// Number of samples fed so far (wrapping).
    pub fn samples(&self) -> u32 {
        self.fed.load(Ordering::Relaxed)
    }

    /// Writes a snapshot of the pool into `out` and returns true when samples
    /// arrived since the last `take`; returns false (and leaves `out` alone)
    /// otherwise.
    pub fn take(&self, out: &mut [u8; 32]) -> bool {
        let fed = self.fed.load(Ordering::Relaxed);
        if self.taken.swap(fed, Ordering::Relaxed) == fed {
            return false;
        }
        for (chunk, slot) in out.chunks_exact_mut(4).zip(&self.acc) {
            chunk.copy_from_slice(&slot.load(Ordering::Relaxed).to_le_bytes());
        }
        true
    }
}

impl Default for JitterPool {
    fn default() -> Self {
        Self::new()
    }
}
