//! Command line: `mobile-sim [phones] ...` (the default) and `mobile-sim gateways ...`.
//!
//! Flag names follow Thor where Thor has one (`-A/--amount`, `-C/--concurrent`, `-W/--workers`,
//! `-M/--messages`), so a Thor user's command line mostly carries over.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use cli_env::parse_duration;

const ABOUT: &str = "Simulated phones (or gateways) that hold long-lived WebSocket connections, send one \
                     byte at a time, and prove that every byte confirmed durable was persisted exactly once.";

const LONG_ABOUT: &str = "\
Simulated phones (or gateways) that hold long-lived WebSocket connections, send one byte at a time, \
and prove that every byte confirmed durable was persisted exactly once.

`phones` (the default command) opens N phone connections to the targets (gateways, or the \
aggregator's /ws), spread round-robin, at --rate connections per second. Each phone sends one byte at \
random intervals and counts what the server confirms durable ({\"durable\":N} text messages). Above \
--per-process phones, mobile-sim runs itself as worker processes and spreads source addresses over \
127.0.0.x.

`gateways` runs virtual site gateways that speak the trunk protocol straight to the aggregator: \
G gateways x P sessions load the central tier without one socket per phone.

Exit status: 0 when every check held: every connection (phone, or trunk link) was up at once at \
some point, no connection attempt failed and none dropped beyond --max-failed and --max-dropped \
(default: none), and with --verify every device was checked, bytes were sent and confirmed, every \
device that sent has a persisted row, nothing was lost or double-counted, and no byte stayed \
unconfirmed beyond --allow-unconfirmed (default: none). 1 when a check failed (the report names \
each rule that failed), 2 when the run could not be carried out.";

#[derive(Parser, Debug)]
#[command(
    name = "mobile-sim",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a command, the phones options apply.
    #[command(flatten)]
    pub phones: PhonesArgs,
}

impl Cli {
    /// The command to run (`phones` when none was named).
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Phones(Box::new(self.phones)))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Simulated phones: N WebSocket connections that send one byte at random intervals (default).
    Phones(Box<PhonesArgs>),
    /// Virtual gateways: G x P phone sessions carried over the trunk protocol to the aggregator.
    Gateways(Box<GatewaysArgs>),
    /// Device tokens issued before a run, as an operator enrols its phones: a file with phone
    /// i's token on line i, for `phones --token-file`.
    Tokens(TokensArgs),
}

#[derive(Args, Debug, Clone)]
pub struct TokensArgs {
    /// Phones to issue tokens for (the `phones --phones` of the run that uses them).
    #[arg(long = "phones", default_value_t = 1000, value_name = "N")]
    pub phones: u64,

    /// The device id prefix of the run (its `--device-prefix`).
    #[arg(long, default_value = "sim-", value_name = "PREFIX")]
    pub device_prefix: String,

    /// The aggregator's device-token key (its DATA_DIR/device-token.key).
    #[arg(long, env = "HOLDFAST_DEVICE_KEY", value_name = "FILE")]
    pub device_key: PathBuf,

    /// How long the tokens stay valid.
    #[arg(long, default_value = "24h", value_name = "DURATION", value_parser = parse_duration)]
    pub valid_for: Duration,

    /// Where the tokens go: one line per phone, all of the same length.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct PhonesArgs {
    /// Phones to simulate: one connection each (Thor: -A/--amount).
    #[arg(short = 'A', long = "phones", visible_alias = "amount", default_value_t = 1000, value_name = "N")]
    pub phones: u64,

    /// The aggregator's device-token key (its DATA_DIR/device-token.key, or --device-key): each
    /// phone then proves its device with `&token=`, as a real phone given a token by the operator
    /// does. Needed against an aggregator that requires phone tokens (its default).
    #[arg(long, env = "HOLDFAST_DEVICE_KEY", value_name = "FILE")]
    pub device_key: Option<PathBuf>,

