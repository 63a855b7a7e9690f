//! Every setting of the aggregator, by flag or environment variable, with its default and why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};

/// The central service of holdfast: terminates gateway trunks and direct phone WebSockets over
/// TLS 1.3, and persists exact byte counts.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default when no subcommand is given).
    Serve,
    /// Provision gateways: their ids and secrets.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Device tokens: what a phone shows to prove which device it is (see docs/SECURITY.md).
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Make (or keep) the self-made TLS files in --data-dir, as `serve` would at its start: a
    /// local CA (ca.pem, ca.key: kept once made) and a server certificate it signs (server.pem,
    /// server.key) for localhost, 127.0.0.1, ::1 and --tls-san, made again when it lacks a name or
    /// expires within 30 days. For a front (nginx) that terminates TLS with them, and clients that
    /// pin ca.pem; prints the three paths.
    Certificate,
    /// Print URL as a QR code in the terminal (what --lan prints for the phone page; for a
    /// phone's camera: black on white where the terminal takes colours).
    Qr {
        /// The text to encode, usually an https:// address.
        url: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Create gateways with fresh secrets; prints `NAME HEXSECRET` per gateway, for the gateway's
    /// provisioning (and mobile-sim's --gateways-file).
    Add {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List provisioned gateways (without secrets).
    List,
    /// Remove a gateway: new links are refused, and the aggregators close its live links within
    /// --gateway-check-interval-ms.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Issue tokens; prints `DEVICE TOKEN` per device. A phone connects with
    /// `?device=DEVICE&token=TOKEN` (the phone page takes both from its link).
    Token {
        #[arg(required = true)]
        devices: Vec<String>,
        /// Days until the tokens expire.
        #[arg(long, default_value_t = 365)]
        valid_for_days: u64,
    },
    /// Print the public key (hex) that checks the tokens, for gateways (--device-public-key).
    PublicKey,
}

/// Whether phones must prove which device they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PhoneAuth {
    /// A phone's upgrade carries a device token signed with the device key; otherwise 401.
    Required,
    /// Phones are believed (a closed test network only: anyone can add bytes to any device).
    Off,
}

