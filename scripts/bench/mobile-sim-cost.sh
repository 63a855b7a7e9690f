#!/usr/bin/env bash
# mobile-sim's own CPU (issue #17, item 3): the load generator must not be what starves the
# system under test. One aggregator (SQLite), one host gateway (firmware/host, 2 TLS trunks), and
# one mobile-sim process (-W 1) holding N phones on the gateway, in two phases:
#   1. idle: the N phones hold their connections and send nothing (--min-interval 1h); mobile-sim's
#      CPU (utime + stime from /proc/PID/stat) over WINDOWS windows of WINDOW seconds, per held
#      phone;
#   2. traffic: the same N phones send BYTES_PER_S bytes a second in all (each phone one byte
#      every N / BYTES_PER_S seconds on average, uniform in 0.5x..1.5x); mobile-sim's CPU over the
#      same windows divided by the bytes the gateway counted in them (the gateway's once-a-second
#      counter line; the CPU read as each line appears), and per held phone.
# When the mobile-sim binary reports its own CPU (the `cpu` object of its --json report), that is
# printed too, for comparison with the figures measured from outside.
#
#   scripts/bench/mobile-sim-cost.sh [N] [BYTES_PER_S]          (defaults 18000 1500)
#
# Environment: MSIM_BIN (default: this checkout's release build; point it at another build to
# measure before and after with the same script), MSIM_ARGS (extra mobile-sim flags, e.g.
# "--threads 2"), WINDOW (seconds per CPU window, 10), WINDOWS (5; medians are printed), PERF=1
# (after the traffic windows, `perf record -g` mobile-sim for 15 s; the report is kept in the
# work folder, which is then kept), KEEP=1 keeps the work folder. Prints the load average at the
# start and the end: the machine is shared, CPU time per unit is what is compared, never wall time.
# docs/benchmarks.md records the figures.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
phones="${1:-18000}"
rate="${2:-1500}"
window="${WINDOW:-10}"
windows="${WINDOWS:-5}"
perf_on="${PERF:-0}"
# One mobile-sim process and one gateway process hold them all, under 20,000 open files each.
if [ "$phones" -lt 100 ] || [ "$phones" -gt 19500 ]; then hf_die "N must be 100..19500, got $phones"; fi

cargo build --release -q -p aggregator -p mobile-sim -p gateway
bin="$CARGO_TARGET_DIR/release"
msim="${MSIM_BIN:-$bin/mobile-sim}"
read -r -a extra <<<"${MSIM_ARGS:-}"
work="$(mktemp -d)"
[ "$perf_on" = 1 ] && KEEP=1
cleanup() {
  # Only the processes this script started, by their ids.
  # shellcheck disable=SC2046
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then hf_log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores)"
echo "mobile-sim: $msim ${extra[*]:-}"

cat >"$work/measure.py" <<'PY'
"""CPU windows from /proc/PID/stat; the bytes from the gateway's once-a-second log line."""
import os, re, statistics, sys, time

HZ = os.sysconf("SC_CLK_TCK")

def ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime (fields 14 and 15)

def counts(path, rx):
    with open(path, errors="replace") as f:
        return [int(m.group(1)) for m in rx.finditer(f.read())]

def aligned(pid, path, rx):
    """The CPU ticks as the next counter line appears, and that line's counter."""
    before = len(counts(path, rx))
    deadline = time.time() + 5
    while time.time() < deadline:
        c = counts(path, rx)
        if len(c) > before:
            return ticks(pid), time.monotonic(), c[-1]
        time.sleep(0.01)
    raise SystemExit(f"no new counter line in {path} for 5 s")

pid, phones, window, windows, path = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rx = re.compile(r"bytes=([0-9]+)")
cores, us_byte, us_phone, rates = [], [], [], []
total_t = total_w = total_b = 0.0
for _ in range(windows):
    t0, w0, b0 = aligned(pid, path, rx)
    time.sleep(max(window - 1.5, 0.5))
    t1, w1, b1 = aligned(pid, path, rx)
    cpu, wall, b = (t1 - t0) / HZ, w1 - w0, b1 - b0
    total_t += cpu; total_w += wall; total_b += b
    cores.append(cpu / wall)
    us_phone.append(cpu * 1e6 / wall / phones)
    rates.append(b / wall)
    if b > 0:
        us_byte.append(cpu * 1e6 / b)
med = statistics.median
print(f"  bytes/s at the gateway: median {med(rates):,.0f}")
print(f"  mobile-sim cores: median {med(cores):.4f}, {total_t / total_w:.4f} over {total_w:.0f} s (windows: {', '.join(f'{x:.4f}' for x in cores)})")
print(f"  per held phone: median {med(us_phone):.3f} us of CPU per second, {total_t * 1e6 / total_w / phones:.3f} over all")
if us_byte:
    print(f"  per byte sent: median {med(us_byte):.2f} us, {total_t * 1e6 / total_b:.2f} over all (windows: {', '.join(f'{x:.2f}' for x in us_byte)})")
print(f"  (resolution: one clock tick in {total_w:.0f} s = {1e6 / HZ / total_w / phones:.4f} us per held phone per second)")
PY

