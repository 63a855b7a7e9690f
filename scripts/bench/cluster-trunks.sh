#!/usr/bin/env bash
# Many trunks through nginx into several aggregators (`lab bench trunks`, lab/src/bench.rs): a
# local cluster with a private PostgreSQL, A aggregators behind nginx, and G virtual gateways
# (mobile-sim) of P sessions on 2 TLS trunks each, every session sending a byte every 1-5 s for D;
# verified per session against the database. Prints how the trunks spread, bytes and rows per
# second, flush lag, and the memory and CPU of nginx, the aggregators and mobile-sim; a run whose
# verification fails prints why, no figures, and exits non-zero.
#
#   scripts/bench/cluster-trunks.sh [G] [P] [D] [A]     defaults: 1000 gateways x 100 sessions
#                                                       (2,000 trunks), 60s, 2 aggregators
#
# CL_TLS=passthrough to pass TLS through nginx instead of terminating it there. Release builds;
# docs/benchmarks.md records the figures.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
cargo build --release -q -p lab -p aggregator -p mobile-sim
exec "$CARGO_TARGET_DIR/release/lab" bench trunks --gateways "${1:-1000}" --sessions "${2:-100}" \
  --duration "${3:-60s}" --aggregators "${4:-2}" --tls "${CL_TLS:-terminate}"
