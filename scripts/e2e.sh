#!/usr/bin/env bash
# End-to-end checks with the real binaries (release builds) and a real Postgres: mobile-sim
# against the aggregator, each run verified per device against the database: mobile-sim's
# verdict (every connection up, every byte sent confirmed and persisted exactly once) or the
# script fails.
#   1. 21,000 phones over wss: more than one process may open here, so mobile-sim runs worker
#      processes with sources spread over 127.0.0.x, and the aggregator runs --workers 2.
#   2. 100 virtual gateways x 1,000 sessions (100,000 sessions) over 200 TLS trunks.
#
#   DATABASE_URL=postgres://... scripts/e2e.sh     (scripts/test.sh runs it)
#
# Smaller runs (scripts/fault-checks.sh): E2E_PHONES (21000), E2E_GATEWAYS (100), E2E_SESSIONS
# (1000 per gateway), E2E_DURATION (45s for the phones, 20s for the gateways). HOLDFAST_FAULT
# (scripts/lib.sh) breaks the database after the migrations: the run must then fail.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh prints it)}"
cargo build --release -q -p aggregator -p mobile-sim
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
db="holdfast_e2e_$$"
psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
url="${DATABASE_URL%/*}/$db"
cleanup() {
  kill -TERM $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port=$((21000 + RANDOM % 1000))
RUST_LOG=warn "$bin/aggregator" --data-dir "$work" --database-url "$url" --listen "127.0.0.1:$port" \
  --workers 2 --max-phones 15000 >"$work/agg.out" 2>"$work/agg.log" &
for _ in $(seq 1 300); do
  [ "$(grep -c '^listening' "$work/agg.out" 2>/dev/null)" -ge 2 ] && break
  sleep 0.2
done
[ "$(grep -c '^listening' "$work/agg.out")" -ge 2 ] || { cat "$work/agg.log" >&2; hf_die "aggregator workers did not start"; }
# The aggregators have run the migrations: a fault (if asked for) goes in now, before any load.
hf_inject_fault "$url"
phones="${E2E_PHONES:-21000}"
gateways="${E2E_GATEWAYS:-100}"
sessions="${E2E_SESSIONS:-1000}"
ca="$work/ca.pem"
passed=0

hf_log "e2e 1/2: $phones phones over wss, mobile-sim worker processes, aggregator --workers 2"
# mobile-sim's verdict: every phone connected at once, no attempt failed, none dropped, every
# device checked, every byte sent confirmed durable and persisted exactly once. Exit 1 otherwise.
# --per-process makes two worker processes whatever the size.
"$bin/mobile-sim" phones --target "wss://localhost:$port/ws" --ca "$ca" --device-key "$work/device-token.key" \
  --phones "$phones" --rate 3000 -C 512 \
  --per-process $(((phones + 1) / 2)) --min-interval 2s --max-interval 10s --duration "${E2E_DURATION:-45s}" \
  --device-prefix e2e-phone- --verify --database-url "$url" >"$work/phones.txt" ||
  { cat "$work/phones.txt"; hf_die "e2e 1/2 failed: mobile-sim's verdict is above"; }
grep -q '^verdict      OK' "$work/phones.txt" || { cat "$work/phones.txt"; hf_die "e2e 1/2: no OK verdict"; }
grep -q '(2 processes)' "$work/phones.txt" || { cat "$work/phones.txt"; hf_die "e2e 1/2: expected 2 worker processes"; }
grep -E '^(mobile-sim|connections|bytes|verification|verdict)' "$work/phones.txt"
passed=$((passed + 1))

hf_log "e2e 2/2: $gateways gateways x $sessions sessions over $((gateways * 2)) TLS trunks"
names=$(seq -f "site-%03g" 0 $((gateways - 1)))
# shellcheck disable=SC2086
"$bin/aggregator" --data-dir "$work" --database-url "$url" gateway add $names >"$work/gateways.txt"
"$bin/mobile-sim" gateways --target "wss://localhost:$port/trunk" --ca "$ca" --gateways-file "$work/gateways.txt" \
  --gateways "$gateways" --sessions-per-gateway "$sessions" --min-interval 1s --max-interval 5s --duration "${E2E_DURATION:-20s}" \
  --device-prefix e2e-gw- --verify --database-url "$url" --quiet >"$work/gateways-report.txt" ||
  { cat "$work/gateways-report.txt"; hf_die "e2e 2/2 failed: mobile-sim's verdict is above"; }
grep -q '^verdict      OK' "$work/gateways-report.txt" || { cat "$work/gateways-report.txt"; hf_die "e2e 2/2: no OK verdict"; }
grep -E '^(mobile-sim|connections|bytes|verification|verdict)' "$work/gateways-report.txt"
passed=$((passed + 1))

echo "e2e: $passed passed, 0 failed"
