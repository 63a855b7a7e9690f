//! # aggregator: the central service of holdfast
//!
//! One listener (TLS 1.3 unless `--plain`) serves phones on `/ws`, gateway trunks on `/trunk`,
//! probes, metrics and the JSON API. Phones' bytes and trunks' reports meet in one ledger
//! (`trunk::ledger`), which a single flusher writes to the store in one transaction per flush;
//! acknowledgements travel back only after the commit.
//!
//! - [`Service`]: the service itself: [`Service::prepare`] (settings, store, keys, TLS), then
//!   [`Service::run`] on a listener until a stop signal; [`serve`] is what the binary does.
//! - [`config`]: every setting, by flag or environment.
//! - [`server`]: listener, TLS, HTTP; [`http`]: the routes; [`websocket`]: the upgrade.
//! - [`phone`]: a direct phone's session; [`trunk_link`]: a gateway's link.
//! - [`state`]: what connection tasks share; [`routes`]: where acknowledgements go back;
//!   [`gateways`]: the gateways with links here, their quotas and what the dashboard shows of
//!   them; [`flusher`]: ledger to database, then acks;
//!   [`compactor`]: merges the journal into the sessions table, folds finished sessions into
//!   per-device totals.
//! - [`store`]: Postgres and SQLite; [`tls`]: certificates.
//! - [`web`]: the phone page and the dashboard's static files, and who may read the dashboard;
//!   [`dashboard`]: its live snapshots; [`request`]: query values and secrets compared.
//! - [`lan`]: the start-up message (where to look) and `--lan`; [`qr`]: QR codes in the terminal.
//! - [`metrics`], [`shutdown`] (and the drain), [`workers`]; bounds per client address are the
//!   `address-limits` crate (shared with the host gateway).

pub mod batch;
pub mod compactor;
pub mod config;
pub mod dashboard;
pub mod devices;
pub mod flusher;
pub mod gateways;
pub mod http;
pub mod lan;
pub mod metrics;
pub mod phone;
pub mod qr;
pub mod request;
pub mod routes;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod tls;
pub mod trunk_link;
pub mod web;
pub mod websocket;
pub mod workers;

use std::sync::Arc;

use anyhow::Context;
use tracing::{info, warn};

use config::{Cli, Command, GatewayCommand, Settings};
use store::Store;

/// Internal: set by a `--workers` parent for its workers when it made the dashboard token.
const TOKEN_MADE_BY_PARENT: &str = "HOLDFAST_INTERNAL_DASHBOARD_TOKEN_MADE";

/// Runs what the command line asks for.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Gateway(cmd)) => gateway_command(cmd, &cli.serve).await,
        Some(Command::Device(cmd)) => devices::command(cmd, &cli.serve),
        Some(Command::Certificate) => {
            let s = &cli.serve;
            let files = tls::self_made_files(&s.data_dir, &s.tls_sans)?;
            println!("ca {}", files.ca_cert.display());
            println!("cert {}", files.cert.display());
            println!("key {}", files.key.display());
            Ok(())
        }
        Some(Command::Qr { url }) => {
            use std::io::IsTerminal as _;
            print!("{}", qr::render(&url, std::io::stdout().is_terminal())?);
            Ok(())
        }
        Some(Command::Serve) | None => {
            let mut s = cli.serve;
            let lan = lan::apply(&mut s)?;
            let token_made = web::make_token_if_unset(&mut s);
            if s.workers > 1 && s.worker_index.is_none() {
                // Migrations, self-made certificates and the device key once, before the workers
                // race for them.
                open_store(&s).await?.close().await;
                devices::verifier(&s)?;
                if !s.plain {
                    tls_config(&s)?;
                }
                // A token made for this run must be the same in every worker (each would make its
                // own otherwise); worker 0 prints it.
                let env = if token_made {
                    vec![
                        ("HOLDFAST_DASHBOARD_TOKEN", s.dashboard_token.clone()),
                        (TOKEN_MADE_BY_PARENT, "1".to_owned()),
                    ]
                } else {
                    Vec::new()
                };
                workers::supervise(s.workers, &env).await
            } else {
                // A worker was given the parent's token: the parent made it, so worker 0 prints it.
                let token_made = token_made
                    || (s.worker_index.is_some() && std::env::var_os(TOKEN_MADE_BY_PARENT).is_some());
                serve(s, lan, token_made).await
            }
        }
    }
}