/// Settings of the running service.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on (phones, trunks, the phone page at /, the dashboard at /dashboard,
    /// and metrics share it).
    #[arg(long, env = "HOLDFAST_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,

    /// Serve phones on this machine's local network, for a test with a real phone: listen on the
    /// LAN address (the one the default route leaves from; or --listen's address when it is not
    /// loopback), put it in the self-made certificate, make a dashboard token for this run when
    /// none is set, and print the phone page's address as a QR code, the dashboard's address
    /// with its token, and where phones get the CA certificate (/ca).
    #[arg(long, env = "HOLDFAST_LAN", conflicts_with = "plain")]
    pub lan: bool,

    /// Serve plain HTTP/WebSocket instead of TLS: only behind a proxy that terminates TLS.
    #[arg(long, env = "HOLDFAST_PLAIN")]
    pub plain: bool,

    /// Postgres URL (postgres://...), or sqlite://PATH. Without it, an SQLite file in --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Where the embedded database and the self-made certificates live.
    #[arg(long, env = "HOLDFAST_DATA_DIR", default_value = "holdfast-data")]
    pub data_dir: PathBuf,

    /// Server certificate chain (PEM). Without it, a local CA and certificate are made in --data-dir.
    #[arg(long, env = "HOLDFAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Server private key (PEM).
    #[arg(long, env = "HOLDFAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The CA certificate (PEM) phones should install, offered at /ca.crt with install steps at
    /// /ca. Default: the self-made CA, when the aggregator makes its own certificate; with
    /// neither, /ca.crt answers 404.
    #[arg(long, env = "HOLDFAST_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Extra names (DNS or IP) for the self-made server certificate.
    #[arg(long = "tls-san", env = "HOLDFAST_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,

    /// Whether a direct phone must show a device token (`?token=`, issued with `aggregator
    /// device token`): `required` (401 without a valid one) or `off`.
    #[arg(long, env = "HOLDFAST_PHONE_AUTH", value_enum, default_value_t = PhoneAuth::Required)]
    pub phone_auth: PhoneAuth,

    /// The device-token signing key (an Ed25519 seed, hex; made at the first start, mode 600).
    /// Several aggregators must share one. Default: DATA_DIR/device-token.key.
    #[arg(long, env = "HOLDFAST_DEVICE_KEY")]
    pub device_key: Option<PathBuf>,

    /// A code the phone page may present to enrol itself (`POST /api/enrol` with
    /// "Authorization: Bearer CODE", or a link `/?enrol=CODE`): it gets a new device of its own,
    /// a random device id and its token (as `device token` makes them). It can never name an
    /// existing device, so the code lets phones join but not add bytes to anyone's device.
    /// Empty (the default): enrolment is off, /api/enrol answers 404.
    #[arg(long, env = "HOLDFAST_ENROLMENT_CODE", default_value = "", hide_env_values = true)]
    pub enrolment_code: String,

    /// Enrolment requests (right or wrong code) this process answers per minute, a burst of as
    /// many allowed; beyond it 429 with Retry-After. A leaked code then makes devices at this pace
    /// at most, and guessing the code is slower still (docs/SECURITY.md).
    #[arg(long, env = "HOLDFAST_ENROLMENTS_PER_MINUTE", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub enrolments_per_minute: u32,

    /// Processes sharing the port (SO_REUSEPORT). Each holds at most --max-phones phones: use more
    /// when the open-file limit of one process is the bound.
    #[arg(long, env = "HOLDFAST_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// How often counts are written to the database. Shorter: lower flush lag, more transactions.
    #[arg(long, env = "HOLDFAST_FLUSH_INTERVAL_MS", default_value_t = 200)]
    pub flush_interval_ms: u64,

    /// Finished sessions are folded out of the sessions table into per-device totals this long
    /// after they finished (a direct phone's session after its close, a gateway boot's after a
    /// newer boot of the gateway was first seen); 0 turns folding off. See docs/ARCHITECTURE.md.
    #[arg(long, env = "HOLDFAST_FOLD_AFTER_S", default_value_t = 60)]
    pub fold_after_s: u64,

    /// How often the compactor looks for sessions to fold.
    #[arg(long, env = "HOLDFAST_FOLD_INTERVAL_MS", default_value_t = 5_000)]
    pub fold_interval_ms: u64,

    /// How often the PostgreSQL journal (flushes acknowledged, not yet merged into the sessions
    /// table) is compacted. Counts are readable either way; this bounds how far the table and
    /// the persisted totals trail the acknowledgements.
    #[arg(long, env = "HOLDFAST_COMPACT_INTERVAL_MS", default_value_t = 250)]
    pub compact_interval_ms: u64,

    /// Most reports merged from the journal by one compaction (one transaction). A compaction
    /// takes what waits, oldest first, up to this: the more reports of the same session it
    /// holds, the fewer row writes per report (a session reports every few seconds, so a
    /// compaction that covers a minute of a busy million writes each session once for a dozen
    /// reports). It cannot take the database from the flushes however large it is: it gives
    /// way between its statements (`--compact-busy-percent`). What this bounds is how long its
    /// transaction stays open (with the busy share, 10 times its work).
    #[arg(long, env = "HOLDFAST_COMPACT_MAX_ENTRIES", default_value_t = 20_000_000)]
    pub compact_max_entries: usize,

    /// Most sessions one compaction merges: its memory in the aggregator, about 300 bytes per
    /// session (the reports stream through; RSS went from 407 MB in a load to 700 MB while
    /// merging 1,000,000 sessions). A compaction stops taking flights once it holds this
    /// many; above the number of live sessions, a compaction of a long backlog writes each
    /// session once.
    #[arg(long, env = "HOLDFAST_COMPACT_MAX_SESSIONS", default_value_t = 2_000_000)]
    pub compact_max_sessions: usize,

    /// Largest share of the time (%) the compactor spends merging the journal while the
    /// flushes have work (none waiting in the ledger: no limit): it rests in proportion between
    /// the statements of a compaction and after it, even with a backlog, so that the flushes
    /// (which acknowledge) and trunk handshakes keep the database's attention when it cannot
    /// keep up. 40: at 100,000 reports/s from a million sessions on two cores shared with the
    /// load, the journal stayed level through a 5-minute load (it grew all along with 10 and
    /// 20), with flush lag p99 <= 1 s per flush, as with 10; at 250,000/s p99 was <= 1 s too
    /// (one run each; docs/benchmarks.md, "One size of compaction, paced").
    #[arg(long, env = "HOLDFAST_COMPACT_BUSY_PERCENT", default_value_t = 40,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub compact_busy_percent: u32,

    /// Acknowledgements first: while more than two flushes' worth of sessions wait in the
    /// ledger, the compactor does not start a compaction (whose work would slow the flushes
    /// down), for at most this long (ms), so that a database that never catches up still has
    /// its journal merged. A trunk's link-up replays every open session at once; the first
    /// compaction of a run merges a million reports (about 12 s of the database's time on
    /// two cores): started in that burst, it kept flights waiting 5 s; docs/benchmarks.md.
    #[arg(long, env = "HOLDFAST_COMPACT_MAX_DEFER_MS", default_value_t = 30_000)]
    pub compact_max_defer_ms: u64,

    /// Most sessions folded in one transaction.
    #[arg(long, env = "HOLDFAST_FOLD_BATCH_ROWS", default_value_t = 10_000)]
    pub fold_batch_rows: usize,

    /// Most session rows written by one flush (one transaction).
    #[arg(long, env = "HOLDFAST_MAX_FLUSH_ROWS", default_value_t = 50_000)]
    pub max_flush_rows: usize,

    /// Flush transactions in flight at once, each over sessions no other holds (PostgreSQL; the
    /// embedded SQLite store has one writer, so one). Each has a database connection of its
    /// own, apart from --db-connections.
    #[arg(long, env = "HOLDFAST_FLUSHES_IN_FLIGHT", default_value_t = 3)]
    pub flushes_in_flight: usize,

    /// Sessions the in-memory ledger holds between commits (rounded down to a power of two,
    /// filled to 7/8). When full, trunks and phones are not read until a commit frees room:
    /// memory stays bounded while the database is slow or down. It must hold at least the
    /// reports of one trunk message (half of --max-trunk-message): the aggregator refuses to
    /// start otherwise.
    #[arg(long, env = "HOLDFAST_LEDGER_CAPACITY", default_value_t = 1 << 20)]
    pub ledger_capacity: usize,

    /// Direct phones this process admits; beyond it the upgrade is answered 503.
    #[arg(long, env = "HOLDFAST_MAX_PHONES", default_value_t = 15_000)]
    pub max_phones: usize,

    /// Trunk handshakes in progress at once (upgraded, the gateway not yet authenticated);
    /// beyond it the upgrade is answered 503 and the gateway retries with backoff. A place among
    /// --max-trunks is taken only once the gateway has proved who it is, so connections that
    /// never authenticate cannot take those. Sized for the burst of an aggregator restart (every
    /// trunk reconnecting at once spreads over the aggregators behind the balancer).
    #[arg(long, env = "HOLDFAST_MAX_PENDING_TRUNKS", default_value_t = 512)]
    pub max_pending_trunks: usize,

    /// Connections one client address may have open at once (phones, trunks, pages, sessions
    /// included); beyond it a new connection is closed at once. An address is an IPv4 address or
    /// an IPv6 /64. Phones behind one carrier-grade NAT share an address: raise it for them, or
    /// list their block in --address-limit-exempt (docs/SECURITY.md, M7).
    #[arg(long, env = "HOLDFAST_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1_024)]
    pub max_connections_per_address: u32,

    /// Connections one client address may have that are not yet a session: in TLS or HTTP, a
    /// phone before its token is accepted, a trunk before its gateway is authenticated. One
    /// address thus holds at most this many of the --max-pending-trunks places.
    #[arg(long, env = "HOLDFAST_MAX_HANDSHAKES_PER_ADDRESS", default_value_t = 32)]
    pub max_handshakes_per_address: u32,

    /// Address blocks not counted by the two bounds above (comma-separated, `ADDRESS/PREFIX`):
    /// a local proxy such as nginx, which then limits per client itself (deploy/nginx). The
    /// flag with no value exempts nothing.
    #[arg(long = "address-limit-exempt", env = "HOLDFAST_ADDRESS_LIMIT_EXEMPT",
          value_delimiter = ',', num_args = 0.., default_value = address_limits::DEFAULT_EXEMPT)]
    pub address_limit_exempt: Vec<address_limits::Cidr>,

    /// Authenticated trunk links this process holds; beyond it the link is refused (OVERLOADED)
    /// right after its handshake.
    #[arg(long, env = "HOLDFAST_MAX_TRUNKS", default_value_t = 2_000)]
    pub max_trunks: usize,

    /// Sessions one gateway boot may hold in this process at once: those that reported here and
    /// whose close this process has not yet acknowledged (what the gateway itself holds). Reports
    /// of further sessions are not recorded and the link is refused (QUOTA, "too many sessions
    /// for this gateway"). Every ledger entry of a boot is one of these, so this is also the
    /// most of the ledger one gateway can take (docs/SECURITY.md, M4): keep it well below
    /// --ledger-capacity's sessions (7/8 of it). 50,000: 2.5 times a host gateway's 19,000-20,000
    /// phones per process, 1/18 of the default ledger.
    #[arg(long, env = "HOLDFAST_MAX_SESSIONS_PER_GATEWAY", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_sessions_per_gateway: usize,

    /// New boot epochs one gateway may come with in any hour, in this process (the first boot it
    /// sees counts). One boot per gateway is live here: a new one supersedes the last (its links
    /// are refused at their next message) and starts its own session count. A boot beyond this is
    /// refused at the handshake (QUOTA, "too many new boots of this gateway"), before it is
    /// written to the database; the gateway keeps its counts and retries with backoff. An
    /// honest gateway boots when it restarts; 6 an hour bounds a restart loop's boot rows and
    /// one gateway's share of a stalled ledger (this times --max-sessions-per-gateway).
    #[arg(long, env = "HOLDFAST_MAX_GATEWAY_BOOTS_PER_HOUR", default_value_t = 6,
          value_parser = clap::value_parser!(u64).range(1..).map(|n| n as usize))]
    pub max_gateway_boots_per_hour: usize,

    /// Largest WebSocket message a phone may send (bytes); larger closes with 1009.
    #[arg(long, env = "HOLDFAST_MAX_PHONE_MESSAGE", default_value_t = 4_096)]
    pub max_phone_message: usize,

    /// Largest WebSocket message a trunk may send (bytes); told to gateways in Welcome.
    #[arg(long, env = "HOLDFAST_MAX_TRUNK_MESSAGE", default_value_t = 64 * 1024)]
    pub max_trunk_message: usize,

    /// Most plaintext bytes in one TLS record this server sends (32..=16384). The trunk protocol
    /// promises gateways at most 4,096 (board gateways buffer one record of that size and drop a
    /// link that gets more); a larger value is for testing that refusal.
    #[arg(long, env = "HOLDFAST_TLS_RECORD_PLAINTEXT", default_value_t = trunk::frame::MAX_SERVER_TLS_PLAINTEXT as u16,
          value_parser = clap::value_parser!(u16).range(32..=16_384))]
    pub tls_record_plaintext: u16,

    /// How often the gateways with links here are checked against the provisioned ones: links of
    /// a gateway removed meanwhile (`aggregator gateway remove`) are closed.
    #[arg(long, env = "HOLDFAST_GATEWAY_CHECK_INTERVAL_MS", default_value_t = 10_000)]
    pub gateway_check_interval_ms: u64,

    /// Time allowed for TCP accept to a complete WebSocket or HTTP request head (TLS included).
    #[arg(long, env = "HOLDFAST_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// A direct phone that sent no byte this long is closed (1000). Pings do not count: they may
    /// keep a carrier's NAT mapping, not a place here (docs/SECURITY.md, M7).
    #[arg(long, env = "HOLDFAST_PHONE_IDLE_TIMEOUT_MS", default_value_t = 300_000)]
    pub phone_idle_timeout_ms: u64,

    /// A phone or gateway that does not take what it is sent (an acknowledgement) within this
    /// long is disconnected: a peer that never reads would otherwise pin its task and buffers.
    #[arg(long, env = "HOLDFAST_SEND_TIMEOUT_MS", default_value_t = 30_000)]
    pub send_timeout_ms: u64,

    /// Gateways are asked to ping at least this often; a trunk silent for 3x is closed.
    #[arg(long, env = "HOLDFAST_TRUNK_PING_MS", default_value_t = 15_000)]
    pub trunk_ping_ms: u64,

    /// Time given to trunks and phones to finish when shutting down (SIGTERM).
    #[arg(long, env = "HOLDFAST_SHUTDOWN_GRACE_MS", default_value_t = 3_000)]
    pub shutdown_grace_ms: u64,

    /// Token for the dashboard's data (/api/dashboard, its event stream) and /api/devices: sent
    /// as ?token=T or "Authorization: Bearer T". Without a token these answer only when --listen
    /// is a loopback address and TLS is on (this machine only); on any other address, or with
    /// --plain (a proxy may forward the world to it), they answer 403 until a token is set.
    #[arg(long, env = "HOLDFAST_DASHBOARD_TOKEN", default_value = "", hide_env_values = true)]
    pub dashboard_token: String,

    /// Dashboard event streams (/api/dashboard/events) open at once; beyond it, 503.
    #[arg(long, env = "HOLDFAST_DASHBOARD_STREAMS", default_value_t = 16)]
    pub dashboard_streams: usize,

    /// Open sessions the dashboard tracks per gateway; beyond it the dashboard's count for that
    /// gateway is a lower bound (byte counts stay exact). They are marks in the session quota's
    /// own set (gateways.rs), no memory of their own.
    #[arg(long, env = "HOLDFAST_DASHBOARD_SESSIONS_PER_GATEWAY", default_value_t = 100_000)]
    pub dashboard_sessions_per_gateway: usize,

    /// Gateways listed in a dashboard snapshot, the busiest first (the totals count them all).
    #[arg(long, env = "HOLDFAST_DASHBOARD_GATEWAYS", default_value_t = 200)]
    pub dashboard_gateways: usize,

    /// Database connections for trunk handshakes, the dashboard and the API. The write path
    /// opens its own (PostgreSQL): one per flush in flight and one for the compactor.
    #[arg(long, env = "HOLDFAST_DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: u32,

    /// Internal: index of this worker process (set by the parent with --workers).
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
}

