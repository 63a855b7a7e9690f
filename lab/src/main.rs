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
            match runtime.block_on(lab::compare::run(args)) {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        print!("{}", report.text());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Hold(args) => {
            let json = args.json;
            match runtime.block_on(lab::hold::run(args)) {
                Ok(report) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
                    } else {
                        print!("{}", report.text());
                    }
                    if report.ok {
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
    }
}