    /// Tokens issued beforehand (`mobile-sim tokens`, with the same --phones and
    /// --device-prefix): phone i presents line i instead of a token signed as it connects. A
    /// real phone holds the token it was enrolled with, so this keeps the signing (about 24 us
    /// per token) out of the ramp the load generator is timing.
    #[arg(long, value_name = "FILE", conflicts_with = "device_key")]
    pub token_file: Option<PathBuf>,

    /// New connections per second, the ramp (0: no limit but --concurrent). Reconnects are not
    /// limited by the rate, only by --concurrent.
    #[arg(long, default_value_t = 1000.0, value_name = "PER_SECOND")]
    pub rate: f64,

    /// Worker processes (Thor: -W/--workers). Default: one per --per-process phones, and none
    /// (everything in this process) when N fits in one process.
    #[arg(short = 'W', long, value_name = "W")]
    pub workers: Option<usize>,

    /// Most phones one process holds before mobile-sim spreads them over worker processes (each
    /// connection is a file; a process may hold at most `ulimit -n` files).
    #[arg(long, default_value_t = 15_000, value_name = "N")]
    pub per_process: u64,

    /// Source addresses to bind before connecting, to get past the ~28k ephemeral ports of one
    /// address: a range `127.0.0.2-127.0.0.250`, a list `127.0.0.2,127.0.0.3` or one address.
    /// Default: for a loopback target, 127.0.0.2 and up, one address per 10,000 phones; otherwise
    /// none (the system chooses).
    #[arg(long, value_name = "RANGE", value_parser = parse_source_ips)]
    pub source_ips: Option<SourceIps>,

    /// Threads of each mobile-sim process's runtime (the parent's and every worker's). 1, the
    /// default: a current-thread runtime. Phones are light (a timer, a one-byte write, a short
    /// read), and on a multi-thread runtime the threads woke each other for nearly every message:
    /// a quarter of mobile-sim's CPU went to the kernel's thread switches and wakeups, and one
    /// thread costs 16 to 29 % less CPU per byte. Past one core's worth of phones, use more
    /// processes (--workers or --per-process); more threads here only help a ramp bound by TLS
    /// handshakes (about 1 ms of CPU each). With `--engine host-runtime` the phones run on that
    /// runtime's one thread whatever this says (the tokio runtime then only coordinates).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,

    /// What the phones speak over their WebSocket: holdfast's phone protocol (one-byte binary
    /// messages, `{"durable":N}` answers), or socket.io's (Engine.IO 4 over WebSocket only: `40`
    /// to join, each byte an event `42["b","."]`, answers `42["durable",N]`, the server's pings
    /// answered), to load the seed's stack with the same phones
    /// (`scripts/bench/peers/socketio-count-server.js`; the target's path is then
    /// `/socket.io/?EIO=4&transport=websocket`).
    #[arg(long, value_enum, default_value_t = Protocol::Holdfast)]
    pub protocol: Protocol,

    /// What runs the phones of each process. `host-runtime`: the host gateway's one-thread
    /// runtime (embassy's executor, a timing wheel, sockets registered once in edge-triggered
    /// epoll) and a WebSocket client of a few lines that keeps nothing per phone beyond its
    /// 128-byte read buffer; plain `ws://` and holdfast's protocol only. `tokio`: tokio with
    /// tokio-tungstenite, for `wss://` and socket.io. `auto`, the default: host-runtime where it
    /// can, tokio otherwise.
    #[arg(long, value_enum, default_value_t = Engine::Auto)]
    pub engine: Engine,

    /// With the host runtime: while phones keep receiving, its thread wakes at most once per
    /// this many microseconds and serves every phone whose answer came meanwhile (the gateway's
    /// `--io-batch-us`; a phone's answer waits up to this long to be read, which its count
    /// never notices). 0: wake for every readiness.
    #[arg(long, default_value_t = 1_000, value_name = "MICROSECONDS")]
    pub io_batch_us: u64,

    #[command(flatten)]
    pub common: CommonArgs,

