//! mobile-sim: simulated phones and gateways that hold long-lived WebSocket connections and prove
//! end to end that nothing they sent was lost or counted twice. See README.md.

mod cli;
mod gateway_sim;
mod html;
mod net;
mod phone;
mod report;
mod run;
mod stats;
mod tls;
mod tokens;
mod verify;
mod workers;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread exists: an empty HOLDFAST_* or DATABASE_URL means unset (as for every
    // holdfast binary); logs on stderr.
    cli_env::start("warn");
    let command = cli::Cli::parse().into_command();
    let files_limit = raise_files_limit();
    // Phones: --threads, one by default (a current-thread runtime: on two threads each message
    // woke the other one, and a quarter of mobile-sim's CPU went to the kernel's thread switches
    // and wakeups; past one core, more worker processes). Gateways: one thread per core.
    let mut builder = match &command {
        cli::Command::Phones(args) if args.threads == 1 => tokio::runtime::Builder::new_current_thread(),
        cli::Command::Phones(args) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(args.threads));
            b
        }
        cli::Command::Gateways(_) => tokio::runtime::Builder::new_multi_thread(),
        cli::Command::Tokens(_) => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            cli::Command::Phones(args) => workers::run_phones(*args, files_limit).await,
            cli::Command::Gateways(args) => gateway_sim::run_gateways(*args).await,
            cli::Command::Tokens(args) => tokens::issue(&args).map(|()| ExitCode::SUCCESS),
        }
    });
    // Phones still closing must not hold the exit up.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Raises this process's open-files limit to its hard limit (each connection is a file) and
/// returns the limit now in force.
fn raise_files_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct passed by pointer, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}
