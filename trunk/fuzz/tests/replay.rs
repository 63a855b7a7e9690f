//! The fuzz targets on stable: every seed, then a fixed number of pseudo-random inputs from a
//! fixed seed (so a failure reproduces), through the same bodies libFuzzer runs.
//!
//! `cargo test --release --manifest-path trunk/fuzz/Cargo.toml` (what `scripts/fuzz.sh` falls
//! back to without nightly or cargo-fuzz). `FUZZ_REPLAY_CASES` sets the number of random inputs
//! per target (default 100,000); `FUZZ_REPLAY_SEED` the generator's seed.

use std::path::{Path, PathBuf};

// xorshift64*: enough to make varied inputs, and the same ones every run.
use trunk::harness::Rng;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                let bytes = std::fs::read(&path).expect("read a seed");
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Random inputs, half of them mutations of a seed (bytes flipped, cut, spliced) so that they
/// get past the first checks.
fn run(target: &str, body: fn(&[u8])) {
    let seeds = seeds(target);
    for (path, bytes) in &seeds {
        println!("{target}: seed {}", path.display());
        body(bytes);
    }
    let cases = env_u64("FUZZ_REPLAY_CASES", 100_000);
    let mut rng = Rng::new(env_u64("FUZZ_REPLAY_SEED", 0x9e37_79b9_7f4a_7c15));
    let mut input = Vec::new();
    for case in 0..cases {
        input.clear();
        if !seeds.is_empty() && rng.next() & 1 == 0 {
            input.extend_from_slice(&seeds[(rng.next() % seeds.len() as u64) as usize].1);
            for _ in 0..=rng.next() % 4 {
                match rng.next() % 3 {
                    0 if !input.is_empty() => {
                        let i = (rng.next() % input.len() as u64) as usize;
                        input[i] ^= 1 << (rng.next() % 8);
                    }
                    1 if !input.is_empty() => input.truncate((rng.next() % input.len() as u64) as usize),
                    _ => {
                        let other = &seeds[(rng.next() % seeds.len() as u64) as usize].1;
                        input.extend_from_slice(other);
                    }
                }
            }
        } else {
            let len = (rng.next() % 512) as usize;
            input.extend((0..len).map(|_| rng.next() as u8));
        }
        let result = std::panic::catch_unwind(|| body(&input));
        if result.is_err() {
            panic!("{target}: case {case} failed; input ({} bytes): {:02x?}", input.len(), input);
        }
    }
    println!("{target}: {} seeds and {cases} random inputs passed", seeds.len());
}

#[test]
fn decode() {
    run("decode", trunk_fuzz::decode);
}

#[test]
fn gateway() {
    run("gateway", trunk_fuzz::gateway);
}
