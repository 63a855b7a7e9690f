#!/usr/bin/env bash
# Memory per idle phone in nginx in front of the aggregators (deploy/nginx), and in the
# aggregator behind it (`lab bench nginx-memory`, lab/src/bench.rs): a local cluster with one
# aggregator and one nginx worker, N idle wss:// phones (mobile-sim, nothing sent during the hold)
# through nginx. RSS of the nginx worker and of the aggregator before, and while holding the N
# phones.
#
#   scripts/bench/nginx-memory.sh [N]        (default N = 8000; nginx holds 2 files per phone,
#                                             so 2N must fit the open-file limit)
#
# Both variants: terminate (nginx does TLS 1.3, the aggregator runs --plain) and passthrough
# (nginx's stream proxy, the aggregator does TLS); BENCH_VARIANTS="terminate" (or passthrough)
# for one. Prints one line per variant; docs/benchmarks.md records the figures. Release builds.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
variants="${BENCH_VARIANTS:-terminate passthrough}"
# The script took them space-separated; the lab takes a comma-separated list.
variants="$(printf '%s' "$variants" | tr -s ' \t\n' ',' | sed 's/^,//; s/,$//')"
cargo build --release -q -p lab -p aggregator -p mobile-sim
exec "$CARGO_TARGET_DIR/release/lab" bench nginx-memory --phones "${1:-8000}" --variants "$variants"
