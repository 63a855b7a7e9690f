#!/usr/bin/env bash
# The host gateway's cost per phone (issue #17, item 2), all in one run on one machine
# (`lab gateway-cost`, lab/src/gateway_cost.rs):
#   1. memory per idle phone: one gateway's RSS before, and while it holds N_IDLE idle phones
#      (mobile-sim, nothing sent during the hold);
#   2. CPU per idle phone: the gateway's CPU (utime + stime from /proc/PID/stat) while it holds
#      no phone, then while it holds the N_IDLE idle phones; the difference, per idle phone and
#      per 100,000 idle phones;
#   3. CPU per phone byte, against a yardstick measured in the same run: N_BUSY mobile-sim phones,
#      spread round-robin over the gateway and a minimal Node.js `ws` server
#      (scripts/bench/peers/ws-count-server.js), each phone sending one byte every INTERVAL_MS on
#      average (uniform in 0.5x..1.5x). Each server's CPU over the same windows, divided by the
#      bytes it counted in them (from its own once-a-second counter line).
#
#   scripts/bench/gateway-cost.sh [N_IDLE] [N_BUSY] [INTERVAL_MS]     (defaults 19000 3000 200)
#
# Environment: GATEWAY_BIN (default: this checkout's release build; point it at another build to
# measure before and after), WINDOW (seconds per CPU window, 10), WINDOWS (6; medians are
# printed), KEEP=1 keeps the work folder. Node.js and npm are needed (ws is installed once).
# Exits non-zero when mobile-sim reports a failure. docs/benchmarks.md records the figures.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
args=(--idle "${1:-19000}" --busy "${2:-3000}" --interval-ms "${3:-200}"
  --window-s "${WINDOW:-10}" --windows "${WINDOWS:-6}")
if [ -n "${GATEWAY_BIN:-}" ]; then args+=(--gateway-bin "$GATEWAY_BIN"); fi
if [ "${KEEP:-0}" = 1 ]; then args+=(--keep); fi
cargo build --release -q -p lab -p aggregator -p mobile-sim -p gateway
exec "$CARGO_TARGET_DIR/release/lab" gateway-cost "${args[@]}"
