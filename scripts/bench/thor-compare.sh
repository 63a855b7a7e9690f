#!/usr/bin/env bash
# mobile-sim and Thor (the Node WebSocket load tool, npm package `thor` 1.0.0) holding the same
# idle connections against the same aggregator, side by side: resident memory per held
# connection (RssAnon, minus a run holding 1), time until all N are held, CPU time. A benchmark,
# not a test: it prints figures. The comparison is `lab bench thor` (lab/src/bench/thor.rs, whose top
# says how it is made fair; Thor is installed once into ~/.cache/holdfast/thor with the fixes it
# needs to run on ws 8).
#
#   scripts/bench/thor-compare.sh [N ...]            (default: 5000 10000)
#
# Environment: RUNS (3; the table shows medians), SETTLE (5 s held before measuring),
# CONCURRENT (256 connection attempts in flight, the same for both tools), MODES ("plain";
# "plain tls" adds wss://), THOR_WORKERS (Thor's -W; default: Thor's own, one worker per CPU),
# KEEP=1 keeps the work folder with every run's output. docs/benchmarks.md has the figures.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  hf_log "installing Node.js and npm (Debian packages)"
  hf_as_root apt-get update -qq
  hf_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
args=(--runs "${RUNS:-3}" --settle-s "${SETTLE:-5}" --concurrent "${CONCURRENT:-256}"
  --modes "$(echo "${MODES:-plain}" | tr ' ' ',')")
if [ -n "${THOR_WORKERS:-}" ]; then args+=(--thor-workers "$THOR_WORKERS"); fi
if [ "${KEEP:-0}" = 1 ]; then args+=(--keep); fi
cargo build --release -q -p lab -p aggregator -p mobile-sim
exec "$CARGO_TARGET_DIR/release/lab" bench thor "${args[@]}" "$@"
