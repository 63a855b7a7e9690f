#!/usr/bin/env bash
# Memory per idle direct phone in the aggregator: RSS of one aggregator process before and while
# it holds N idle phones (mobile-sim, which sends nothing during the hold), over TLS and plain.
#
#   scripts/bench/aggregator-memory.sh [N]        (default N = 10000)
#
# Prints one line per mode; docs/benchmarks.md records the figures. Release builds.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
n="${1:-10000}"
cargo build --release -q -p aggregator -p mobile-sim
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

for mode in ${BENCH_MODES:-tls plain}; do
  port=$((19000 + RANDOM % 1000))
  flags=(); scheme=wss; curl_flags=(--cacert "$work/$mode/ca.pem"); http=https
  if [ "$mode" = plain ]; then flags=(--plain); scheme=ws; curl_flags=(); http=http; fi
  mkdir -p "$work/$mode"
  RUST_LOG=warn "$bin/aggregator" --data-dir "$work/$mode" --listen "127.0.0.1:$port" --max-phones $((n + 100)) \
    "${flags[@]}" >"$work/$mode.out" 2>"$work/$mode.log" &
  agg=$!
  until grep -q '^listening' "$work/$mode.out" 2>/dev/null; do sleep 0.1; done
  sleep 1
  before=$(rss_kib "$agg")
  "$bin/mobile-sim" phones --target "$scheme://localhost:$port/ws" \
    $([ "$mode" = tls ] && echo --ca "$work/$mode/ca.pem") --device-key "$work/$mode/device-token.key" \
    --phones "$n" --rate 2000 -C 512 \
    --min-interval 1h --max-interval 1h --duration 60s --quiet --json >"$work/$mode-sim.json" 2>&1 &
  sim=$!
  held=0
  for _ in $(seq 1 300); do
    held=$(curl -s "${curl_flags[@]}" "$http://localhost:$port/metrics" | awk '/^holdfast_direct_sessions / {print $2}')
    [ "${held:-0}" -ge "$n" ] && break
    sleep 0.2
  done
  sleep 2
  during=$(rss_kib "$agg")
  per=$(( (during - before) * 1024 / n ))
  printf '%-5s phones held %6s  aggregator RSS %7d KiB -> %7d KiB  per idle phone %5d bytes\n' \
    "$mode" "$held" "$before" "$during" "$per"
  kill "$sim" 2>/dev/null || true
  wait "$sim" 2>/dev/null || true
  kill -TERM "$agg"
  wait "$agg" 2>/dev/null || true
done
