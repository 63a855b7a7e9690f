//! # trunk: the protocol between site gateways and the aggregator
//!
//! A gateway holds thousands of phone WebSocket sessions and carries all of them over a few
//! links to the aggregator; this crate is the one implementation of what travels on those links,
//! shared by the firmware (embassy, `no_std`) and the aggregator (tokio).
//!
//! It is sans-IO, in the manner of quinn-proto and rustls: no sockets, no clock, no randomness,
//! no allocator. Callers feed in received messages, the time (a [`time::Instant`]) and random bytes,
//! and take out messages to send. That keeps the protocol testable on its own, including the
//! randomised simulation in `tests/simulation.rs` where links drop and databases fail.
//!
//! - [`frame`]: the frames and their codec; [`varint`]: the integer encoding inside them.
//! - [`auth`]: how a gateway proves it holds its secret.
//! - [`gateway`]: the gateway's state machine (sessions, links, replay).
//! - [`server`]: the aggregator's end of a link (handshake, reports).
//! - [`ledger`]: the aggregator's coalescing of reports between commits, and acknowledgement
//!   after commit.
//! - [`phone`]: what a phone sees at either end (its device id, its durable total).
//! - `harness` (feature `harness`, with `std`): a gateway and a server joined in memory, in
//!   simulated time, for tests.
//! - [`backoff`]: reconnect delays with jitter, for everyone who reconnects.
//! - [`time`]: the [`time::Instant`], [`time::Duration`] and [`time::PollAt`] the API speaks of
//!   time in (milliseconds of the caller's clock).
//!
//! The byte layout and the rules are specified in `docs/trunk-protocol.md`.
#![no_std]
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

/// A private set of named bits in one byte, in the manner of the `bitflags` crate: the
/// named constants, `contains`, `insert`, `remove`, and a `Debug` that lists the names.
macro_rules! bit_flags {
    (
        $(#[$meta:meta])*
        struct $name:ident { $( $(#[$flag_meta:meta])* const $flag:ident = $bit:expr; )* }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Default)]
        struct $name(u8);

        impl $name {
            const NONE: Self = Self(0);
            $( $(#[$flag_meta])* const $flag: Self = Self($bit); )*

            /// Whether every bit of `other` is set.
            fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// Sets the bits of `other`.
            fn insert(&mut self, other: Self) {
                self.0 |= other.0;
            }

            /// Clears the bits of `other`.
            #[allow(dead_code)]
            fn remove(&mut self, other: Self) {
                self.0 &= !other.0;
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let mut set = f.debug_set();
                $( if self.contains(Self::$flag) { set.entry(&stringify!($flag)); } )*
                set.finish()
            }
        }
    };
}

pub mod auth;
pub mod backoff;
pub mod frame;
pub mod gateway;
#[cfg(feature = "harness")]
pub mod harness;
pub mod ledger;
pub mod phone;
pub mod server;
pub mod time;
pub mod varint;

pub use frame::{DecodeError, EncodeError, Frame};

/// A short byte string stored inline (an id), for fixed-size state without an allocator.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ShortBytes<const N: usize> {
    len: u8,
    buf: [u8; N],
}

impl<const N: usize> ShortBytes<N> {
    /// The empty string.
    pub const EMPTY: Self = Self { len: 0, buf: [0; N] };

    /// Copies `bytes`; `None` if longer than `N` (or than 255).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > N || bytes.len() > usize::from(u8::MAX) {
            return None;
        }
        let mut buf = [0; N];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(Self { len: bytes.len() as u8, buf })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> core::fmt::Debug for ShortBytes<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Ids are usually text; show them as such, escaping anything else.
        write!(f, "\"{}\"", self.as_slice().escape_ascii())
    }
}
