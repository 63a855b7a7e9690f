use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before the runtime's threads exist: an empty HOLDFAST_* or DATABASE_URL means unset.
    cli_env::start("info");
    let cli = aggregator::config::Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(aggregator::run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("aggregator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
