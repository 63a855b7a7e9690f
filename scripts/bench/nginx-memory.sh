#!/usr/bin/env bash
# Memory per idle phone in nginx in front of the aggregators (deploy/nginx), and in the
# aggregator behind it: a local cluster (scripts/cluster-lib.sh) with one aggregator and one
# nginx worker, N idle wss:// phones (mobile-sim, nothing sent during the hold) through nginx.
# RSS of the nginx worker and of the aggregator before, and while holding the N phones.
#
#   scripts/bench/nginx-memory.sh [N]        (default N = 8000; nginx holds 2 files per phone,
#                                             so 2N must fit the open-file limit)
#
# Both variants: terminate (nginx does TLS 1.3, the aggregator runs --plain) and passthrough
# (nginx's stream proxy, the aggregator does TLS). Prints one line per variant; docs/benchmarks.md
# records the figures. Release builds.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
n="${1:-8000}"
cargo build --release -q -p aggregator -p mobile-sim
# shellcheck source=scripts/cluster-lib.sh
. scripts/cluster-lib.sh
work="$(mktemp -d)"
trap 'cl_stop_all; rm -rf "$work"' EXIT

for variant in ${BENCH_VARIANTS:-terminate passthrough}; do
  CL_TLS="$variant" CL_STORE=sqlite CL_AGGREGATORS=1 CL_GATEWAYS=1 CL_NGINX_WORKERS=1 CL_AGGREGATOR_LOG=warn
  CL_PIDS=()
  cl_init "$work/$variant" "$(cl_free_port)"
  cl_start_servers
  master="$(cl_pid nginx)"
  worker="$(pgrep -P "$master" | head -1)"
  agg="$(cl_pid aggregator-1)"
  sleep 1
  nginx_before="$(cl_rss_kib "$worker")"
  agg_before="$(cl_rss_kib "$agg")"
  "$CL_BIN/mobile-sim" phones --target "wss://localhost:$CL_PORT/ws" --ca "$CL_PKI/ca.pem" \
    --device-key "$CL_PKI/device-token.key" --phones "$n" \
    --rate 1000 -C 256 --min-interval 1h --max-interval 1h --duration 90s --quiet --json \
    >"$work/$variant-sim.json" 2>&1 &
  sim=$!
  held=0
  for _ in $(seq 1 600); do
    held="$(cl_metric 1 holdfast_direct_sessions)"
    [ "${held:-0}" -ge "$n" ] && break
    sleep 0.2
  done
  sleep 3
  nginx_during="$(cl_rss_kib "$worker")"
  agg_during="$(cl_rss_kib "$agg")"
  printf '%-11s phones held %6s  nginx worker RSS %7d -> %7d KiB: %5d bytes per phone;  aggregator RSS %7d -> %7d KiB: %5d bytes per phone\n' \
    "$variant" "$held" "$nginx_before" "$nginx_during" $(((nginx_during - nginx_before) * 1024 / n)) \
    "$agg_before" "$agg_during" $(((agg_during - agg_before) * 1024 / n))
  kill -TERM "$sim" 2>/dev/null || true
  wait "$sim" 2>/dev/null || true
  cl_stop_all
done