impl Settings {
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// Folding's policy, or `None` when folding is off (`--fold-after-s 0`).
    pub fn fold(&self) -> Option<crate::store::FoldPolicy> {
        (self.fold_after_s > 0).then(|| crate::store::FoldPolicy {
            after: Duration::from_secs(self.fold_after_s),
            batch_rows: self.fold_batch_rows,
        })
    }

    /// Refuses settings that cannot work together: a ledger with less room than one trunk
    /// message may need would leave every trunk unread for ever (trunk_link.rs).
    pub fn check(&self) -> anyhow::Result<()> {
        let room = trunk::ledger::sessions_in(self.ledger_slots());
        let need = self.max_trunk_message / 2;
        anyhow::ensure!(
            need <= room,
            "--ledger-capacity {} holds {room} sessions, but a trunk message of --max-trunk-message {} \
             bytes may carry {need} reports: raise the capacity or lower the message size",
            self.ledger_capacity,
            self.max_trunk_message
        );
        Ok(())
    }

    /// The ledger's slots (at least 1,024).
    pub fn ledger_slots(&self) -> usize {
        self.ledger_capacity.max(1024)
    }

    /// When the compactor compacts the journal and folds finished sessions.
    pub fn compactor(&self) -> crate::compactor::Schedule {
        crate::compactor::Schedule {
            compact_every: Duration::from_millis(self.compact_interval_ms.max(1)),
            compact_max_entries: self.compact_max_entries.max(1),
            compact_max_sessions: self.compact_max_sessions.max(1),
            busy_percent: self.compact_busy_percent,
            max_defer: Duration::from_millis(self.compact_max_defer_ms),
            fold: self.fold().map(|policy| (policy, Duration::from_millis(self.fold_interval_ms.max(1)))),
        }
    }

