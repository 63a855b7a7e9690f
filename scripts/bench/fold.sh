#!/usr/bin/env bash
# Bounded growth of the sessions table (folding, docs/ARCHITECTURE.md): RUNS runs, one after the
# other, into one aggregator on one fresh PostgreSQL database. Each run: mobile-sim connects
# SESSIONS sessions, every one sends a byte every 1 to 3 s for DURATION, then closes; mobile-sim
# verifies the run (its strict verdict: nothing lost, nothing counted twice, every byte confirmed).
# Modes: `gateways` (virtual gateways, 1,000 sessions each, the same gateway names in every run:
# every run is a new boot of each gateway, which supersedes the previous run's boot) or `direct`
# (phones straight to the aggregator). After each run it prints the rows of `sessions` and
# `device_folded` and the reports waiting in the journal; after the last run it waits for the
# journal to be merged and for folding to reach the bound, then checks every device of every run again against what that run
# sent and had confirmed (per-device CSVs from mobile-sim, compared in SQL with `device_totals`),
# so devices whose sessions were folded are verified too. Fails on any verdict or mismatch.
#
#   DATABASE_URL=postgres://... scripts/bench/fold.sh MODE RUNS SESSIONS DURATION [FOLD_AFTER_S]
#     the issue's load: gateways 10 100000 20s       (10 runs of 100,000 sessions)
#     CI (scripts/test.sh): gateways 3 5000 6s 2, and direct 3 2000 6s 2
# Fails when a run's verdict fails, when a device's total is wrong at the end, or when the table
# holds more rows than the bound (at most one run's sessions with gateways, none direct).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
[ "$#" -ge 4 ] || hf_die "usage: scripts/bench/fold.sh gateways|direct RUNS SESSIONS DURATION [FOLD_AFTER_S]"
mode="$1" runs="$2" sessions="$3" duration="$4" fold_after="${5:-5}"
case "$mode" in gateways | direct) ;; *) hf_die "mode: gateways or direct, not $mode" ;; esac
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh)}"
cargo build --release -q -p aggregator -p mobile-sim
bin="$CARGO_TARGET_DIR/release/aggregator"
sim="$CARGO_TARGET_DIR/release/mobile-sim"
work="$(mktemp -d)"
db="holdfast_fold_$$"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; hf_drop_database "$DATABASE_URL" "$db" || true; rm -rf "$work"' EXIT
psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
url="${DATABASE_URL%/*}/$db"
q() { psql -X -qtA "$url" -c "$1"; }

per=1000
gateways=$(((sessions + per - 1) / per))
port=$((24000 + RANDOM % 2000))
# Each run is a new boot of every gateway: more of them than the default 6 per hour allows
# (--max-gateway-boots-per-hour, docs/SECURITY.md M4).
RUST_LOG=warn "$bin" --data-dir "$work" --database-url "$url" --listen "127.0.0.1:$port" \
  --max-trunks $((gateways * 2 + 100)) --max-phones $((sessions + 100)) \
  --fold-after-s "$fold_after" --fold-interval-ms 1000 \
  --max-gateway-boots-per-hour $((runs + 1)) >"$work/agg.out" 2>"$work/agg.log" &
for _ in $(seq 1 300); do grep -q '^listening' "$work/agg.out" 2>/dev/null && break; sleep 0.2; done
grep -q '^listening' "$work/agg.out" || { cat "$work/agg.log" >&2; hf_die "the aggregator did not start"; }
if [ "$mode" = gateways ]; then
  seq -f "fold-gw-%04g" 0 $((gateways - 1)) | xargs "$bin" --data-dir "$work" --database-url "$url" gateway add \
    >"$work/gateways.txt"
fi

