//! `lab cluster` (README's run command, through scripts/run.sh): a local cluster that shows
//! phones being counted. The store, N aggregators behind nginx, G host gateways of 500 phones on
//! TLS trunks through nginx and P phones straight to the aggregators, each phone sending a byte
//! every 0.2-2 s for the duration; then mobile-sim's verification of every phone. It prints where
//! to look, and keeps the cluster running until Ctrl-C (with --once it stops after the
//! verification).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use cli_env::Interrupts;

use crate::cluster::load::{Load, LoadSpec};
use crate::cluster::{spelled, Cluster, GatewayKind, Settings, StoreKind, TlsMode};
use crate::report::SimReport;

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Stop right after the verification, instead of keeping the cluster up until Ctrl-C.
    #[arg(long)]
    pub once: bool,

    /// For a real phone on this machine's network: nginx listens on the LAN address too, the
    /// certificate names it, and the phone page's address is printed as a QR code.
    #[arg(long)]
    pub lan: bool,

    /// The LAN address (default: the source address of this machine's default route).
    #[arg(long, env = "HOLDFAST_LAN_ADDRESS", value_name = "ADDRESS")]
    pub lan_address: Option<IpAddr>,

    /// Where the counts are kept.
    #[arg(long, value_enum, default_value = "auto")]
    pub store: StoreKind,

    #[arg(long, default_value_t = 2, value_name = "N")]
    pub aggregators: u32,

    /// Gateways, each with 500 phones.
    #[arg(long, default_value_t = 3, value_name = "G")]
    pub gateways: u32,

    /// Phones straight to the aggregators through nginx.
    #[arg(long, default_value_t = 300, value_name = "N")]
    pub phones: u64,

    /// How long the phones send (mobile-sim's form: 30s, 2m).
    #[arg(long, env = "DEMO_DURATION", default_value = "30s")]
    pub duration: String,

    /// Where TLS ends: at nginx, or at the aggregators (nginx passes TCP through).
    #[arg(long, value_enum, default_value = "terminate")]
    pub tls: TlsMode,

    /// What a gateway is: firmware/host's `gateway`, or mobile-sim's virtual gateway.
    #[arg(long, value_enum, env = "HOLDFAST_GATEWAY", default_value = "host")]
    pub gateway: GatewayKind,

    /// Data, certificates, logs (kept between runs).
    #[arg(long, env = "HOLDFAST_DATA_DIR", default_value = "holdfast-data", value_name = "DIR")]
    pub data_dir: PathBuf,

    /// nginx's address; the cluster uses its port for every part.
    #[arg(long, env = "HOLDFAST_LISTEN", default_value = "127.0.0.1:8443", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Where the aggregator, gateway and mobile-sim binaries are (default: next to the lab).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// `lab nginx-config`: the cluster's nginx.conf without starting anything (scripts/check-deploy.sh
/// runs `nginx -t` on it): the certificates in DIR/pki, the configuration in DIR/nginx.
#[derive(Debug, clap::Args)]
pub struct NginxConfigArgs {
    #[arg(long, value_enum, default_value = "terminate")]
    pub tls: TlsMode,

    #[arg(long, default_value_t = 2, value_name = "N")]
    pub aggregators: u32,

    /// The cluster's port.
    #[arg(long, default_value_t = 8443)]
    pub port: u16,

    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
}

/// Runs `lab nginx-config`; prints the configuration's path.
pub async fn nginx_config(args: NginxConfigArgs) -> anyhow::Result<bool> {
    let mut settings = Settings::new(bin_dir(args.bin_dir)?);
    settings.tls = args.tls;
    settings.aggregators = args.aggregators;
    settings.store = StoreKind::Sqlite;
    let cluster = Cluster::init(&args.dir, args.port, settings).await?;
    cluster.make_pki().await?;
    let prefix = cluster.dir.join("nginx");
    std::fs::create_dir_all(prefix.join("logs"))?;
    std::fs::create_dir_all(prefix.join("tmp"))?;
    println!("{}", cluster.render_nginx(&prefix)?.display());
    Ok(true)
}

/// The folder of the lab's own binary (where cargo put the others).
pub fn bin_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(d) => Ok(d),
        None => Ok(std::env::current_exe()?.parent().context("the lab's folder")?.to_owned()),
    }
}

