#!/usr/bin/env bash
# mobile-sim's own CPU (issue #17, item 3; `lab bench mobile-sim-cost`,
# lab/src/bench/mobile_sim_cost.rs): the load generator must not be what starves the system under
# test. One aggregator (SQLite), one host gateway (2 TLS trunks), and one mobile-sim process (-W 1)
# holding N phones on the gateway, in two phases:
#   1. idle: the N phones hold their connections and send nothing (--min-interval 1h); mobile-sim's
#      CPU (utime + stime from /proc/PID/stat) over WINDOWS windows of WINDOW seconds, per held
#      phone;
#   2. traffic: the same N phones send BYTES_PER_S bytes a second in all (each phone one byte
#      every N / BYTES_PER_S seconds on average, uniform in 0.5x..1.5x); mobile-sim's CPU over the
#      same windows divided by the bytes the gateway counted in them (the gateway's once-a-second
#      counter line; the CPU read as each line appears), and per held phone.
# When the mobile-sim binary reports its own CPU (the `cpu` object of its --json report), that is
# printed too, for comparison with the figures measured from outside.
#
#   scripts/bench/mobile-sim-cost.sh [N] [BYTES_PER_S]          (defaults 18000 1500)
#
# Environment: MSIM_BIN (--msim-bin; default: this checkout's release build; point it at another
# build to measure before and after with the same script), MSIM_ARGS (extra mobile-sim flags, e.g.
# "--threads 2"), WINDOW (--window-s, seconds per CPU window, 10), WINDOWS (--windows, 5; medians
# are printed), PERF=1 (--perf: after the traffic windows, `perf record -g` mobile-sim for 15 s;
# the report is kept in the work folder, which is then kept), KEEP=1 (--keep) keeps the work
# folder. Prints the load average at the start and the end: the machine is shared, CPU time per
# unit is what is compared, never wall time. A phase whose mobile-sim reports a failure prints
# why, none of its figures, and exits non-zero. docs/benchmarks.md records the figures.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
args=(--phones "${1:-18000}" --bytes-per-s "${2:-1500}" --window-s "${WINDOW:-10}" --windows "${WINDOWS:-5}")
if [ -n "${MSIM_BIN:-}" ]; then args+=(--msim-bin "$MSIM_BIN"); fi
if [ "${PERF:-0}" = 1 ]; then args+=(--perf); fi
if [ "${KEEP:-0}" = 1 ]; then args+=(--keep); fi
read -r -a extra <<<"${MSIM_ARGS:-}"
cargo build --release -q -p lab -p aggregator -p mobile-sim -p gateway
exec "$CARGO_TARGET_DIR/release/lab" bench mobile-sim-cost "${args[@]}" -- "${extra[@]}"
