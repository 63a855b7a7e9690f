#!/usr/bin/env bash
# The host gateway's cost per phone (issue #17, item 2), all in one run on one machine:
#   1. memory per idle phone: one gateway's RSS before, and while it holds N_IDLE idle phones
#      (mobile-sim, nothing sent during the hold);
#   2. CPU per idle phone: the gateway's CPU (utime + stime from /proc/PID/stat) while it holds
#      no phone, then while it holds the N_IDLE idle phones; the difference, per idle phone and
#      per 100,000 idle phones;
#   3. CPU per phone byte, against a yardstick measured in the same run: N_BUSY mobile-sim phones,
#      spread round-robin over the gateway and a minimal Node.js `ws` server
#      (scripts/bench/peers/ws-count-server.js: counts each message's bytes and answers
#      {"durable":N}), each phone sending one byte every INTERVAL_MS on average (uniform in
#      0.5x..1.5x). Each server's CPU over the same windows, divided by the bytes it counted in
#      them (from its own once-a-second counter line, the CPU read as each line appears).
#
#   scripts/bench/gateway-cost.sh [N_IDLE] [N_BUSY] [INTERVAL_MS]     (defaults 19000 3000 200)
#
# Environment: GATEWAY_BIN (default: this checkout's release build; point it at another build to
# measure before and after with the same script), WINDOW (seconds per CPU window, 10), WINDOWS
# (6; medians are printed), KEEP=1 keeps the work folder. Prints the load average at the start
# and the end: the machine is shared, CPU time per unit is what is compared, never wall time.
# docs/benchmarks.md records the figures.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
idle="${1:-19000}"
busy="${2:-3000}"
interval_ms="${3:-200}"
window="${WINDOW:-10}"
windows="${WINDOWS:-6}"
# One gateway process holds them all, under the 20,000 open files a process may have.
if [ "$idle" -lt 100 ] || [ "$idle" -gt 19500 ]; then hf_die "N_IDLE must be 100..19500, got $idle"; fi

# --- Node and ws (installed once, outside the repository) -----------------------------------------
ws_version=8.23.0
ws_dir="$CARGO_TARGET_DIR/bench-node-ws-$ws_version"
if ! command -v node >/dev/null 2>&1; then hf_die "node (Node.js 18+) is needed for the yardstick"; fi
if [ ! -f "$ws_dir/node_modules/ws/package.json" ]; then
  hf_log "installing ws $ws_version into $ws_dir"
  mkdir -p "$ws_dir"
  (cd "$ws_dir" && npm install --no-save --no-audit --no-fund --loglevel=error "ws@$ws_version" >/dev/null)
fi

cargo build --release -q -p aggregator -p mobile-sim -p gateway
bin="$CARGO_TARGET_DIR/release"
gateway_bin="${GATEWAY_BIN:-$bin/gateway}"
work="$(mktemp -d)"
cleanup() {
  # Only the processes this script started, by their ids.
  # shellcheck disable=SC2046
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then hf_log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)  ($(nproc) cores)"
echo "gateway: $gateway_bin"

cat >"$work/measure.py" <<'PY'
"""CPU windows from /proc/PID/stat; counters from a server's once-a-second log line."""
import os, re, statistics, sys, threading, time

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
            return ticks(pid), c[-1]
        time.sleep(0.01)
    raise SystemExit(f"no new counter line in {path} for 5 s")

def idle_cores(pid, window, windows):
    """Cores in each window, and over all of them (finer: a window sees whole clock ticks)."""
    out = []
    first_t, first_w = ticks(pid), time.monotonic()
    for _ in range(windows):
        t0, w0 = ticks(pid), time.monotonic()
        time.sleep(window)
        out.append((ticks(pid) - t0) / HZ / (time.monotonic() - w0))
    return out, (ticks(pid) - first_t) / HZ / (time.monotonic() - first_w)

def per_byte(pid, path, pattern, window, windows, result):
    rx = re.compile(pattern)
    us, rates = [], []
    for _ in range(windows):
        t0, b0 = aligned(pid, path, rx)
        w0 = time.monotonic()
        time.sleep(max(window - 1.5, 0.5))
        t1, b1 = aligned(pid, path, rx)
        if b1 > b0:
            us.append((t1 - t0) / HZ * 1e6 / (b1 - b0))
            rates.append((b1 - b0) / (time.monotonic() - w0))
    result[pid] = (us, rates)

cmd = sys.argv[1]
if cmd == "idle":
    pid, window, windows = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    c, whole = idle_cores(pid, window, windows)
    print(f"{statistics.median(c):.6f} {whole:.6f} {','.join(f'{x:.4f}' for x in c)}")
elif cmd == "busy":
    window, windows = float(sys.argv[2]), int(sys.argv[3])
    servers = [(int(sys.argv[i]), sys.argv[i + 1], sys.argv[i + 2], sys.argv[i + 3]) for i in range(4, len(sys.argv), 4)]
    result = {}
    threads = [threading.Thread(target=per_byte, args=(pid, path, pat, window, windows, result)) for pid, _, path, pat in servers]
    for t in threads: t.start()
    for t in threads: t.join()
    med = {}
    for pid, name, _, _ in servers:
        us, rates = result.get(pid, ([], []))
        if not us:
            raise SystemExit(f"{name}: no bytes counted")
        med[name] = statistics.median(us)
        print(f"{name:8s} CPU per phone byte: median {med[name]:7.2f} us  (windows: {', '.join(f'{x:.2f}' for x in us)}; "
              f"{statistics.median(rates):,.0f} bytes/s)")
    names = [s[1] for s in servers]
    if len(names) == 2:
        print(f"ratio {names[0]} / {names[1]}: {med[names[0]] / med[names[1]]:.3f}")
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
RUST_LOG=info NO_COLOR=1 "$gateway_bin" --id cost-gw --secret "$secret" --ca "$work/ca.pem" \
  --aggregator "127.0.0.1:$agg_port" --listen "127.0.0.1:$gw_port" --device-public-key "$device_public_key" --capacity 19500 --status-interval-s 1 \
  >"$work/gw.log" 2>&1 &
