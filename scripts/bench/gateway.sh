#!/usr/bin/env bash
# The host gateway (the firmware's core on the kernel's TCP), measured with mobile-sim
# (`lab bench gateway`, lab/src/bench/gateway.rs):
#   1. memory per idle phone session: the gateway's RSS before and while it holds N_IDLE idle
#      phones (held: the gateway's own live=N count);
#   2. phone bytes per second through one gateway into the aggregator (SQLite, its default store):
#      N_BUSY phones each sending a byte every 1-10 ms for SECONDS, verified per device by
#      mobile-sim (0 lost, 0 double-counted, every byte confirmed); a run that fails it prints
#      why, no figures, and exits non-zero.
#
#   scripts/bench/gateway.sh [N_IDLE] [N_BUSY] [SECONDS]     (defaults 10000 2000 30)
#
# Release builds. docs/benchmarks.md records the figures.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
cargo build --release -q -p lab -p aggregator -p mobile-sim -p gateway
exec "$CARGO_TARGET_DIR/release/lab" bench gateway --idle "${1:-10000}" --busy "${2:-2000}" \
  --seconds "${3:-30}"
