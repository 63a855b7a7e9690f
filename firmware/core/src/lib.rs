//! # gateway-core: the site gateway, independent of board and network stack
//!
//! Phones at a site hold WebSocket sessions on the gateway; the gateway carries all of their byte
//! counts to the aggregator over a few TLS 1.3 trunk links. This crate is all of that logic, for
//! every place the gateway runs: the QEMU and NUCLEO boards (embassy-net), and the Linux host
//! build (the kernel's TCP, or embassy-net over a TAP device). It is `#![no_std]` with no
//! allocator: the board decides where memory lives, and every bound is a named setting.
//!
//! The parsers are sans-IO, so they are tested and fuzzed without sockets:
//! - [`upgrade`]: a phone's upgrade request and the gateway's answers (101, 4xx, 503), read
//!   with `ws-handshake`'s line reader and key rules (shared with the aggregator and mobile-sim).
//! - [`ws`]: RFC 6455 framing of a phone's connection, over `edge-ws`'s frame header codec.
//! - [`page`]: the phone page, gzip-compressed at build time, served from flash.
//! - [`provision`]: the provisioning block (id, secret, pinned CA, aggregator address).
//!
//! The drivers are async, generic over `embedded-io-async` sockets and `edge-nal` stacks:
//! - [`hub`]: the trunk state machine ([`trunk::gateway::Gateway`]) shared by all tasks.
//! - [`phone`]: serves one phone connection from upgrade to close.
//! - [`link`]: keeps one trunk link up: TCP, TLS 1.3 (embedded-tls, pinned CA), WebSocket
//!   (`ws_handshake::client`, the one client handshake mobile-sim uses too), trunk.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

// The host build's system clock (feature `std`, see `tls::Clock`).
#[cfg(feature = "std")]
extern crate std;

pub mod config;
pub mod hub;
pub mod link;
pub mod page;
pub mod phone;
pub mod provision;
pub mod tls;
pub mod upgrade;
pub mod ws;

pub use config::{PhoneConfig, TrunkConfig};
pub use hub::Hub;
