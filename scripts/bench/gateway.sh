#!/usr/bin/env bash
# The host gateway (the firmware's core on the kernel's TCP), measured with mobile-sim:
#   1. memory per idle phone session: the gateway's RSS before and while it holds N idle phones;
#   2. phone bytes per second through one gateway into the aggregator (SQLite, its default store),
#      verified per device by mobile-sim (0 lost, 0 double-counted).
#
#   scripts/bench/gateway.sh [N_IDLE] [N_BUSY] [SECONDS]     (defaults 10000 2000 30)
#
# Release builds. docs/benchmarks.md records the figures.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
idle="${1:-10000}"
busy="${2:-2000}"
seconds="${3:-30}"
cargo build --release -q -p aggregator -p mobile-sim -p gateway
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

agg_port=$((20000 + RANDOM % 1000))
secret=$("$bin/aggregator" --data-dir "$work" gateway add bench-gw | awk '{print $2}')
RUST_LOG=warn "$bin/aggregator" --data-dir "$work" --listen "127.0.0.1:$agg_port" >"$work/agg.out" 2>&1 &
until grep -q '^listening' "$work/agg.out" 2>/dev/null; do sleep 0.1; done
# Phones prove their device at the gateway (a token per phone from mobile-sim, one Ed25519 check
# per connect at the gateway), as in a real deployment.
device_public_key=$("$bin/aggregator" --data-dir "$work" device public-key)

gw_port=$((21000 + RANDOM % 1000))
RUST_LOG=info NO_COLOR=1 "$bin/gateway" --id bench-gw --secret "$secret" --ca "$work/ca.pem" \
  --aggregator "127.0.0.1:$agg_port" --listen "127.0.0.1:$gw_port" --device-public-key "$device_public_key" --capacity 19000 --status-interval-s 1 \
  >"$work/gw.log" 2>&1 &
gw=$!
until grep -q 'trunk link 1: TLS 1.3' "$work/gw.log" 2>/dev/null; do sleep 0.1; done
sleep 1

# 1. Idle phones: connect, then send nothing for the hold (1 h intervals).
before=$(rss_kib "$gw")
"$bin/mobile-sim" phones --device-key "$work/device-token.key" --target "ws://127.0.0.1:$gw_port/ws" --phones "$idle" --rate 2000 -C 256 \
  --min-interval 1h --max-interval 1h --duration 40s --device-prefix idle- --quiet --json >"$work/idle.json" 2>&1 &
sim=$!
held=0
for _ in $(seq 1 300); do
  held=$(grep -o 'live=[0-9]*' "$work/gw.log" | tail -1 | cut -d= -f2)
  [ "${held:-0}" -ge "$idle" ] && break
  sleep 0.2
done
sleep 3
during=$(rss_kib "$gw")
printf 'idle: phones held %6s  gateway RSS %7d KiB -> %7d KiB  per idle phone session %5d bytes\n' \
  "$held" "$before" "$during" $(( (during - before) * 1024 / idle ))
kill "$sim" 2>/dev/null || true
wait "$sim" 2>/dev/null || true
sleep 3

# 2. Busy phones: each sends a byte every 1-10 ms for the run; then everything is verified.
start=$(date +%s.%N)
"$bin/mobile-sim" phones --device-key "$work/device-token.key" --target "ws://127.0.0.1:$gw_port/ws" --phones "$busy" --rate 2000 -C 256 \
  --min-interval 1ms --max-interval 10ms --duration "${seconds}s" --drain-timeout 30s --device-prefix "busy-$RANDOM-" \
  --verify --database-url "sqlite://$work/holdfast.db" --quiet --json >"$work/busy.json" 2>"$work/busy.err" || {
  cat "$work/busy.err" >&2; echo "verification failed" >&2; exit 1; }
python3 - "$work/busy.json" "$seconds" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
sent = r.get("bytes_sent") or r.get("bytes", {}).get("sent")
durable = r.get("bytes_durable") or r.get("bytes", {}).get("durable")
v = r.get("verify") or r.get("verification") or {}
print(f"busy: {sent} bytes sent in {sys.argv[2]} s = {int(sent)/float(sys.argv[2]):,.0f} phone bytes/s through one gateway; "
      f"durable {durable}; verify {json.dumps(v)[:200]}")
PY