    /// Internal: this process is worker I of --worker-count (set by the parent process).
    #[arg(long, hide = true, requires = "worker_count")]
    pub worker_index: Option<usize>,

    /// Internal: how many workers the parent started.
    #[arg(long, hide = true, requires = "worker_index")]
    pub worker_count: Option<usize>,
}

#[derive(Args, Debug, Clone)]
pub struct GatewaysArgs {
    /// Virtual gateways to run (default: every gateway in --gateways-file).
    #[arg(long, value_name = "G")]
    pub gateways: Option<usize>,

    /// Phone sessions each gateway carries.
    #[arg(long, default_value_t = 500, value_name = "P")]
    pub sessions_per_gateway: usize,

    /// Trunk links (WebSockets) per gateway, 1 to 8.
    #[arg(long, default_value_t = 2, value_name = "K")]
    pub links: usize,

    /// Gateway names and secrets, one `NAME HEXSECRET` per line, as printed by
    /// `aggregator gateway add NAME...` (blank lines and lines starting with # are skipped).
    #[arg(long, value_name = "FILE")]
    pub gateways_file: PathBuf,

    /// Sessions opened per second over all gateways (0: all at once).
    #[arg(long, default_value_t = 0.0, value_name = "PER_SECOND")]
    pub rate: f64,

    /// The trunk batching window: how often each link flushes counts.
    #[arg(long, default_value = "250ms", value_name = "DURATION", value_parser = parse_duration)]
    pub flush_interval: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options of both modes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Where to connect, repeatable: ws://HOST:PORT/PATH or wss://... (gateways, or the
    /// aggregator's /ws for phones; the aggregator's /trunk for gateways, the default path there).
    /// Connections are spread over the targets round-robin.
    #[arg(long = "target", required = true, value_name = "URL")]
    pub targets: Vec<String>,

    /// PEM file of the CA that wss:// servers must chain to: the only trusted root (TLS 1.3 only).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Connection attempts in flight at once: bounds concurrent TCP+TLS+WebSocket handshakes
    /// (Thor: -C/--concurrent).
    #[arg(short = 'C', long, default_value_t = 256, value_name = "N")]
    pub concurrent: usize,

    /// Give up a connection attempt (TCP connect to WebSocket upgraded) after this long.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Shortest pause between two bytes of one phone (or session).
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    pub min_interval: Duration,

    /// Longest pause between two bytes of one phone (or session).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub max_interval: Duration,

    /// Round each phone's send times up to a multiple of this since the process started, so
    /// that one wakeup of the process sends for every phone due within the same tick instead of
    /// one wakeup (a context switch) per byte. Pauses stay random, at this resolution. 0: exact.
    #[arg(long, default_value = "0ms", value_name = "DURATION", value_parser = parse_duration)]
    pub send_tick: Duration,

    /// How pauses are drawn: uniform in [min, max]; or exponential: min plus an exponential delay
    /// of mean (max - min) / 2, so the mean pause is uniform's (bursty, and not capped at max).
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,

    /// How long the run lasts, counted from the start (the ramp included); then phones stop
    /// sending, drain and close. Units: ms, s, m, h (a bare number is seconds).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Bytes each phone (or session) sends, one per message (Thor: -M/--messages); the run ends
    /// when all have sent them (or at --duration). Without --duration or --messages, the run lasts
    /// until Ctrl-C.
    #[arg(short = 'M', long, value_name = "M")]
    pub messages: Option<u64>,

    /// Connection attempts (TCP, TLS, WebSocket upgrade, trunk handshake) that may fail before
    /// the run fails. Default none: a run where a server refuses anyone fails. A drill that
    /// kills a server on purpose gives its bound here.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_failed: u64,

    /// Established connections that may be lost (other than by our own close) before the run
    /// fails. Default none.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_dropped: u64,

