//! The command line: every setting of the gateway, with its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The holdfast site gateway on Linux: phones connect with WebSocket to `/ws?device=ID`; their
/// byte counts travel to the aggregator over TLS 1.3 trunk links. The same core as the firmware.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Serve,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a provisioning block (what a board reads from flash) from the identity flags.
    Provision(Provision),
}

/// Which network stack carries the phones and the trunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StackKind {
    /// The kernel's TCP: for scale (up to --capacity phones per process).
    Kernel,
    /// embassy-net (smoltcp) over a TAP device: exactly the firmware's stack.
    Tap,
}

/// Who this gateway is and where its aggregator is: from flags, or from a provisioning block.
#[derive(Debug, Args)]
pub struct Identity {
    /// A provisioning block (see `gateway provision`); flags given as well override its fields.
    #[arg(long, env = "HOLDFAST_PROVISIONING")]
    pub provisioning: Option<PathBuf>,
    /// The gateway's id, as provisioned with `aggregator gateway add ID`.
    #[arg(long, env = "HOLDFAST_GATEWAY_ID")]
    pub id: Option<String>,
    /// The gateway's secret: the hex that `aggregator gateway add` printed. Prefer --secret-file
    /// or the environment: a flag is visible to every local user in the process list.
    #[arg(long, env = "HOLDFAST_GATEWAY_SECRET", hide_env_values = true, conflicts_with = "secret_file")]
    pub secret: Option<String>,
    /// A file holding the secret's hex (mode 600; systemd: LoadCredential).
    #[arg(long, env = "HOLDFAST_GATEWAY_SECRET_FILE")]
    pub secret_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the aggregator's certificate: the only one trusted.
    #[arg(long, env = "HOLDFAST_CA")]
    pub ca: Option<PathBuf>,
    /// The aggregator's address, HOST:PORT (a name, such as the load balancer's, is resolved
    /// once at start).
    #[arg(long, env = "HOLDFAST_AGGREGATOR")]
    pub aggregator: Option<String>,
    /// The name in the aggregator's certificate (TLS server name). Default: localhost.
    #[arg(long, env = "HOLDFAST_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Trunk links to the aggregator (1 to 8). Default: 2.
    #[arg(long, env = "HOLDFAST_LINKS")]
    pub links: Option<u8>,
    /// The operator's device-token public key, 64 hex digits (`aggregator device public-key`):
    /// phones prove their device with a token it signed (`/ws?device=ID&token=T`).
    #[arg(long, env = "HOLDFAST_DEVICE_PUBLIC_KEY")]
    pub device_public_key: Option<String>,
}

/// Whether phones must prove which device they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PhoneAuth {
    /// A valid device token for the device named, or 401 (needs the device public key).
    Required,
    /// Any phone may count bytes for any device id: only for trusted test networks.
    Off,
}

#[derive(Debug, Args)]
pub struct Serve {
    #[command(flatten)]
    pub identity: Identity,
    /// Where phones connect (kernel stack), or the TAP stack's port (its address is --tap-address).
    #[arg(long, env = "HOLDFAST_GATEWAY_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Phone sessions held at once; one more gets 503. The kernel stack's bound is the process's
    /// open-file limit (each phone is a socket): run several gateways beyond about 19,000.
    #[arg(long, env = "HOLDFAST_CAPACITY", default_value_t = 10_000)]
    pub capacity: usize,
    /// Connections one phone address may have open at once (kernel stack); beyond it a new one is
    /// closed at once. An address is an IPv4 address or an IPv6 /64 (docs/SECURITY.md, M7).
    #[arg(long, env = "HOLDFAST_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1_024)]
    pub max_connections_per_address: u32,
    /// Address blocks not counted by --max-connections-per-address (comma-separated,
    /// `ADDRESS/PREFIX`); loopback by default (local tools and load generators). The flag with no
    /// value exempts nothing.
    #[arg(long = "address-limit-exempt", env = "HOLDFAST_ADDRESS_LIMIT_EXEMPT", value_delimiter = ',',
          num_args = 0.., default_value = address_limits::DEFAULT_EXEMPT)]
    pub address_limit_exempt: Vec<address_limits::Cidr>,
    /// The certificate chain (PEM) phones see: with it (and --phone-tls-key) phones connect over
    /// TLS 1.3 (`wss://`, and the page over https). Kernel stack only.
    #[arg(long, env = "HOLDFAST_PHONE_TLS_CERT", requires = "phone_tls_key")]
    pub phone_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --phone-tls-cert.
    #[arg(long, env = "HOLDFAST_PHONE_TLS_KEY", requires = "phone_tls_cert")]
    pub phone_tls_key: Option<PathBuf>,
    /// The network stack.
    #[arg(long, value_enum, default_value = "kernel")]
    pub stack: StackKind,
    /// TAP stack: the TAP interface (it must exist: `ip tuntap add NAME mode tap`).
    #[arg(long, default_value = "tap0")]
    pub tap: String,
    /// TAP stack: this gateway's address and prefix on the TAP network.
    #[arg(long, default_value = "192.168.69.2/24")]
    pub tap_address: String,
    /// TAP stack: phone sockets (each holds one phone; --capacity still bounds sessions).
    #[arg(long, default_value_t = 64)]
    pub tap_sockets: usize,
    /// A phone must complete its upgrade request within this time.
    #[arg(long, env = "HOLDFAST_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,
    /// A phone that sent no byte this long is closed (1000); pings do not count (they may keep
    /// a carrier's NAT mapping, not a place here). Rounded up to a whole second.
    #[arg(long, env = "HOLDFAST_PHONE_IDLE_TIMEOUT_MS", default_value_t = 300_000)]
    pub phone_idle_timeout_ms: u64,
    /// Largest message a phone may send (1009 beyond).
    #[arg(long, env = "HOLDFAST_MAX_PHONE_MESSAGE", default_value_t = 4096)]
    pub max_phone_message: u64,
    /// How often counts are flushed to the aggregator on each link.
    #[arg(long, env = "HOLDFAST_FLUSH_INTERVAL_MS", default_value_t = 250)]
    pub flush_interval_ms: u64,
    /// While phones keep sending, the gateway's thread wakes at most once per this many
    /// microseconds and serves every phone that sent meanwhile in one go (fewer context
    /// switches); a byte's count is delayed by at most this much, which nobody sees: it waits
    /// for the trunk's flush (250 ms) anyway. 0: wake for every readiness. 20 ms against 1 ms:
    /// 8.1-8.3 against 9.1-9.4 us of CPU per phone byte at 15,000 bytes/s (`lab compare`,
    /// docs/benchmarks.md).
    #[arg(long, env = "HOLDFAST_IO_BATCH_US", default_value_t = 20_000,
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub io_batch_us: u64,
    /// Whether phones must prove their device with a token (`required` needs
    /// --device-public-key, from the command line or the provisioning block).
    #[arg(long, env = "HOLDFAST_PHONE_AUTH", value_enum, default_value_t = PhoneAuth::Required)]
    pub phone_auth: PhoneAuth,
    /// Seconds between status lines in the log (0: none).
    #[arg(long, default_value_t = 10)]
    pub status_interval_s: u64,
}

#[derive(Debug, Args)]
pub struct Provision {
    #[command(flatten)]
    pub identity: Identity,
    /// Add 32 random bytes of seed, for boards without a hardware RNG (the QEMU board).
    #[arg(long)]
    pub seed: bool,
    /// Where to write the block.
    #[arg(long, short)]
    pub output: PathBuf,
}
