#!/usr/bin/env bash
# What TLS for phones costs the host gateway (issue #12, item 2; `lab bench gateway-tls-cost`,
# lab/src/bench/gateway_tls_cost.rs), against plain ws in the same run: for each of ws and wss
# (--phone-tls-cert, a P-256 certificate), one gateway holds N idle mobile-sim phones (they
# connect, then send nothing for the hold); the gateway's RSS before and while holding them, and
# its CPU (utime + stime, /proc/PID/stat) from before the first connect until all are held, so
# per phone: resident memory and the CPU of accepting it (the TLS handshake, for wss).
#
#   scripts/bench/gateway-tls-cost.sh [N]      (default 5000, at most 19500: one process)
#
# Prints the load average at the start and the end (CPU time per phone is what is compared,
# never wall time). docs/benchmarks.md records the figures. KEEP=1 (--keep) keeps the work
# folder. Exits non-zero, without that transport's line, when its phones are not all held.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
args=(--phones "${1:-5000}")
if [ "${KEEP:-0}" = 1 ]; then args+=(--keep); fi
cargo build --release -q -p lab -p aggregator -p mobile-sim -p gateway
exec "$CARGO_TARGET_DIR/release/lab" bench gateway-tls-cost "${args[@]}"
