//! The lab's command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "lab",
    version,
    about = "Runs holdfast at size on this machine and reports what each tier costs",
    long_about = "Runs holdfast at size on this machine and reports what each tier costs.\n\n\
        `lab hold` holds N real phone WebSockets end to end: mobile-sim phones -> host gateways \
        (as many processes as the open-file limit needs) -> TLS 1.3 trunks -> one aggregator -> \
        PostgreSQL; then stops the phones, waits until everything is durable, and verifies every \
        device. The binaries it runs are the release builds next to its own \
        (cargo build --release -p lab -p aggregator -p gateway -p mobile-sim)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hold N phones with the seed's traffic for a while, then verify every device.
    Hold(HoldArgs),
    /// Two settings of `lab hold` side by side (scripts/bench/lab-ab.sh): runs alternate A B A B
    /// on the same machine; each setting's medians of the million's figures, and B / A.
    HoldAb(crate::hold_ab::HoldAbArgs),
    /// Builds another commit's binaries (by default the aggregator, the host gateway and
    /// mobile-sim) from `git archive`, keeps them, and prints their folder, for `--bin-dir`.
    BuildRev(crate::revision::BuildRevArgs),
    /// The host gateway and the aggregator side by side with Node.js (ws, socket.io): memory per
    /// idle phone and CPU per byte, the same phones and bytes for each, medians of runs.
    Compare(CompareArgs),
    /// A local cluster that shows phones being counted (README's run command, scripts/run.sh):
    /// the store, aggregators behind nginx, gateways and phones, every phone verified.
    Cluster(crate::cluster::run::ClusterArgs),
    /// The local cluster's nginx.conf for a TLS mode, rendered from deploy/nginx with its
    /// certificates, nothing started (scripts/check-deploy.sh runs nginx -t on it).
    NginxConfig(crate::cluster::run::NginxConfigArgs),
    /// End to end with PostgreSQL (scripts/e2e.sh): 21,000 phones over wss into an aggregator
    /// with 2 workers, then 100 virtual gateways x 1,000 sessions; every device verified.
    E2e(crate::e2e::E2eArgs),
    /// The checks of the checks (scripts/fault-checks.sh): e2e, README's run command, two drills,
    /// `lab hold` and the fold bench, each against a database broken on purpose, must fail and
    /// name the fault.
    Faults(crate::faults::FaultsArgs),
    /// Failure drills on local clusters (scripts/drills.sh): each breaks one thing mid-run and
    /// ends with mobile-sim's verdict on every phone.
    Drills(crate::drills::DrillsArgs),
    /// Benchmarks (the scripts of scripts/bench/ call them): trunks through nginx into several
    /// aggregators, memory per idle phone in nginx, the aggregator and the host gateway, bytes per
    /// second through gateways, mobile-sim's own CPU, TLS phones' cost, mobile-sim next to Thor,
    /// aggregator builds' write paths and CPU per byte side by side, the sessions table's bounds.
    #[command(subcommand)]
    Bench(crate::bench::Bench),
    /// The host gateway's cost per phone (scripts/bench/gateway-cost.sh): memory and CPU per idle
    /// phone, and CPU per phone byte next to a Node.js `ws` server in the same run.
    GatewayCost(crate::gateway_cost::GatewayCostArgs),
}

