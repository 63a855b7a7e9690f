#!/usr/bin/env bash
# What TLS for phones costs the host gateway (issue #12, item 2), against plain ws in the same run:
# for each of ws and wss (--phone-tls-cert), one gateway holds N idle mobile-sim phones (they
# connect, then send nothing for the hold); the gateway's RSS before and while holding them, and
# its CPU (utime + stime, /proc/PID/stat) from before the first connect until all are held, so
# per phone: resident memory and the CPU of accepting it (the TLS handshake, for wss).
#
#   scripts/bench/gateway-tls-cost.sh [N]      (default 5000, at most 19500: one process)
#
# Prints the load average at the start and the end (CPU time per phone is what is compared,
# never wall time). docs/benchmarks.md records the figures. KEEP=1 keeps the work folder.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
n="${1:-5000}"
if [ "$n" -lt 100 ] || [ "$n" -gt 19500 ]; then hf_die "N must be 100..19500, got $n"; fi
cargo build --release -q -p aggregator -p mobile-sim -p gateway
bin="$CARGO_TARGET_DIR/release"
work="$(mktemp -d)"
cleanup() {
  # shellcheck disable=SC2046
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then hf_log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores)"

# The phones' certificate: a CA and a leaf for 127.0.0.1 (P-256, as the aggregator's), in a
# folder of their own (the aggregator's data folder has its own ca.pem).
pki="$work/phones"
mkdir -p "$pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=bench phones CA" \
  -addext basicConstraints=critical,CA:TRUE -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$pki/gw.key" -out "$pki/gw.csr" 2>/dev/null
openssl x509 -req -in "$pki/gw.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 30 \
  -extfile <(printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n') -out "$pki/gw.pem" 2>/dev/null

agg_port=$((20000 + RANDOM % 1000))
secret=$("$bin/aggregator" --data-dir "$work" gateway add tls-gw | awk '{print $2}')
RUST_LOG=warn "$bin/aggregator" --data-dir "$work" --listen "127.0.0.1:$agg_port" >"$work/agg.out" 2>&1 &
until grep -q '^listening' "$work/agg.out" 2>/dev/null; do
  kill -0 $! 2>/dev/null || { cat "$work/agg.out" >&2; hf_die "the aggregator did not start"; }
  sleep 0.1
done
device_public_key=$("$bin/aggregator" --data-dir "$work" device public-key)

for mode in ws wss; do
  gw_port=$((21000 + RANDOM % 1000))
  tls=()
  [ "$mode" = wss ] && tls=(--phone-tls-cert "$pki/gw.pem" --phone-tls-key "$pki/gw.key")
  RUST_LOG=info NO_COLOR=1 "$bin/gateway" --id tls-gw --secret "$secret" --ca "$work/ca.pem" \
    --aggregator "127.0.0.1:$agg_port" --server-name localhost --listen "127.0.0.1:$gw_port" \
    --device-public-key "$device_public_key" --capacity 19500 --status-interval-s 1 "${tls[@]}" \
    >"$work/gw-$mode.log" 2>&1 &
  gw=$!
  until grep -q 'trunk link 1: TLS 1.3' "$work/gw-$mode.log" 2>/dev/null; do sleep 0.1; done
  sleep 2
  rss0=$(rss_kib "$gw")
  cpu0=$(cpu_ticks "$gw")
  "$bin/mobile-sim" phones --target "$mode://127.0.0.1:$gw_port/ws" --ca "$pki/ca.pem" \
    --device-key "$work/device-token.key" --phones "$n" --rate 2000 -C 256 --connect-timeout 60s \
    --min-interval 1h --max-interval 1h --duration 60s --device-prefix "$mode-$RANDOM-" --quiet --json \
    >"$work/$mode.json" 2>"$work/$mode.err" &
  sim=$!
  until grep -q "status live=$n " "$work/gw-$mode.log" 2>/dev/null; do
    kill -0 "$sim" 2>/dev/null || { tail -5 "$work/$mode.err" >&2; hf_die "mobile-sim ended before $n $mode phones were held"; }
    sleep 0.5
  done
  cpu1=$(cpu_ticks "$gw")
  sleep 5 # settled: the handshakes' passing allocations returned
  rss1=$(rss_kib "$gw")
  hz=$(getconf CLK_TCK)
  awk -v m="$mode" -v n="$n" -v r0="$rss0" -v r1="$rss1" -v c0="$cpu0" -v c1="$cpu1" -v hz="$hz" 'BEGIN {
    printf "%-3s %d idle phones: gateway RSS %d -> %d KiB, %.0f B per phone; CPU to accept them %.2f s, %.0f us per phone\n",
      m, n, r0, r1, (r1 - r0) * 1024 / n, (c1 - c0) / hz, (c1 - c0) / hz * 1e6 / n }'
  kill "$sim" "$gw" 2>/dev/null || true
  wait "$sim" "$gw" 2>/dev/null || true
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
