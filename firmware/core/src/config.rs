//! Every bound and timing of the gateway, named, with defaults fit for phones on a site network.

use core::net::SocketAddr;

/// How phone connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhoneConfig {
    /// A phone must finish its upgrade request within this time. Default 10 s (the aggregator's).
    pub handshake_timeout_ms: u64,
    /// Longest upgrade request (request line and headers) read. Default 4 KiB: a browser's
    /// request is about 500 bytes; longer ones get 431.
    pub max_request_len: usize,
    /// Largest WebSocket message (sum of its fragments) a phone may send; larger closes with 1009.
    /// Nothing is buffered: payloads are counted as they stream through. Default 4 KiB, the
    /// aggregator's `--max-phone-message`.
    pub max_message_len: u64,
    /// A phone that sent no byte to count for this long is closed with 1000. Pings do not
    /// count: they may keep a carrier's NAT mapping, but a client that only pings must not hold
    /// a place for ever (docs/SECURITY.md, M7). The deadline is rounded up to a whole second
    /// ([`crate::phone::IDLE_GRAIN_MS`]: the phones whose time comes in one second share one
    /// wakeup). Default 300 s.
    pub idle_timeout_ms: u64,
    /// A write to a phone (an answer, a pong, a durable total) that cannot complete this long
    /// (the phone reads nothing) closes the connection. Default 10 s.
    pub write_timeout_ms: u64,
    /// After the gateway closes or refuses, how long it waits for the phone to finish (its close
    /// frame, or EOF) before dropping the connection. Default 2 s.
    pub linger_ms: u64,
}

impl PhoneConfig {
    /// The defaults, as a constant (for a board's `static`).
    pub const DEFAULT: Self = Self {
        handshake_timeout_ms: 10_000,
        max_request_len: 4096,
        max_message_len: 4096,
        idle_timeout_ms: 300_000,
        write_timeout_ms: 10_000,
        linger_ms: 2_000,
    };
}

impl Default for PhoneConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Where and how the trunk links reach the aggregator.
#[derive(Debug, Clone, Copy)]
pub struct TrunkConfig<'a> {
    /// The aggregator's address as this gateway reaches it.
    pub aggregator: SocketAddr,
    /// The name in the aggregator's certificate (TLS server name and HTTP Host). Default
    /// `localhost`, which the aggregator's self-made certificate carries.
    pub server_name: &'a str,
    /// The pinned CA certificate (DER) that must have signed the aggregator's certificate.
    pub ca_der: &'a [u8],
    /// A TCP connect, TLS handshake or WebSocket upgrade that takes longer fails. Default 10 s.
    pub connect_timeout_ms: u64,
}

impl<'a> TrunkConfig<'a> {
    /// A configuration with the default timings.
    pub fn new(aggregator: SocketAddr, server_name: &'a str, ca_der: &'a [u8]) -> Self {
        Self { aggregator, server_name, ca_der, connect_timeout_ms: 10_000 }
    }
}