echo "fold: $mode, $runs runs of $sessions sessions (a byte every 1-3 s for $duration, then closed), fold after ${fold_after} s; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$runs"); do
  common=(--min-interval 1s --max-interval 3s --duration "$duration" --drain-timeout 60s --device-prefix "f$r-"
    --verify --database-url "$url" --quiet --json --per-device "$work/run-$r.csv")
  if [ "$mode" = gateways ]; then
    "$sim" gateways --target "wss://localhost:$port/trunk" --ca "$work/ca.pem" --gateways-file "$work/gateways.txt" \
      --sessions-per-gateway "$per" "${common[@]}" >"$work/sim-$r.json" 2>"$work/sim-$r.err" ||
      hf_die "run $r: mobile-sim's verdict failed: $(grep -o '"failures":[^]]*]' "$work/sim-$r.json" || tail -3 "$work/sim-$r.err")"
  else
    "$sim" phones --target "wss://localhost:$port/ws" --ca "$work/ca.pem" --device-key "$work/device-token.key" \
      --phones "$sessions" --rate 2000 \
      "${common[@]}" >"$work/sim-$r.json" 2>"$work/sim-$r.err" ||
      hf_die "run $r: mobile-sim's verdict failed: $(grep -o '"failures":[^]]*]' "$work/sim-$r.json" || tail -3 "$work/sim-$r.err")"
  fi
  printf '  run %2d verified  sessions rows %8s  device_folded rows %8s  folded boots %4s  journal reports waiting %9s  (%s)\n' \
    "$r" "$(q 'SELECT count(*) FROM sessions')" "$(q 'SELECT count(*) FROM device_folded')" \
    "$(q 'SELECT count(*) FROM folded_epochs')" "$(q 'SELECT coalesce(sum(entries), 0) FROM journal')" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
done
# The bound: in direct mode nothing stays (every session closed and folded); with gateways the
# last run's boots stay current (nothing supersedes them yet), so at most one run's sessions.
# Reports still in the journal are sessions the table has not seen yet, and a boot is folded only
# once none of its reports waits there: so the table is judged once the journal is merged (a
# table that looks small while the journal holds the rest would pass by accident), and folding
# then has FOLD_AFTER_S + 3 s, and up to 2 minutes more, to reach the bound.
bound=$sessions
[ "$mode" = direct ] && bound=0
from=$SECONDS
while waiting="$(q 'SELECT coalesce(sum(entries), 0) FROM journal')" && [ "$waiting" -gt 0 ]; do
  [ $((SECONDS - from)) -lt 1800 ] || hf_die "$waiting reports still in the journal 30 min after the last run"
  sleep 2
done
hf_int "$waiting" "journal reports waiting" # a failed query ends the loop: not a merged journal
merged_after=$((SECONDS - from))
sleep $((fold_after + 3))
for _ in $(seq 1 60); do
  rows="$(q 'SELECT count(*) FROM sessions')"
  hf_int "$rows" "sessions rows"
  [ "$rows" -gt "$bound" ] || break
  sleep 2
done
folded_rows="$(q 'SELECT count(*) FROM device_folded')"
hf_int "$folded_rows" "device_folded rows"
echo "after the last run: journal merged in ${merged_after} s; $((SECONDS - from)) s after the last run: sessions rows $rows, device_folded rows $folded_rows"
[ "$rows" -le "$bound" ] || hf_die "the sessions table holds $rows rows after $runs runs: more than $bound (folding not working)"

# Every device of every run, against device_totals (live rows plus folded totals).
q "CREATE TABLE bench_sent (device text PRIMARY KEY, sent bigint NOT NULL, durable bigint NOT NULL)"
for r in $(seq 1 "$runs"); do
  psql -X -q "$url" -c "\\copy bench_sent FROM '$work/run-$r.csv' WITH (FORMAT csv, HEADER true)"
done
read -r devices missing lost doubled < <(q "SELECT count(*), count(*) FILTER (WHERE t.device IS NULL),
    count(*) FILTER (WHERE COALESCE(t.bytes, 0) < s.durable), count(*) FILTER (WHERE t.bytes > s.sent)
  FROM bench_sent s LEFT JOIN device_totals t USING (device)" | tr '|' ' ')
folded_devices="$(q "SELECT count(*) FROM bench_sent s JOIN device_folded f USING (device)")"
echo "verified again at the end: $devices devices of $runs runs ($folded_devices of them with folded sessions): $missing missing, $lost lost, $doubled double-counted"
[ "$devices" -eq $((runs * sessions)) ] || hf_die "expected $((runs * sessions)) devices in the runs' reports"
[ "$missing" -eq 0 ] && [ "$lost" -eq 0 ] && [ "$doubled" -eq 0 ] || hf_die "a device's total is wrong after folding"
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
