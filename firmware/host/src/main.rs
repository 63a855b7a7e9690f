//! The site gateway on Linux. See `gateway --help` and `firmware/README.md`.

mod cli;
mod gateway;
mod identity;
mod kernel;
mod tap;

use clap::Parser;

fn main() {
    // An empty HOLDFAST_* variable means unset (as for every holdfast binary); first, while this
    // is the only thread.
    cli_env::unset_empty_settings();
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Some(cli::Command::Provision(args)) = &cli.command {
        match identity::write_block(args) {
            Ok(()) => std::process::exit(0),
            Err(e) => fail(&e),
        }
    }
    // One thread: the executor, its timers and every socket's readiness (the host-runtime crate).
    let runtime = host_runtime::RuntimeConfig { io_batch_us: cli.serve.io_batch_us };
    let outcome = host_runtime::run(runtime, |spawner| {
        if let Err(e) = gateway::start(spawner, &cli.serve) {
            fail(&e);
        }
    });
    match outcome {
        Err(e) => fail(&anyhow::Error::from(e).context("the runtime failed")),
        Ok(never) => match never {},
    }
}

fn fail(e: &anyhow::Error) -> ! {
    eprintln!("gateway: {e:#}");
    std::process::exit(2);
}
