#!/usr/bin/env bash
# Many trunks through nginx into several aggregators: a local cluster (scripts/cluster-lib.sh)
# with a private PostgreSQL, A aggregators behind nginx, and G virtual gateways (mobile-sim) of
# P sessions on 2 TLS trunks each, every session sending a byte every 1-5 s for D; verified per
# session against the database. Prints how the trunks spread, bytes and rows per second, flush
# lag, and the memory and CPU of nginx, the aggregators and mobile-sim.
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
gateways="${1:-1000}"
per="${2:-100}"
duration="${3:-60s}"
aggregators="${4:-2}"
cargo build --release -q -p aggregator -p mobile-sim
# shellcheck source=scripts/cluster-lib.sh
. scripts/cluster-lib.sh
work="$(mktemp -d)"
chmod 711 "$work"
trap 'cl_stop_all; rm -rf "$work"' EXIT

CL_STORE=postgres CL_AGGREGATORS="$aggregators" CL_GATEWAYS="$gateways" CL_AGGREGATOR_LOG=warn
cl_init "$work/cluster" "$(cl_free_port)"
cl_start_servers

# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
nginx_worker="$(pgrep -P "$(cl_pid nginx)" | head -1)"
procs=(nginx:"$nginx_worker")
for i in $(seq 1 "$aggregators"); do procs+=("aggregator-$i:$(cl_pid "aggregator-$i")"); done
declare -A cpu0 rss0
for p in "${procs[@]}"; do cpu0[${p%%:*}]="$(cpu_s "${p##*:}")"; rss0[${p%%:*}]="$(cl_rss_kib "${p##*:}")"; done

started=$(date +%s.%N)
"$CL_BIN/mobile-sim" gateways --target "wss://localhost:$CL_PORT/trunk" --ca "$CL_PKI/ca.pem" \
  --gateways-file "$CL_GATEWAYS_FILE" --gateways "$gateways" --sessions-per-gateway "$per" --links 2 \
  --min-interval 1s --max-interval 5s --duration "$duration" --device-prefix "bench$(date +%s)-" \
  --verify --database-url "$CL_DB_URL" --quiet >"$work/report.txt" 2>&1 &
sim=$!
# Halfway through the run: where the trunks are, and everyone's memory.
half=$(awk -v d="${duration%s}" 'BEGIN {print d / 2}')
sleep "$half"
echo "at ${half}s:"
for p in "${procs[@]}"; do
  name="${p%%:*}"
  extra=""
  [ "${name#aggregator-}" != "$name" ] && extra=", trunks $(cl_metric "${name#aggregator-}" holdfast_trunks)"
  echo "  $name: RSS ${rss0[$name]} -> $(cl_rss_kib "${p##*:}") KiB$extra"
done
echo "  mobile-sim: RSS $(cl_rss_kib "$sim") KiB"
wait "$sim" || { cat "$work/report.txt"; hf_die "mobile-sim failed"; }
elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
cat "$work/report.txt"
echo "CPU over the ${elapsed} s of the run (run and drain), in cores:"
for p in "${procs[@]}"; do
  name="${p%%:*}"
  awk -v n="$name" -v a="${cpu0[$name]}" -v b="$(cpu_s "${p##*:}")" -v t="$elapsed" \
    'BEGIN {printf "  %-13s %.2f s of CPU, %.3f cores\n", n, b - a, (b - a) / t}'
done
for i in $(seq 1 "$aggregators"); do
  cl_curl "$(cl_aggregator_url "$i")/metrics" | awk -v agg="$i" '
    /^holdfast_flush_lag_seconds_bucket/ {
      match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; les[n] = le; cum[n] = $2
    }
    /^holdfast_flush_lag_seconds_count/ { total = $2 }
    /^holdfast_flush_rows_total/ { rows = $2 }
    /^holdfast_flushes_total/ { flushes = $2 }
    END {
      for (i = 1; i <= n; i++) { if (!p50 && cum[i] >= 0.5 * total) p50 = les[i]; if (!p99 && cum[i] >= 0.99 * total) p99 = les[i] }
      printf "aggregator %s: %d flushes, %d rows, flush lag p50 <= %ss, p99 <= %ss\n", agg, flushes, rows, p50, p99
    }'
done
