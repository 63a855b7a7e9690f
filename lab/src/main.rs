use std::process::ExitCode;

use clap::Parser;
use lab::cli::{Cli, Command};

fn main() -> ExitCode {
    // Before any thread exists: an empty HOLDFAST_* or DATABASE_URL means unset; logs on stderr.
    cli_env::start("warn");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Compare(args) => {
            let json = args.json;
            finish(runtime.block_on(lab::compare::run(args)), json, |r| (r.text(), true))
        }
        Command::Cluster(args) => finish_ok(runtime.block_on(lab::cluster::run::run(args))),
        Command::NginxConfig(args) => finish_ok(runtime.block_on(lab::cluster::run::nginx_config(args))),
        Command::E2e(args) => finish_ok(runtime.block_on(lab::e2e::run(args))),
        Command::Faults(args) => finish_ok(runtime.block_on(lab::faults::run(args))),
        Command::Drills(args) => finish_ok(runtime.block_on(lab::drills::run(args))),
        Command::Bench(bench) => finish_ok(runtime.block_on(lab::bench::run(bench))),
        Command::HoldAb(args) => finish_ok(runtime.block_on(lab::hold_ab::run(args))),
        Command::BuildRev(args) => finish_ok(runtime.block_on(lab::revision::run(args))),
        Command::GatewayCost(args) => finish_ok(runtime.block_on(lab::gateway_cost::run(args))),
        Command::Hold(args) => {
            let json = args.json;
            finish(runtime.block_on(lab::hold::run(args)), json, |r| (r.text(), r.ok))
        }
    }
}

/// Prints a report (as JSON with --json, else its text); exit 0 when it says ok, 1 when not,
/// 2 when the command could not run.
fn finish<R: serde::Serialize>(
    result: anyhow::Result<R>,
    json: bool,
    text_and_ok: impl Fn(&R) -> (String, bool),
) -> ExitCode {
    match result {
        Ok(report) => {
            let (text, ok) = text_and_ok(&report);
            if json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                print!("{text}");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Exit 0 when the command says ok, 1 when not (it printed why), 2 when it could not run.
fn finish_ok(result: anyhow::Result<bool>) -> ExitCode {
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