    pub fn gateway_check_interval(&self) -> Duration {
        Duration::from_millis(self.gateway_check_interval_ms.max(1))
    }

    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms.max(1))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub fn phone_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.phone_idle_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The per-address bounds (the address-limits crate).
    pub fn address_bounds(&self) -> address_limits::Bounds {
        address_limits::Bounds {
            connections: self.max_connections_per_address,
            handshakes: self.max_handshakes_per_address,
            exempt: self.address_limit_exempt.clone(),
        }
    }

    /// The trunk protocol's settings of the aggregator's end.
    pub fn trunk(&self) -> trunk::server::ServerConfig {
        trunk::server::ServerConfig {
            max_payload_len: trunk::frame::DEFAULT_MAX_PAYLOAD_LEN,
            max_message_len: self.max_trunk_message,
            ping_interval: trunk::time::Duration::from_millis(self.trunk_ping_ms),
            idle_timeout: trunk::time::Duration::from_millis(self.trunk_ping_ms * 3),
            handshake_timeout: trunk::time::Duration::from_millis(self.handshake_timeout_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        Cli::parse_from(std::iter::once("aggregator").chain(args.iter().copied())).serve
    }

    #[test]
    fn address_limit_exemptions() {
        let loopback: Vec<String> =
            settings(&[]).address_limit_exempt.iter().map(|c| c.to_string()).collect();
        assert_eq!(loopback, ["127.0.0.0/8", "::1/128"], "loopback by default");
        assert!(settings(&["--address-limit-exempt"]).address_limit_exempt.is_empty(), "none");
        let given = settings(&["--address-limit-exempt", "10.0.0.0/8,192.0.2.7", "--plain"]);
        assert_eq!(given.address_limit_exempt.len(), 2);
        assert!(given.plain, "the flag's values end at the next flag");
        let err = Cli::try_parse_from(["aggregator", "--address-limit-exempt", "10.0.0.0/40"]).unwrap_err();
        assert!(err.to_string().contains("prefix length"), "{err}");
    }

    #[test]
    fn a_ledger_too_small_for_one_trunk_message_is_refused() {
        assert!(settings(&[]).check().is_ok(), "the defaults work together");
        // 1,024 slots hold 896 sessions; a message of 2,048 bytes may carry 1,024 reports.
        let err =
            settings(&["--ledger-capacity", "1024", "--max-trunk-message", "2048"]).check().unwrap_err();
        assert!(err.to_string().contains("holds 896 sessions"), "{err}");
        assert!(settings(&["--ledger-capacity", "2048", "--max-trunk-message", "2048"]).check().is_ok());
        // Rounded down to a power of two, as the ledger does: 4,095 slots are 2,048.
        assert!(settings(&["--ledger-capacity", "4095", "--max-trunk-message", "4096"]).check().is_err());
    }
}
