#!/usr/bin/env bash
# Phone bytes per second sustained through gateway trunks into Postgres, with the aggregator's
# flush lag (p50/p99 from its histogram) and the rows it wrote per second.
#
#   scripts/bench/trunk-throughput.sh [GATEWAYS] [SESSIONS_PER_GATEWAY] [DURATION]
#     defaults: 100 gateways x 1000 sessions, 60s; each session sends 1 byte every 1-5 s
#     (uniform), i.e. about 33,000 bytes/s for 100,000 sessions: the production rate of
#     1,000,000 phones at one tenth of the sessions.
#
# Needs DATABASE_URL (scripts/start-postgres.sh prints it); uses a fresh database on that server.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
gateways="${1:-100}"
per="${2:-1000}"
duration="${3:-60s}"
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh)}"
cargo build --release -q -p aggregator -p mobile-sim
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
db="holdfast_bench_$$"
psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
url="${DATABASE_URL%/*}/$db"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null; rm -rf "$work"' EXIT

port=$((20000 + RANDOM % 1000))
RUST_LOG=warn "$bin/aggregator" --data-dir "$work" --database-url "$url" --listen "127.0.0.1:$port" \
  >"$work/agg.out" 2>"$work/agg.log" &
agg=$!
until grep -q '^listening' "$work/agg.out" 2>/dev/null; do sleep 0.1; done
names=$(seq -f "bench-gw-%03g" 0 $((gateways - 1)))
# shellcheck disable=SC2086
"$bin/aggregator" --data-dir "$work" --database-url "$url" gateway add $names >"$work/gateways.txt"

"$bin/mobile-sim" gateways --target "wss://localhost:$port/trunk" --ca "$work/ca.pem" \
  --gateways-file "$work/gateways.txt" --gateways "$gateways" --sessions-per-gateway "$per" \
  --min-interval 1s --max-interval 5s --duration "$duration" --device-prefix bench- \
  --verify --database-url "$url" --quiet | tee "$work/report.txt"

metrics=$(curl -s --cacert "$work/ca.pem" "https://localhost:$port/metrics")
echo "$metrics" | awk -v dur="${duration%s}" '
  /^holdfast_flush_lag_seconds_bucket/ {
    match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; les[n] = le; cum[n] = $2
  }
  /^holdfast_flush_lag_seconds_count/ { total = $2 }
  /^holdfast_flush_rows_total/ { rows = $2 }
  /^holdfast_flushes_total/ { flushes = $2 }
  END {
    for (i = 1; i <= n; i++) { if (!p50 && cum[i] >= 0.5 * total) p50 = les[i]; if (!p99 && cum[i] >= 0.99 * total) p99 = les[i] }
    printf "flushes %d, rows written %d (%.0f rows/s over %ss)\n", flushes, rows, rows / dur, dur
    printf "flush lag (age of the oldest report at commit): p50 <= %ss, p99 <= %ss (histogram bucket bounds)\n", p50, p99
  }'
