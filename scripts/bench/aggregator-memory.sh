#!/usr/bin/env bash
# Memory per idle direct phone in the aggregator (`lab bench aggregator-memory`,
# lab/src/bench/aggregator_memory.rs): RSS of one aggregator process before and while it holds N
# idle phones (mobile-sim, which sends nothing during the hold; held: the aggregator's
# holdfast_direct_sessions), over TLS and plain.
#
#   scripts/bench/aggregator-memory.sh [N]        (default N = 10000)
#
# BENCH_MODES="tls" (or plain) for one mode. Prints one line per mode; a mode whose phones are
# not all held prints why and no figure, and the script exits non-zero. docs/benchmarks.md
# records the figures. Release builds.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
modes="${BENCH_MODES:-tls plain}"
# The script took them space-separated; the lab takes a comma-separated list.
modes="$(printf '%s' "$modes" | tr -s ' \t\n' ',' | sed 's/^,//; s/,$//')"
cargo build --release -q -p lab -p aggregator -p mobile-sim -p gateway
exec "$CARGO_TARGET_DIR/release/lab" bench aggregator-memory --phones "${1:-10000}" --modes "$modes"