async fn open_store(s: &Settings) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("cannot create {}", s.data_dir.display()))?;
    Store::open(s.database_url.as_deref(), &s.data_dir, s.db_connections).await
}

/// The write path's own connections to `store`'s database (state::Shared::writer): for
/// PostgreSQL a second pool, one connection per flush in flight and one for the compactor; the
/// embedded SQLite store has one writer, so the same pool.
async fn open_writer(s: &Settings, store: &Store) -> anyhow::Result<Store> {
    match store {
        Store::Postgres(_) => {
            let connections = u32::try_from(s.flushes_in_flight.max(1) + 1).unwrap_or(u32::MAX);
            Store::open(s.database_url.as_deref(), &s.data_dir, connections).await
        }
        Store::Sqlite(_) => Ok(store.clone()),
    }
}

async fn gateway_command(cmd: GatewayCommand, s: &Settings) -> anyhow::Result<()> {
    // Say which database this is: run from another folder, or without the service's
    // DATABASE_URL, `gateway add` would provision into a database the aggregator never reads.
    let (database, new) = match &s.database_url {
        Some(url) => (store::redact(url), false),
        None => {
            let file =
                std::path::absolute(s.data_dir.join("holdfast.db")).unwrap_or(s.data_dir.join("holdfast.db"));
            let new = !file.exists();
            (format!("the SQLite database {}", file.display()), new)
        }
    };
    let store = open_store(s).await?;
    if new {
        eprintln!(
            "note: made a new, empty {database}: an aggregator reads these gateways only with this same \
             --data-dir (or give --database-url)"
        );
    } else {
        eprintln!("database: {database}");
    }
    match cmd {
        GatewayCommand::Add { names } => {
            for name in names {
                anyhow::ensure!(
                    !name.is_empty() && name.len() <= trunk::frame::MAX_GATEWAY_ID_LEN,
                    "a gateway name is 1 to {} bytes",
                    trunk::frame::MAX_GATEWAY_ID_LEN
                );
                let g = store.gateway_add(&name).await?;
                let hex: String = g.secret.iter().map(|b| format!("{b:02x}")).collect();
                println!("{} {hex}", g.name);
            }
        }
        GatewayCommand::List => {
            for g in store.gateway_list().await? {
                println!(
                    "{}\t{}\tcreated {}\tlast seen {}",
                    g.number,
                    g.name,
                    g.created,
                    g.last_seen.as_deref().unwrap_or("never")
                );
            }
        }
        GatewayCommand::Remove { name } => {
            anyhow::ensure!(store.gateway_remove(&name).await?, "no gateway named {name}");
            println!("removed {name}");
        }
    }
    Ok(())
}

/// Loads or makes the TLS configuration, printing the CA's path when it is self-made; that
/// path too.
fn tls_config(s: &Settings) -> anyhow::Result<(Arc<rustls::ServerConfig>, Option<std::path::PathBuf>)> {
    let (config, ca) = tls::server_config(
        s.tls_cert.as_deref(),
        s.tls_key.as_deref(),
        &s.data_dir,
        &s.tls_sans,
        &[b"http/1.1"],
        usize::from(s.tls_record_plaintext),
    )?;
    let ca = ca.map(|ca| ca.canonicalize().unwrap_or(ca));
    if let Some(ca) = &ca {
        // Printed, not logged: gateways and mobile-sim need this path to pin the CA. Workers
        // leave it to their parent.
        if s.worker_index.is_none() {
            println!("CA certificate (pin it in gateways and mobile-sim): {}", ca.display());
        }
    }
    Ok((config, ca))
}

/// Serves until SIGTERM or Ctrl-C, then shuts down gracefully. `lan`: what `--lan` decided
/// ([`lan::apply`], already applied to `s`); `token_made`: the dashboard token was made for this
/// run ([`web::make_token_if_unset`]), so the start-up message prints it.
pub async fn serve(s: Settings, lan: Option<lan::Lan>, token_made: bool) -> anyhow::Result<()> {
    let service = Service::prepare(s).await?;
    let s = &service.settings;
    let listener =
        server::bind(s.listen, s.workers > 1).with_context(|| format!("cannot listen on {}", s.listen))?;
    let scheme = if service.tls.is_some() { "https" } else { "http" };
    println!(
        "listening on {scheme}://{} (phones: /ws, trunks: /trunk, metrics: /metrics)",
        listener.local_addr()?
    );
    if s.worker_index.unwrap_or(0) == 0 {
        let addr = listener.local_addr()?;
        print!("{}", lan::where_to_look(s, scheme, addr, service.ca.as_ref(), lan.as_ref(), token_made)?);
    }
    service.run(listener, shutdown::signal()).await
}

