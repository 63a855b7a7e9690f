//! Runs the protocol simulation and shows what it survived.
//!
//! One gateway with three links and one aggregator; phones open, send bytes and close; links
//! drop, race each other and are sent away; database commits fail; the aggregator crashes between
//! commit and acknowledgement. Every run ends by checking that the committed total of every
//! session equals what its phone sent.
//!
//! ```text
//! cargo run --release -p trunk --example simulate -- [--seeds N] [--steps N]
//! ```

#[path = "../tests/support/sim.rs"]
mod sim;

use std::time::Instant;

fn main() {
    let mut seeds = 200u64;
    let mut steps = 3_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().and_then(|v| v.parse().ok());
        match arg.as_str() {
            "--seeds" => seeds = value().expect("--seeds takes a number"),
            "--steps" => steps = value().expect("--steps takes a number") as usize,
            _ => {
                eprintln!("usage: simulate [--seeds N (default 200)] [--steps N (default 3000)]");
                std::process::exit(if arg == "--help" || arg == "-h" { 0 } else { 2 });
            }
        }
    }
    println!("trunk protocol simulation: {seeds} runs of {steps} chaotic steps, then a calm drain");
    println!(
        "{:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "run", "drops", "go-away", "crashes", "failed", "commits", "acks"
    );
    let started = Instant::now();
    let mut total = sim::Stats::default();
    for seed in 1..=seeds {
        // `run` panics, naming the seed, if any session's committed total differs from what was sent.
        let s = sim::run(seed, steps);
        if seed <= 5 || seed % (seeds / 10).max(1) == 0 {
            println!(
                "{seed:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8}",
                s.drops, s.go_aways, s.crashes, s.failed_commits, s.commits, s.acks
            );
        }
        total += s;
    }
    println!(
        "{:>6} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "all", total.drops, total.go_aways, total.crashes, total.failed_commits, total.commits, total.acks
    );
    println!(
        "every session of every run: committed total == bytes sent, close committed ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