gw=$!
until grep -q 'trunk link 1: TLS 1.3' "$work/gw.log" 2>/dev/null; do sleep 0.1; done
sleep 2

# --- 1 and 2: idle phones -------------------------------------------------------------------------
rss_before=$(rss_kib "$gw")
read -r cpu_empty cpu_empty_mean cpu_empty_all < <(python3 "$work/measure.py" idle "$gw" "$window" "$windows")
hold=$((60 + windows * window + 30)) # connecting, settling, measuring; below the 300 s idle timeout
"$bin/mobile-sim" phones --device-key "$work/device-token.key" --target "ws://127.0.0.1:$gw_port/ws" --phones "$idle" --rate 2000 -C 256 \
  --min-interval 1h --max-interval 1h --duration "${hold}s" --device-prefix "idle-$RANDOM-" --quiet --json \
  >"$work/idle.json" 2>"$work/idle.err" &
sim=$!
held=0
for _ in $(seq 1 600); do
  held=$(grep -o 'live=[0-9]*' "$work/gw.log" | tail -1 | cut -d= -f2)
  [ "${held:-0}" -ge "$idle" ] && break
  sleep 0.1
done
[ "${held:-0}" -ge "$idle" ] || hf_die "the gateway held only ${held:-0} of $idle idle phones"
sleep 5
rss_held=$(rss_kib "$gw")
read -r cpu_held cpu_held_mean cpu_held_all < <(python3 "$work/measure.py" idle "$gw" "$window" "$windows")
still=$(grep -o 'live=[0-9]*' "$work/gw.log" | tail -1 | cut -d= -f2)
[ "${still:-0}" -ge "$idle" ] || hf_die "idle phones left during the measurement (${still:-0} of $idle)"
kill "$sim" 2>/dev/null || true
wait "$sim" 2>/dev/null || true
python3 - "$idle" "$rss_before" "$rss_held" "$cpu_empty" "$cpu_held" "$cpu_empty_all" "$cpu_held_all" \
  "$cpu_empty_mean" "$cpu_held_mean" "$((window * windows))" <<'PY'
import os, sys
n, before, held = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
empty, full = float(sys.argv[4]), float(sys.argv[5])
empty_mean, full_mean, span = float(sys.argv[8]), float(sys.argv[9]), int(sys.argv[10])
tick = 1 / os.sysconf("SC_CLK_TCK") / span  # one clock tick over the whole span, in cores
print(f"idle phones held: {n}")
print(f"  RSS {before:,} KiB -> {held:,} KiB: {(held - before) * 1024 / n:,.0f} B per idle phone")
print(f"  CPU holding none: median {empty:.5f} cores, {empty_mean:.5f} over {span} s (windows: {sys.argv[6]})")
print(f"  CPU holding {n}: median {full:.5f} cores, {full_mean:.5f} over {span} s (windows: {sys.argv[7]})")
for what, d in (("medians", full - empty), (f"all {span} s", full_mean - empty_mean)):
    print(f"  per idle phone ({what}): {d / n * 1e6:.4f} us of CPU per second;"
          f" per 100,000 idle phones: {d / n * 1e5:.5f} cores")
print(f"  (resolution: one clock tick in {span} s = {tick / n * 1e5:.5f} cores per 100,000 idle phones)")
PY
sleep 5 # the phones' connections close

# --- 3: CPU per phone byte, the gateway and the Node ws server side by side ------------------------
node_port=$((22000 + RANDOM % 1000))
NODE_PATH="$ws_dir/node_modules" node scripts/bench/peers/ws-count-server.js "$node_port" >"$work/node.log" 2>&1 &
node_pid=$!
until grep -q '^listening' "$work/node.log" 2>/dev/null; do sleep 0.1; done
ws_node=$(node -p 'require(process.argv[1] + "/package.json").version' "$ws_dir/node_modules/ws")
echo "yardstick: node $(node --version), ws $ws_node"
min_ms=$((interval_ms / 2))
max_ms=$((interval_ms * 3 / 2))
run=$((20 + windows * window + 10))
"$bin/mobile-sim" phones --device-key "$work/device-token.key" --target "ws://127.0.0.1:$gw_port/ws" --target "ws://127.0.0.1:$node_port/ws" \
  --phones "$busy" --rate 2000 -C 256 --min-interval "${min_ms}ms" --max-interval "${max_ms}ms" \
  --duration "${run}s" --drain-timeout 30s --device-prefix "busy-$RANDOM-" --quiet --json \
  >"$work/busy.json" 2>"$work/busy.err" &
sim=$!
sleep 20 # every phone connected and sending
python3 "$work/measure.py" busy "$window" "$windows" \
  "$gw" gateway "$work/gw.log" 'bytes=([0-9]+)' "$node_pid" node "$work/node.log" 'bytes=([0-9]+)'
if ! wait "$sim"; then
  cat "$work/busy.err" >&2
  hf_die "mobile-sim reported a failure (a phone lost, or bytes never confirmed)"
fi
python3 - "$work/busy.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b = r["bytes"]
print(f"mobile-sim: {r['devices']} phones, bytes {json.dumps(b)}, ok={r['ok']}")
PY
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