/// A server `lab compare` loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    /// The host gateway (its trunks to an aggregator on SQLite, not counted).
    Gateway,
    /// The aggregator with direct phones, plain WebSocket (as behind a TLS-terminating proxy),
    /// its SQLite writes counted.
    Aggregator,
    /// Node.js with `ws` (scripts/bench/peers/ws-count-server.js).
    NodeWs,
    /// Node.js with socket.io (scripts/bench/peers/socketio-count-server.js).
    NodeSocketio,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Gateway => "gateway",
            Server::Aggregator => "aggregator",
            Server::NodeWs => "node-ws",
            Server::NodeSocketio => "node-socketio",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Idle phones each server holds (memory per idle phone): at most the open-file limit
    /// less 500.
    #[arg(long, default_value_t = 19_000, value_name = "N")]
    pub idle: u64,

    /// Phones that send (CPU per byte).
    #[arg(long, default_value_t = 3_000, value_name = "N")]
    pub busy: u64,

    /// A busy phone's mean pause between bytes, ms (uniform in 0.5x to 1.5x).
    #[arg(long, default_value_t = 200, value_name = "MS")]
    pub interval_ms: u64,

    /// How long the busy phones send, seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub busy_s: u64,

    /// Runs; each figure is the median over them.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub runs: u32,

    /// What runs mobile-sim's phones against the plain-WebSocket servers (its `--engine`):
    /// `auto` (the host runtime), `host-runtime` or `tokio`. The socket.io phones run on tokio
    /// whatever this says (the host runtime's client speaks plain WebSocket only). The CPU a
    /// server spends per byte depends on the phones too (with tokio's, Node `ws` measured 23 %
    /// more per byte, the gateway 6 %; why is not yet checked: docs/benchmarks.md, "lab
    /// compare").
    #[arg(long, default_value = "auto", value_name = "ENGINE")]
    pub phone_engine: String,

    /// The servers, in the order they take turns within a run.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Server::Gateway, Server::Aggregator, Server::NodeWs, Server::NodeSocketio])]
    pub servers: Vec<Server>,

    /// Where npm installs ws and socket.io (once).
    #[arg(long, default_value_os_t = default_node_dir(), value_name = "DIR")]
    pub node_dir: PathBuf,

    /// Where the run's files go. Default: lab-runs/compare-UNIXTIME.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// The folder of the aggregator, gateway and mobile-sim binaries. Default: the lab's own.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn default_node_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from(".bench-node"), |h| PathBuf::from(h).join(".cache/holdfast/bench-node"))
}

/// What to do with the kernel settings of deploy/sysctl/99-holdfast.conf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sysctl {
    /// Write those that fall short (as root; otherwise report only).
    Apply,
    /// Only report them.
    Report,
}

/// `--ehash-entries`: see [`HoldArgs::ehash_entries`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EhashEntries {
    /// A namespace of the run's own, a bucket per socket (the machine's table when not root).
    Auto,
    /// The machine's namespace and table.
    Shared,
    /// A namespace of the run's own with this many buckets.
    Buckets(u64),
}

impl std::str::FromStr for EhashEntries {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(EhashEntries::Auto),
            "shared" => Ok(EhashEntries::Shared),
            n => n
                .parse::<u64>()
                .ok()
                .filter(|&n| (1..=crate::netns::MAX_EHASH_ENTRIES).contains(&n))
                .map(EhashEntries::Buckets)
                .ok_or_else(|| {
                    format!(
                        "{s:?}: auto, shared or a number of buckets up to {}",
                        crate::netns::MAX_EHASH_ENTRIES
                    )
                }),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    /// Phones to hold, each one WebSocket to a gateway (and one TLS trunk session beyond it).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub phones: u64,

    /// How long to hold them once all are connected, seconds (the measurements' window).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub hold_s: u64,

    /// New phone connections per second during the ramp.
    #[arg(long, default_value_t = 10_000, value_name = "PER_SECOND")]
    pub rate: u64,

    /// Connection attempts in flight at once in each mobile-sim process (its `--concurrent`
    /// is this times its processes). The ramp's pace is at most this many attempts per
    /// handshake time: on a machine as busy as a million-phone run makes it, a handshake takes
    /// 100 ms or more, and mobile-sim's own default (256 in all) held the million to about
    /// 2,400 phones per second.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub concurrent_per_process: u64,

    /// mobile-sim rounds each phone's send times up to a multiple of this (`--send-tick`), so
    /// that one wakeup of a worker sends every byte due in the tick: the pauses stay random (at
    /// this resolution: 10 to 110 s in steps of 0.1 s) and the load generator's CPU per byte
    /// goes down, and the gateway's too (its bytes come in fewer, larger bursts). 0: exact
    /// times. 100 ms against 20 ms, with `--phone-io-batch-us` 100,000 against 20,000: 22.2
    /// against 25.5 us of mobile-sim's CPU per phone byte, 21.5 against 23.8 us of the
    /// gateways' (docs/benchmarks.md).
    #[arg(long, default_value_t = 100, value_name = "MS")]
    pub send_tick_ms: u64,

