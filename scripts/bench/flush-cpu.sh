#!/usr/bin/env bash
# CPU per phone byte of the aggregator when few sessions change per flush: N direct phones over
# wss (mobile-sim), each sending a byte every 6-18 s (N / 12 bytes/s in all: 1,500 bytes/s for
# 18,000 phones), into one aggregator on PostgreSQL. The aggregator's CPU (utime + stime from
# /proc/PID/stat) is measured over a window of the hold, after the ramp, and divided by the bytes
# it made durable in that window (holdfast_flushed_bytes_total, or the phones' own count for a
# binary without that metric). Runs each given aggregator binary in turn, RUNS times, and prints
# the median of each and their ratio, so that a before/after comparison shares the machine's load.
#
#   DATABASE_URL=postgres://... scripts/bench/flush-cpu.sh [PHONES] [RUNS] [AGGREGATOR_BIN...]
#     defaults: 18000 phones, 3 runs, the aggregator of this checkout (release)
#
# Each run: a fresh database, 40 s ramp and settle, then a 30 s window. Verified by mobile-sim:
# every byte sent confirmed and persisted exactly once; up to 1 phone in 1,000 may drop or fail
# a connection attempt (a CPU benchmark on a loaded machine, not a drill: one run saw 2 of 18,000
# phones reset by the local TCP stack).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
phones="${1:-18000}"
runs="${2:-3}"
shift $(($# < 2 ? $# : 2))
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh)}"
cargo build --release -q -p aggregator -p mobile-sim
bins=("$@")
[ "${#bins[@]}" -gt 0 ] || bins=("$CARGO_TARGET_DIR/release/aggregator")
sim="$CARGO_TARGET_DIR/release/mobile-sim"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
tck="$(getconf CLK_TCK)"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() {
  curl -fsS --cacert "$work/ca.pem" "https://localhost:$1/metrics" |
    awk -v m="$2" '$1 == m {printf "%d", $2; found = 1} END {if (!found) exit 1}'
}

# one_run BIN N: prints "us_per_byte cores bytes_per_s"
one_run() {
  local bin="$1" n="$2" db="holdfast_flushcpu_$$_$2" port pid simpid
  psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
  local url="${DATABASE_URL%/*}/$db"
  port=$((21000 + RANDOM % 2000))
  rm -f "$work/ca.pem" "$work/agg.out"
  RUST_LOG=warn "$bin" --data-dir "$work" --database-url "$url" --listen "127.0.0.1:$port" \
    --max-phones $((phones + 1000)) >"$work/agg.out" 2>"$work/agg.log" &
  pid=$!
  for _ in $(seq 1 300); do grep -q '^listening' "$work/agg.out" 2>/dev/null && break; sleep 0.2; done
  grep -q '^listening' "$work/agg.out" || { cat "$work/agg.log" >&2; hf_die "$bin did not start"; }
  "$sim" phones --target "wss://localhost:$port/ws" --ca "$work/ca.pem" --device-key "$work/device-token.key" \
    --phones "$phones" --rate 2000 -C 256 \
    --min-interval 6s --max-interval 18s --duration 80s --device-prefix "cpu$n-" \
    --max-dropped $((phones / 1000)) --max-failed $((phones / 1000)) \
    --verify --database-url "$url" --quiet --json >"$work/sim-$n.json" 2>"$work/sim-$n.err" &
  simpid=$!
  sleep 40
  local t0 c0 b0 t1 c1 b1
  t0="$(date +%s.%N)"
  c0="$(cpu_ticks "$pid")"
  b0="$(metric "$port" holdfast_flushed_bytes_total || metric "$port" holdfast_phone_bytes_total)"
  sleep 30
  t1="$(date +%s.%N)"
  c1="$(cpu_ticks "$pid")"
  b1="$(metric "$port" holdfast_flushed_bytes_total || metric "$port" holdfast_phone_bytes_total)"
  wait "$simpid" || { cat "$work/sim-$n.json" "$work/sim-$n.err" >&2; hf_die "mobile-sim's verdict failed (run $n, $bin)"; }
  kill -TERM "$pid"
  wait "$pid" || true
  hf_drop_database "$DATABASE_URL" "$db"
  awk -v c0="$c0" -v c1="$c1" -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" -v tck="$tck" 'BEGIN {
    cpu = (c1 - c0) / tck; secs = t1 - t0; bytes = b1 - b0
    if (bytes <= 0) { print "no bytes in the window" > "/dev/stderr"; exit 1 }
    printf "%.1f %.4f %.0f\n", cpu * 1e6 / bytes, cpu / secs, bytes / secs
  }'
}


echo "flush-cpu: $phones direct wss phones, one byte each every 6-18 s; $runs runs per binary, alternating; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$runs"); do
  for i in "${!bins[@]}"; do
    line="$(one_run "${bins[$i]}" "$r$i")"
    echo "$line" >>"$work/results-$i"
    printf '  run %d  %-60s  %s us/byte  %s cores  %s bytes/s\n' "$r" "${bins[$i]}" $line
  done
done
base=""
for i in "${!bins[@]}"; do
  m="$(cut -d' ' -f1 "$work/results-$i" | hf_median)"
  cores="$(cut -d' ' -f2 "$work/results-$i" | hf_median)"
  [ -n "$base" ] || base="$m"
  printf 'median  %-60s  %s us per byte, %s cores  (ratio to the first: %s)\n' "${bins[$i]}" "$m" "$cores" \
    "$(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.2f", a / b}')"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