cat >"$work/selfreport.py" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b = r["bytes"]
print(f"  mobile-sim's report: {r['devices']} phones, sent {b['sent']:,}, unconfirmed {b['unconfirmed']}, ok={r['ok']}")
c = r.get("cpu")
if c:
    f = lambda v, spec: format(v, spec) if v is not None else "-"
    print(f"  its own CPU (report): {c['cores']:.4f} cores over {c['window_seconds']:.1f} s, "
          f"{f(c['us_per_byte_sent'], '.2f')} us per byte ({c['bytes_sent']:,} bytes), "
          f"{f(c['us_per_held_per_s'], '.3f')} us per held phone per second; "
          f"{c['connect_cpu_seconds']:.2f} s of CPU connecting")
PY

# --- the aggregator (SQLite) and the gateway ------------------------------------------------------
agg_port=$((20000 + RANDOM % 1000))
secret=$("$bin/aggregator" --data-dir "$work" gateway add cost-gw | awk '{print $2}')
RUST_LOG=warn "$bin/aggregator" --data-dir "$work" --listen "127.0.0.1:$agg_port" >"$work/agg.out" 2>&1 &
until grep -q '^listening' "$work/agg.out" 2>/dev/null; do sleep 0.1; done
# Phones prove their device at the gateway (a token per phone from mobile-sim, one Ed25519 check
# per connect at the gateway), as in a real deployment.
device_public_key=$("$bin/aggregator" --data-dir "$work" device public-key)
gw_port=$((21000 + RANDOM % 1000))
RUST_LOG=info NO_COLOR=1 "$bin/gateway" --id cost-gw --secret "$secret" --ca "$work/ca.pem" \
  --aggregator "127.0.0.1:$agg_port" --listen "127.0.0.1:$gw_port" --device-public-key "$device_public_key" --capacity 19500 --status-interval-s 1 \
  >"$work/gw.log" 2>&1 &
until grep -q 'trunk link 1: TLS 1.3' "$work/gw.log" 2>/dev/null; do sleep 0.1; done
sleep 2

live() { grep -o 'live=[0-9]*' "$work/gw.log" | tail -1 | cut -d= -f2; }
wait_held() {
  local held=0
  for _ in $(seq 1 900); do
    held=$(live)
    [ "${held:-0}" -ge "$phones" ] && return 0
    sleep 0.1
  done
  hf_die "the gateway held only ${held:-0} of $phones phones"
}
wait_released() {
  for _ in $(seq 1 300); do
    [ "$(live)" = 0 ] && return 0
    sleep 0.1
  done
}

# --- 1: idle ------------------------------------------------------------------------------------
hold=$((20 + windows * window + 15))
"$msim" phones --device-key "$work/device-token.key" --target "ws://127.0.0.1:$gw_port/ws" --phones "$phones" -W 1 --rate 2000 -C 256 \
  --min-interval 1h --max-interval 1h --duration "${hold}s" --device-prefix "idle-$RANDOM-" --quiet --json \
  "${extra[@]}" >"$work/idle.json" 2>"$work/idle.err" &
sim=$!
wait_held
sleep 5
echo "idle: $phones phones held, nothing sent"
python3 "$work/measure.py" "$sim" "$phones" "$window" "$windows" "$work/gw.log"
if ! wait "$sim"; then
  cat "$work/idle.err" >&2
  hf_die "mobile-sim (idle) reported a failure"
fi
python3 "$work/selfreport.py" "$work/idle.json"
wait_released
sleep 3

# --- 2: traffic ---------------------------------------------------------------------------------
mean_ms=$((phones * 1000 / rate))
min_ms=$((mean_ms / 2))
max_ms=$((mean_ms * 3 / 2))
settle=$((10 + max_ms / 1000 + 5)) # the ramp, then every phone past its first pause
extra_s=0
[ "$perf_on" = 1 ] && extra_s=20
run=$((settle + windows * window + 10 + extra_s))
"$msim" phones --device-key "$work/device-token.key" --target "ws://127.0.0.1:$gw_port/ws" --phones "$phones" -W 1 --rate 2000 -C 256 \
  --min-interval "${min_ms}ms" --max-interval "${max_ms}ms" --duration "${run}s" --drain-timeout 30s \
  --device-prefix "busy-$RANDOM-" --quiet --json "${extra[@]}" >"$work/busy.json" 2>"$work/busy.err" &
sim=$!
wait_held
sleep "$settle"
echo "traffic: $phones phones, one byte each every ${min_ms}..${max_ms} ms ($rate bytes/s in all)"
python3 "$work/measure.py" "$sim" "$phones" "$window" "$windows" "$work/gw.log"
if [ "$perf_on" = 1 ]; then
  perf record -F 999 -g -p "$sim" -o "$work/perf.data" -- sleep 15 >/dev/null 2>&1
  perf report -i "$work/perf.data" --no-children --stdio --percent-limit 1 2>/dev/null | grep -v '^$' \
    | head -150 >"$work/perf.txt" || true
  echo "  perf: $work/perf.txt"
fi
if ! wait "$sim"; then
  cat "$work/busy.err" >&2
  hf_die "mobile-sim (traffic) reported a failure (a phone lost, or bytes never confirmed)"
fi
python3 "$work/selfreport.py" "$work/busy.json"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
