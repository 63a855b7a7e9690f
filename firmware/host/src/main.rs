//! The site gateway on Linux. See `gateway --help` and `firmware/README.md`.

mod cli;
mod gateway;
mod identity;
mod kernel;
mod tap;

use clap::Parser;
use embassy_executor::Spawner;

#[embassy_executor::main]
async fn main(spawner: Spawner) {
    // An empty HOLDFAST_* variable means unset (as for every holdfast binary). Still the only
    // thread here: embassy's std executor runs this task on the main thread, and its time
    // driver's thread starts at the first timer, later.
    cli_env::unset_empty_settings();
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let result = match &cli.command {
        Some(cli::Command::Provision(args)) => identity::write_block(args).map(|()| std::process::exit(0)),
        None => gateway::start(spawner, &cli.serve),
    };
    if let Err(e) = result {
        eprintln!("gateway: {e:#}");
        std::process::exit(2);
    }
}