    /// At the end, how long to wait for the server to confirm durable everything sent.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Device ids are this prefix and the phone index (sim-000042), sent as `?device=ID`; in
    /// gateways mode `{prefix}{gateway}-{p}`. Use a fresh prefix per run when verifying against a
    /// database that keeps earlier runs.
    #[arg(long, default_value = "sim-", value_name = "PREFIX")]
    pub device_prefix: String,

    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub verify: VerifyArgs,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Print the final report as JSON (on stdout) instead of text.
    #[arg(long)]
    pub json: bool,

    /// Write a self-contained HTML report (inline SVG charts) to FILE.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Write every device's totals to FILE as CSV: device,sent,durable.
    #[arg(long, value_name = "FILE")]
    pub per_device: Option<PathBuf>,

    /// No progress display (it is also hidden when stdout is not a terminal).
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Verification")]
pub struct VerifyArgs {
    /// After the run, compare every device's bytes sent and confirmed durable with what was
    /// persisted (needs --database-url or --verify-url). Lost bytes (confirmed but not persisted)
    /// or double-counted bytes (persisted more than sent) make the exit status 1.
    #[arg(long)]
    pub verify: bool,

    /// Read persisted totals from the database: postgres://... or sqlite://... (the aggregator's
    /// `device_totals` view: device, bytes).
    #[arg(long, value_name = "URL", requires = "verify", conflicts_with = "verify_url")]
    pub database_url: Option<String>,

    /// Read persisted totals from the aggregator: https://HOST:PORT/api/devices?prefix=P
    /// (`?prefix=` with --device-prefix is added when the URL has no query).
    #[arg(long, value_name = "URL", requires = "verify")]
    pub verify_url: Option<String>,

    /// Bytes that may stay unconfirmed after the drain (sent, never confirmed durable) before
    /// verification fails. Default none: every byte sent must be confirmed. A drill that kills a
    /// server with bytes in flight gives its bound here.
    #[arg(long, default_value_t = 0, value_name = "BYTES", requires = "verify")]
    pub allow_unconfirmed: u64,
}

/// A phone's protocol over its WebSocket (`--protocol`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// holdfast's phone protocol (gateways, the aggregator's /ws, Node's ws yardstick).
    Holdfast,
    /// socket.io 4 (Engine.IO 4) over WebSocket, for the seed's stack as a yardstick.
    #[value(name = "socketio")]
    SocketIo,
}

/// What runs a process's phones (`--engine`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// host-runtime for plain ws:// targets and holdfast's protocol, tokio otherwise.
    Auto,
    /// tokio and tokio-tungstenite: every target and protocol.
    Tokio,
    /// The host gateway's one-thread runtime (ws:// and holdfast's protocol only).
    HostRuntime,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    Uniform,
    Exponential,
}

impl CommonArgs {
    /// The pause before a phone's next byte, drawn from the configured distribution.
    pub fn next_interval(&self) -> Duration {
        let min = self.min_interval.as_secs_f64();
        let max = self.max_interval.as_secs_f64().max(min);
        let secs = match self.distribution {
            Distribution::Uniform => min + rand::random::<f64>() * (max - min),
            Distribution::Exponential => {
                let mean = (max - min) / 2.0;
                // 1 - U is in (0, 1], so the logarithm is finite.
                min - mean * (1.0 - rand::random::<f64>()).ln()
            }
        };
        Duration::from_secs_f64(secs)
    }

    /// When a phone that sends at `now` sends next: after [`Self::next_interval`], rounded up to
    /// the next multiple of `--send-tick` since `epoch` (the process's start).
    pub fn next_send(&self, now: Instant, epoch: Instant) -> Instant {
        let at = now + self.next_interval();
        let tick = self.send_tick.as_micros();
        if tick == 0 {
            return at;
        }
        let since = at.saturating_duration_since(epoch).as_micros();
        let rounded = since.div_ceil(tick) * tick;
        epoch + Duration::from_micros(u64::try_from(rounded).unwrap_or(u64::MAX))
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.concurrent > 0, "--concurrent must be at least 1");
        anyhow::ensure!(
            self.min_interval <= self.max_interval,
            "--min-interval must not exceed --max-interval"
        );
        anyhow::ensure!(!self.max_interval.is_zero(), "--max-interval must be more than 0");
        anyhow::ensure!(
            !self.verify.verify || self.verify.database_url.is_some() || self.verify.verify_url.is_some(),
            "--verify needs --database-url or --verify-url"
        );
        Ok(())
    }
}

