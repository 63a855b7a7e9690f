#!/usr/bin/env bash
# Runs holdfast locally and shows phones being counted:
#   - an aggregator on the embedded SQLite store with a self-made TLS certificate
#     (data, certificates and logs in ./holdfast-data, or HOLDFAST_DATA_DIR);
#   - two simulated gateways (500 phone sessions each) on TLS trunks, and 300 simulated
#     phones connected straight to the aggregator over wss, for DEMO_DURATION (default 30s);
#   - then mobile-sim's verification: every byte confirmed durable is in the database once.
# The aggregator keeps running afterwards (its URLs are printed) until Ctrl-C, which stops
# everything this script started. With --once it stops right after the verification.
#
#   scripts/run.sh [--once]
#
# Installs a Rust toolchain first if there is none (Debian's rustc-web when rustup is absent).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"

once=0
for arg in "$@"; do
  case "$arg" in
    --once) once=1 ;;
    -h | --help)
      sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *) hf_die "unknown argument: $arg (see --help)" ;;
  esac
done

bash scripts/install-deps.sh --rust-only </dev/null >&2
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
hf_log "building aggregator and mobile-sim (release; the first build takes a few minutes)"
cargo build --release -p aggregator -p mobile-sim
bin="$CARGO_TARGET_DIR/release"

# The demo runs on the embedded store in the data folder, even when DATABASE_URL is set (for
# example by scripts/test.sh for the Postgres tests).
unset DATABASE_URL
data="${HOLDFAST_DATA_DIR:-$HOLDFAST_ROOT/holdfast-data}"
listen="${HOLDFAST_LISTEN:-127.0.0.1:8443}"
duration="${DEMO_DURATION:-30s}"
port="${listen##*:}"
mkdir -p "$data"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$bin/aggregator" --data-dir "$data" --listen "$listen" >"$data/aggregator.out" 2>"$data/aggregator.log" &
agg=$!
pids+=("$agg")
for _ in $(seq 1 300); do
  grep -q '^listening on' "$data/aggregator.out" 2>/dev/null && break
  kill -0 "$agg" 2>/dev/null || { cat "$data/aggregator.log" >&2; hf_die "the aggregator did not start"; }
  sleep 0.2
done
grep -q '^listening on' "$data/aggregator.out" || hf_die "the aggregator did not start listening"
cat "$data/aggregator.out"

gateways="$data/demo-gateways.txt"
if [ ! -s "$gateways" ]; then
  "$bin/aggregator" --data-dir "$data" gateway add "demo-gw-1" "demo-gw-2" >"$gateways"
fi

run="demo$(date +%s)"
api="https://localhost:$port/api/devices?prefix="
ca="$data/ca.pem"
hf_log "2 gateways x 500 sessions over TLS trunks, and 300 direct phones, for $duration"
"$bin/mobile-sim" gateways --target "wss://localhost:$port/trunk" --ca "$ca" --gateways-file "$gateways" \
  --gateways 2 --sessions-per-gateway 500 --duration "$duration" --device-prefix "$run-" \
  --verify --verify-url "${api}$run-demo-gw" --quiet >"$data/gateways-report.txt" 2>&1 &
gw=$!
pids+=("$gw")
"$bin/mobile-sim" phones --target "wss://localhost:$port/ws" --ca "$ca" --phones 300 --rate 100 \
  --min-interval 200ms --max-interval 2s --duration "$duration" --device-prefix "$run-phone-" \
  --verify --verify-url "${api}$run-phone-"
status=0
wait "$gw" || status=$?
echo
echo "== simulated gateways (report also in $data/gateways-report.txt)"
cat "$data/gateways-report.txt"
[ "$status" -eq 0 ] || hf_die "the gateways' verification failed"

echo
echo "The aggregator is still running:"
echo "  metrics:         https://localhost:$port/metrics"
echo "  device totals:   ${api}$run-"
echo "  CA to pin:       $ca      (curl --cacert $ca ...)"
echo "  logs:            $data/aggregator.log"
[ "$once" -eq 1 ] && exit 0
echo "Ctrl-C stops it."
wait "$agg"