/// The address this machine's default route leaves from: a routing decision, nothing is sent.
fn lan_address() -> anyhow::Result<IpAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).context("no default route")?;
    Ok(socket.local_addr()?.ip())
}

/// Runs `lab cluster`: Ok(true) when every load verified.
pub async fn run(args: ClusterArgs) -> anyhow::Result<bool> {
    let mut signals = Interrupts::catch()?;
    let mut settings = Settings::new(bin_dir(args.bin_dir.clone())?);
    settings.aggregators = args.aggregators;
    settings.store = args.store;
    settings.tls = args.tls;
    settings.gateways = args.gateways;
    settings.gateway = args.gateway;
    if args.lan {
        settings.lan_address = Some(match args.lan_address {
            Some(a) => a,
            None => lan_address()
                .context("--lan: cannot tell this machine's LAN address; set HOLDFAST_LAN_ADDRESS")?,
        });
    }
    let mut cluster = Cluster::init(&args.data_dir, args.listen.port(), settings).await?;
    let result = tokio::select! {
        r = demo(&mut cluster, &args) => r,
        signal = signals.recv() => {
            eprintln!("[cluster] {signal}: stopping everything this started");
            Ok(true)
        }
    };
    cluster.stop_all().await;
    result
}

async fn demo(cluster: &mut Cluster, args: &ClusterArgs) -> anyhow::Result<bool> {
    let started = Instant::now();
    eprintln!(
        "[cluster] starting: store {}, {} aggregators, nginx on {} (TLS: {})",
        spelled(cluster.store),
        cluster.settings.aggregators,
        cluster.front(),
        spelled(cluster.settings.tls)
    );
    cluster.start_servers().await?;
    println!("\nholdfast local cluster is up ({} s):", started.elapsed().as_secs());
    print!("{}", where_to_look(cluster).await?);
    println!();

    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let run = format!("run{stamp}-");
    eprintln!(
        "[cluster] {} gateways x {} phones on TLS trunks, and {} phones straight to the aggregators, for {}",
        args.gateways, cluster.settings.sessions, args.phones, args.duration
    );
    let spec = LoadSpec::new(&args.duration, &run);
    let mut loads = Vec::new();
    for i in 1..=args.gateways {
        loads.push(cluster.start_gateway_load(i, &spec, None).await?);
    }
    // The direct phones in the foreground: their progress shows phones connected and bytes
    // counted, and their report is mobile-sim's text.
    let direct =
        LoadSpec { text: true, quiet: false, ..LoadSpec::new(&args.duration, &format!("{run}phone-")) };
    let phones = cluster.start_direct_phones(args.phones, &direct, true)?;
    let mut ok = wait_ok(cluster, &phones).await;
    for (i, load) in loads.iter().enumerate() {
        let exited = wait_ok(cluster, load).await;
        println!("\n== gateway {} ({})", i + 1, load.report.display());
        match load.read() {
            Ok(r) => {
                print!("{}", summary(&r));
                ok &= exited && r.ok;
            }
            Err(e) => {
                println!("  {e:#}");
                ok = false;
            }
        }
    }
    if !ok {
        bail!("a verification failed (reports above, logs in {})", cluster.dir.display());
    }
    println!(
        "\nEvery phone connected, every byte it sent was confirmed durable and is in the database, none\n\
         twice (mobile-sim's verdict on each of the {} loads above). Totals of this run:",
        loads.len() + 1
    );
    println!(
        "  curl --cacert {} 'https://localhost:{}/api/devices?prefix={run}&token={}'",
        cluster.ca().display(),
        cluster.port,
        cluster.dashboard_token
    );
    if args.once {
        return Ok(true);
    }
    println!("\nThe cluster keeps running (Ctrl-C stops everything this started):");
    print!("{}", where_to_look(cluster).await?);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.check_servers()?;
    }
}

/// Waits for a load's process, however long its --duration; whether it exited 0. (Ctrl-C stops
/// the wait and the cluster.)
async fn wait_ok(cluster: &mut Cluster, load: &Load) -> bool {
    cluster.wait(&load.name, None).await.is_some_and(|s| s.success())
}

