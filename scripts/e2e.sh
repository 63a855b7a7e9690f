#!/usr/bin/env bash
# End-to-end checks with the real binaries (release builds) and a real Postgres: mobile-sim
# against the aggregator, each run verified per device against the database (0 lost, 0
# double-counted, or mobile-sim exits non-zero).
#   1. 21,000 phones over wss: more than one process may open here, so mobile-sim runs worker
#      processes with sources spread over 127.0.0.x, and the aggregator runs --workers 2.
#   2. 100 virtual gateways x 1,000 sessions (100,000 sessions) over 200 TLS trunks.
#
#   DATABASE_URL=postgres://... scripts/e2e.sh     (scripts/test.sh runs it)
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
ca="$work/ca.pem"
passed=0

hf_log "e2e 1/2: 21,000 phones over wss, mobile-sim worker processes, aggregator --workers 2"
"$bin/mobile-sim" phones --target "wss://localhost:$port/ws" --ca "$ca" --phones 21000 --rate 3000 -C 512 \
  --min-interval 2s --max-interval 10s --duration 45s --device-prefix e2e-phone- \
  --verify --database-url "$url" --json --quiet >"$work/phones.json" || { cat "$work/phones.json"; exit 1; }
python3 - "$work/phones.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c = r["connections"]
assert c["established"] >= 21000, c
assert r.get("processes", 1) >= 2, "expected worker processes: %r" % r.get("processes")
v = r["verification"]
assert v["lost_bytes"] == 0 and v["double_counted_bytes"] == 0, v
print("phones: %d established in %s processes, %d bytes sent, %d confirmed durable, verified"
      % (c["established"], r.get("processes"), r["bytes"]["sent"], r["bytes"]["durable"]))
PY
passed=$((passed + 1))

hf_log "e2e 2/2: 100 gateways x 1,000 sessions over 200 TLS trunks"
names=$(seq -f "site-%03g" 0 99)
# shellcheck disable=SC2086
"$bin/aggregator" --data-dir "$work" --database-url "$url" gateway add $names >"$work/gateways.txt"
"$bin/mobile-sim" gateways --target "wss://localhost:$port/trunk" --ca "$ca" --gateways-file "$work/gateways.txt" \
  --gateways 100 --sessions-per-gateway 1000 --min-interval 1s --max-interval 5s --duration 20s \
  --device-prefix e2e-gw- --verify --database-url "$url" --quiet
passed=$((passed + 1))

echo "e2e: $passed passed, 0 failed"