    /// The gateways' `--io-batch-us` (the gateway's default): while phones keep sending, a
    /// gateway's thread wakes at most once per this many microseconds and serves every phone
    /// that sent meanwhile. At a million phones a gateway hears about 300 bytes a second, one
    /// every 3 ms: with a 1 ms window nearly every byte is a wakeup of its own; 20 ms serves
    /// about six per wakeup and delays a count by at most 20 ms (it waits for the trunk's 250 ms
    /// flush anyway); 100 ms measured the same as 20 at 200,000 phones.
    #[arg(long, default_value_t = 20_000, value_name = "MICROSECONDS")]
    pub gateway_io_batch_us: u64,

    /// What runs mobile-sim's phones (its `--engine`): `host-runtime`, the gateway's own
    /// one-thread runtime with a few-line WebSocket client (what `auto`, the default, picks for
    /// the lab's ws:// gateways), or `tokio` with tokio-tungstenite (mobile-sim's engine before,
    /// to compare).
    #[arg(long, default_value = "auto", value_name = "ENGINE")]
    pub phone_engine: String,

    /// mobile-sim's `--io-batch-us` on the host runtime: as the gateways' window, on the phones'
    /// side (the `{"durable":N}` answers of a flush are read in one wakeup; a phone learns its
    /// count at most this much later).
    #[arg(long, default_value_t = 100_000, value_name = "MICROSECONDS")]
    pub phone_io_batch_us: u64,

    /// Sign each phone's device token as it connects (mobile-sim `--device-key`), inside the
    /// ramp, instead of issuing every token before the phones start (`mobile-sim tokens`, as an
    /// operator enrols phones; a real phone signs nothing when it connects).
    #[arg(long)]
    pub sign_tokens_at_connect: bool,

    /// The mean pause between two bytes of a phone, seconds: pauses are uniform in
    /// [mean/6, 11 mean/6] (the seed's traffic: one byte at random intervals; 10 to 110 s by
    /// default).
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub mean_interval_s: f64,

    /// Most phones one process holds (gateway or mobile-sim worker); the open-file limit lowers
    /// it further.
    #[arg(long, default_value_t = 19_000, value_name = "N")]
    pub per_process: u64,

    /// TLS trunk links per gateway.
    #[arg(long, default_value_t = 2, value_name = "K")]
    pub links: u8,

    /// The PostgreSQL server (`scripts/start-postgres.sh` prints one); the run gets a fresh
    /// database of its own on it, dropped at the end unless --keep-database.
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: String,

    /// Keep the run's database afterwards (its name is in the report).
    #[arg(long)]
    pub keep_database: bool,

    /// Where the run's files go (logs, mobile-sim's report, the lab's report as text, JSON and
    /// HTML). Default: lab-runs/hold-UNIXTIME.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// The folder of the aggregator, gateway and mobile-sim binaries. Default: the lab's own.
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,

    /// The kernel settings of deploy/sysctl/99-holdfast.conf: apply (as root) or report. The
    /// run's own network namespace (`--ehash-entries`) always gets those it has: nothing else
    /// lives there, and a new namespace starts from the kernel's defaults.
    #[arg(long, value_enum, default_value_t = Sysctl::Apply)]
    pub sysctl: Sysctl,

    /// The run's table of established TCP connections: `auto` (as root on Linux 6.1 or later:
    /// a network namespace of the run's own whose table has a bucket per socket the run holds;
    /// lab/src/netns.rs says why; otherwise as `shared`), `shared` (the machine's own table and
    /// namespace, sized at boot), or a number of buckets for the run's namespace.
    #[arg(long, default_value = "auto", value_name = "auto|shared|N")]
    pub ehash_entries: EhashEntries,

    /// The longest the ramp may take before the run fails, seconds.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub ramp_timeout_s: u64,

    /// After all phones connected, this long before the hold's measurements begin (the ramp's
    /// last handshakes and flushes settle), seconds.
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub settle_s: u64,

    /// After the phones stop, how long mobile-sim waits for every byte to be confirmed durable,
    /// seconds (the goal is 5; a longer wait measures how late it comes instead of failing).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub drain_timeout_s: u64,

    /// The niceness (0 to 19) of the gateways and mobile-sim: this one machine plays the phones,
    /// the sites and the centre, and with a hundred busy phone-side processes the scheduler's
    /// fair share leaves the aggregator's and PostgreSQL's few threads a hundredth of the CPU
    /// each, where a deployment gives the centre machines of its own. Niceness changes who
    /// waits, not how much CPU each tier uses (the per-tier figures). 0: all equal.
    #[arg(long, default_value_t = 10, value_name = "N",
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,

    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}