/// A load's report in a few lines: connections, bytes, verification, verdict.
pub fn summary(r: &SimReport) -> String {
    let c = &r.connections;
    let mut s = format!(
        "  connections  {} established, {} failed, {} dropped\n  bytes        {} sent, {} confirmed durable, {} unconfirmed\n",
        c.established, c.failed, c.dropped, r.bytes.sent, r.bytes.durable, r.bytes.unconfirmed
    );
    match &r.verification {
        Some(v) => s.push_str(&format!(
            "  verification {} of {} devices checked: {} lost, {} double-counted, {} unconfirmed\n",
            v.devices_checked, v.devices_expected, v.lost_bytes, v.double_counted_bytes, v.unconfirmed_bytes
        )),
        None => s.push_str("  verification none\n"),
    }
    s.push_str(&format!("  verdict      {}\n", if r.ok { "OK" } else { "FAILED" }));
    for f in r.failure_lines() {
        s.push_str(&format!("    rule {f}\n"));
    }
    s
}

/// What to look at, for people: the phone page (a demo device's token), the dashboard, the
/// metrics of each aggregator, the CA, the store.
async fn where_to_look(c: &Cluster) -> anyhow::Result<String> {
    let host = c.settings.lan_address.map_or("localhost".to_owned(), |a| a.to_string());
    let port = c.port;
    let device = format!("web-{}", &crate::cluster::random_hex(4));
    let (device, token) = c.device_token(&device, 30).await.context("cannot issue a device token")?;
    let page = format!("https://{host}:{port}/?device={device}&token={token}");
    let ca = c.ca();
    let db = match (&c.postgres, c.store) {
        (Some(pg), _) => format!(
            "{}  (password in {}; log {})",
            redact(&c.db_url),
            c.dir.join("postgres.password").display(),
            pg.log().display()
        ),
        _ => format!(
            "SQLite {}, shared by the aggregators (WAL; one machine)",
            c.db_url.trim_start_matches("sqlite://")
        ),
    };
    let mut s = String::new();
    let mut line = |what: &str, text: String| s.push_str(&format!("  {what:<23} {text}\n"));
    line(
        "phone page",
        format!(
            "{page}   (a demo device; more: aggregator --device-key {} device token ID)",
            c.device_key().display()
        ),
    );
    line(
        "dashboard",
        format!(
            "https://{host}:{port}/dashboard?token={}   (the figures of the aggregator nginx picks; each one's below)",
            c.dashboard_token
        ),
    );
    line("metrics", "per aggregator, below".into());
    line(
        "front (nginx, TLS 1.3)",
        format!("https://localhost:{port}   phones: wss://localhost:{port}/ws?device=ID   gateways: wss://localhost:{port}/trunk"),
    );
    line(
        "CA to pin",
        format!("{}   (curl --cacert {} ...; phones: https://{host}:{port}/ca)", ca.display(), ca.display()),
    );
    line(
        "device totals",
        format!("https://localhost:{port}/api/devices?prefix=PREFIX&token={}", c.dashboard_token),
    );
    line("database", db);
    line(
        "nginx",
        format!(
            "{}, logs in {}/",
            c.dir.join("nginx/nginx.conf").display(),
            c.dir.join("nginx/logs").display()
        ),
    );
    for i in 1..=c.settings.aggregators {
        let url = c.aggregator_url(i);
        s.push_str(&format!(
            "  aggregator {i:<12} {url}/metrics   {url}/dashboard?token={}   log {}\n",
            c.dashboard_token,
            c.dir.join(format!("aggregator-{i}.log")).display()
        ));
    }
    if let Some(lan) = c.settings.lan_address {
        let offer = aggregator::lan::CaOffer::load(&ca)?;
        s.push_str(&format!(
            "\nOn the phone (same Wi-Fi; nginx listens on {lan} too): install the CA\n\
             from https://{lan}:{port}/ca (accept the certificate warning that one time; check that the phone\n\
             shows SHA-256 {}),\nthen open the phone page:\n",
            offer.fingerprint
        ));
        use std::io::IsTerminal;
        s.push_str(&aggregator::qr::render(&page, std::io::stdout().is_terminal())?);
        s.push_str(&format!("  {page}\n"));
    }
    Ok(s)
}

/// A database URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let user_end = url[scheme + 3..at].find(':').map_or(at, |c| scheme + 3 + c);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            super::redact("postgres://holdfast:s3cret@127.0.1.200:8443/holdfast"),
            "postgres://holdfast:***@127.0.1.200:8443/holdfast"
        );
        assert_eq!(super::redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