/// Source addresses, used round-robin by phone index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceIps(pub Vec<IpAddr>);

fn parse_source_ips(s: &str) -> Result<SourceIps, String> {
    let mut ips = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
            let b: Ipv4Addr = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if a > b {
                return Err(format!("{part}: the range is empty"));
            }
            if b - a >= 1 << 16 {
                return Err(format!("{part}: more than 65536 addresses"));
            }
            ips.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
        } else {
            ips.push(part.parse::<IpAddr>().map_err(|e| format!("{part}: {e}"))?);
        }
    }
    if ips.is_empty() {
        return Err("no addresses".into());
    }
    Ok(SourceIps(ips))
}

/// Hex-decodes a gateway secret.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if bytes.len() % 2 != 0 {
        return None;
    }
    bytes.chunks(2).map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges() {
        let r = parse_source_ips("127.0.0.2-127.0.0.4").unwrap();
        assert_eq!(r.0.len(), 3);
        assert_eq!(r.0[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(parse_source_ips("127.0.0.9, 127.0.1.1").unwrap().0.len(), 2);
        assert!(parse_source_ips("127.0.0.4-127.0.0.2").is_err());
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex("00ff10Ab"), Some(vec![0, 255, 16, 171]));
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex(""), Some(vec![]));
    }

    #[test]
    fn send_times_fall_on_the_tick_and_stay_random() {
        let args = |tick: &str| {
            let flags = ["--target", "ws://x/", "--min-interval", "1s", "--max-interval", "2s"];
            let cli = Cli::try_parse_from(["mobile-sim"].iter().chain(&flags).chain(&["--send-tick", tick]))
                .unwrap();
            match cli.into_command() {
                Command::Phones(p) => p.common,
                _ => panic!("expected phones"),
            }
        };
        let epoch = Instant::now();
        let now = epoch + Duration::from_millis(1_234);
        let ticked = args("20ms");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let at = ticked.next_send(now, epoch);
            let since = (at - epoch).as_micros();
            assert_eq!(since % 20_000, 0, "on the tick: {since} us");
            assert!(at >= now + Duration::from_secs(1) && at < now + Duration::from_millis(2_020));
            seen.insert(since);
        }
        assert!(seen.len() > 10, "still random at the tick's resolution: {} distinct", seen.len());
        let exact = args("0ms");
        let off_tick = (0..20).any(|_| (exact.next_send(now, epoch) - epoch).as_micros() % 20_000 != 0);
        assert!(off_tick, "0 keeps exact times");
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn phones_is_the_default_command() {
        let cli = Cli::try_parse_from(["mobile-sim", "--target", "ws://127.0.0.1:1/", "-A", "5"]).unwrap();
        match cli.into_command() {
            Command::Phones(p) => assert_eq!((p.phones, p.threads), (5, 1), "one thread by default"),
            _ => panic!("expected phones"),
        }
        let cli =
            Cli::try_parse_from(["mobile-sim", "phones", "--target", "ws://x/", "--amount", "7"]).unwrap();
        match cli.into_command() {
            Command::Phones(p) => assert_eq!(p.phones, 7),
            _ => panic!("expected phones"),
        }
        let cli = Cli::try_parse_from([
            "mobile-sim",
            "gateways",
            "--target",
            "ws://x/",
            "--gateways-file",
            "g.txt",
        ])
        .unwrap();
        assert!(matches!(cli.into_command(), Command::Gateways(_)));
        assert!(Cli::try_parse_from(["mobile-sim", "-A", "5"]).is_err(), "--target is required");
        assert!(Cli::try_parse_from(["mobile-sim", "--target", "ws://x/", "--threads", "0"]).is_err());
    }
}
