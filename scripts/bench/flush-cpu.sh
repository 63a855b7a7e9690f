#!/usr/bin/env bash
# CPU per phone byte of the aggregator when few sessions change per flush (`lab bench flush-cpu`,
# lab/src/bench/flush_cpu.rs): N direct phones over wss (mobile-sim), each sending a byte every 6-18 s
# (N / 12 bytes/s in all: 1,500 bytes/s for 18,000 phones), into one aggregator on PostgreSQL.
# The aggregator's CPU (utime + stime from /proc/PID/stat) is measured over a window of the hold,
# after the ramp, and divided by the bytes it made durable in that window
# (holdfast_flushed_bytes_total, or the phones' own count for a binary without that metric). Runs
# each given aggregator binary in turn, RUNS times, and prints the median of each and their
# ratio, so that a before/after comparison shares the machine's load.
#
#   DATABASE_URL=postgres://... scripts/bench/flush-cpu.sh [PHONES] [RUNS] [AGGREGATOR_BIN...]
#     defaults: 18000 phones, 3 runs, the aggregator of this checkout (release)
#
# Each run: a fresh database, 40 s ramp and settle, then a 30 s window. Verified by mobile-sim:
# every byte sent confirmed and persisted exactly once; up to 1 phone in 1,000 may drop or fail
# a connection attempt (a CPU benchmark on a loaded machine, not a drill).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
args=(--phones "${1:-18000}" --runs "${2:-3}")
shift $(($# < 2 ? $# : 2))
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh)}"
cargo build --release -q -p lab -p aggregator -p mobile-sim
exec "$CARGO_TARGET_DIR/release/lab" bench flush-cpu "${args[@]}" -- "$@"