/// The service with everything it needs before it accepts anyone: the settings checked, the
/// store open and migrated, the device key and the TLS configuration loaded. A setting that
/// cannot work fails here, before a port is taken.
pub struct Service {
    settings: Settings,
    store: Store,
    writer: Store,
    phone_key: Option<device_token::PublicKey>,
    enrolment: Option<devices::Enrolment>,
    tls: Option<Arc<rustls::ServerConfig>>,
    ca: Option<lan::CaOffer>,
}

impl Service {
    /// Checks `s`, opens the store (running migrations), loads the keys and certificates.
    pub async fn prepare(s: Settings) -> anyhow::Result<Service> {
        s.check()?;
        let store = open_store(&s).await?;
        let writer = open_writer(&s, &store).await?;
        info!(store = store.kind(), "store ready, migrations applied");
        let phone_key = devices::verifier(&s)?;
        let enrolment = devices::Enrolment::from_settings(&s)?;
        if phone_key.is_none() {
            warn!("--phone-auth off: phones are believed; anyone can add bytes to any device");
        }
        let (tls, self_made_ca) = if s.plain {
            warn!("serving plain HTTP: only behind a proxy that terminates TLS");
            (None, None)
        } else {
            let (config, ca) = tls_config(&s)?;
            (Some(config), ca)
        };
        let ca = match s.ca_cert.clone().or(self_made_ca) {
            Some(path) => Some(lan::CaOffer::load(&path)?),
            None => None,
        };
        Ok(Service { settings: s, store, writer, phone_key, enrolment, tls, ca })
    }

    /// Serves on `listener` until `stop` resolves, then shuts down gracefully: go-away to
    /// trunks, close 1001 to phones, at most `--shutdown-grace-ms` for them to finish, a last
    /// flush. The binary passes SIGTERM/Ctrl-C ([`shutdown::signal`]); a test, any future (in
    /// the style of mini-redis's `server::run(listener, shutdown)`).
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let Service { settings: s, store, writer, phone_key, enrolment, tls, ca } = self;
        let (stop_tx, stop_rx) = shutdown::channel();
        let (flush_stop_tx, flush_stop_rx) = shutdown::channel();
        let grace = s.shutdown_grace();
        let mut shared = state::Shared::new(s, store, writer, stop_rx);
        shared.phone_key = phone_key;
        shared.enrolment = enrolment;
        shared.ca_pem = ca.map(|ca| ca.pem.into());
        let shared = Arc::new(shared);
        let flusher = tokio::spawn(flusher::run(shared.clone(), flush_stop_rx.clone()));
        let flushes = shared.clone();
        tokio::spawn(compactor::run(
            shared.writer.clone(),
            shared.settings.compactor(),
            shared.metrics.clone(),
            move || flushes.flushes(),
            flush_stop_rx.clone(),
        ));
        tokio::spawn(dashboard::run(dashboard::Sources {
            dashboard: shared.dashboard.clone(),
            metrics: shared.metrics.clone(),
            gateways: shared.gateways.clone(),
            last_flush: shared.last_flush.clone(),
            started: shared.started,
            store: shared.store.kind(),
            worker: shared.settings.worker_index,
            flush_interval_ms: shared.settings.flush_interval_ms,
            shutdown: shared.shutdown.clone(),
        }));
        tokio::spawn(trunk_link::close_removed_gateways(
            shared.gateways.clone(),
            shared.routes.clone(),
            shared.store.clone(),
            shared.settings.gateway_check_interval(),
            flush_stop_rx.clone(),
        ));
        let limits = address_limits::AddressLimits::new(shared.settings.address_bounds());
        let acceptor = tokio::spawn(server::accept_loop(shared.clone(), listener, tls, limits));

        stop.await;
        info!("shutting down: go-away to trunks, close 1001 to phones");
        let _ = stop_tx.send(true);
        let _ = acceptor.await;
        // Every phone session and authenticated trunk link holds a guard of the drain: it is
        // over when the last of them ended (their final reports are in the ledger by then).
        let drained = shared.drain.wait(grace + std::time::Duration::from_secs(1)).await;
        if !drained {
            warn!("some connections did not finish within the grace period");
        }
        let _ = flush_stop_tx.send(true);
        let _ = flusher.await;
        shared.store.close().await;
        info!("stopped");
        Ok(())
    }
}
