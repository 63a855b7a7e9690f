#!/usr/bin/env bash
# mobile-sim and Thor (the Node WebSocket load tool, npm package `thor` 1.0.0) holding the same
# connections against the same server, side by side: resident memory per held connection, time
# until all N are held, CPU time. A benchmark, not a test: it asserts nothing, it prints figures.
#
#   scripts/bench/thor-compare.sh [N ...]            (default: 5000 10000)
#
# Environment: RUNS (3; the table shows medians), SETTLE (5 s held before measuring),
# CONCURRENT (256 connection attempts in flight, the same for both tools), MODES ("plain";
# "plain tls" adds wss://), THOR_WORKERS (Thor's -W; default: Thor's own default, one worker per
# CPU), KEEP=1 keeps the work folder with every run's output. docs/benchmarks.md has the figures.
#
# How the comparison is made fair (read Thor's bin/thor and mjolnir.js to check):
# - Thor cannot hold an idle connection. Each connection sends a message of -B bytes as soon as it
#   is open, sends the next one when a reply arrives, and closes after -M replies. It holds a
#   connection only while it waits for a reply. So both tools run against a server that never
#   answers: the aggregator (`--plain`, embedded SQLite, a fresh one per run) answers a phone only
#   with {"durable":N} after committing new bytes, and Thor's message is empty (-B 0), so there
#   are no new bytes and no answer. Thor's connections are then held as idle as mobile-sim's
#   phones (`--min-interval 1h`: they send nothing during the hold). The only traffic difference
#   is Thor's one empty frame per connection (6 bytes on the wire).
# - The same server binary and settings, the same URL path, the same number of connection
#   attempts in flight (Thor -C, mobile-sim -C, and no rate limit for mobile-sim: --rate 0).
# - Memory is measured from outside the same way for both, summed over every process of the tool
#   (Thor's master and its cluster workers; mobile-sim's workers if any), SETTLE seconds after
#   the server counted all N connections: VmRSS, and its anonymous part RssAnon (heap, stacks:
#   where connections live). Per connection = (RssAnon sum - the same sum in a run holding 1
#   connection) / N, so the fixed cost of the runtime (Node's ~50 MiB per process) is not spread
#   over the connections. RssAnon and not VmRSS because this machine runs DAMON with a pageout
#   scheme (/sys/kernel/mm/damon): with no swap it can only drop file-backed pages, such as the
#   node binary's code, and it does so at unpredictable moments, so VmRSS of identical runs
#   differed by up to 80 MiB. The marginal cost between two N is printed too.
# - Time is from starting the tool's command to the server counting N open sessions
#   (`holdfast_direct_sessions` on /metrics, polled every 50 ms), the same clock for both,
#   process start-up included (Node forks its workers first).
# - Each tool with its defaults otherwise: Thor forks one worker per CPU; mobile-sim runs one
#   process up to 15,000 phones and binds loopback connections to 127.0.0.2.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"

if [ "$#" -gt 0 ]; then sizes=("$@"); else sizes=(5000 10000); fi
runs="${RUNS:-3}"
settle="${SETTLE:-5}"
concurrent="${CONCURRENT:-256}"
modes="${MODES:-plain}"
for n in "${sizes[@]}"; do
  # The server holds N sockets in one process, under the 20,000 open files a process may have.
  if [ "$n" -lt 2 ] || [ "$n" -gt 18000 ]; then hf_die "N must be 2..18000 (one server process holds them all), got $n"; fi
done

# --- Node and Thor -------------------------------------------------------------------------------

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  hf_log "installing Node.js and npm (Debian packages)"
  hf_as_root apt-get update -qq
  hf_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi

# Thor 1.0.0 (2013) as published cannot be installed or run unchanged: its package.json takes
# `ws` and `fast-stats` from git URLs (git:// is gone from GitHub), so those two become registry
# versions: ws ^8 (the old 0.4 API Thor uses, `new WebSocket(url, {protocolVersion})`, `send(data,
# {binary}, cb)`, events open/message/close/error, still holds) and fast-stats 0.0.7. And
# mjolnir.js passes `mask: masked` to send(), false unless --masked: ws 8 then sends unmasked
# client frames, which RFC 6455 servers must reject (the aggregator closes with 1002), so the
# option is removed and ws masks as a client must. Nothing else is changed.
thor_version=1.0.0
thor_cache="$HOME/.cache/holdfast/thor"
thor_dir="$thor_cache/thor-$thor_version"
thor_fixes="ws=^8 fast-stats=0.0.7 no-mask-option" # bump to reinstall when the fixes change
if [ "$(cat "$thor_dir/.holdfast-fixes" 2>/dev/null)" != "$thor_fixes" ] || [ ! -d "$thor_dir/node_modules/ws" ]; then
  hf_log "installing thor $thor_version into $thor_dir"
  rm -rf "$thor_dir" "$thor_cache/package"
  mkdir -p "$thor_cache"
  (cd "$thor_cache" && npm pack --silent "thor@$thor_version" >/dev/null && tar xzf "thor-$thor_version.tgz" &&
    mv package "$thor_dir" && rm -f "thor-$thor_version.tgz")
  node -e '
    const fs = require("fs"), f = process.argv[1], p = JSON.parse(fs.readFileSync(f));
    p.dependencies.ws = "^8";
    p.dependencies["fast-stats"] = "0.0.7";
    fs.writeFileSync(f, JSON.stringify(p, null, 2) + "\n");' "$thor_dir/package.json"
  sed -i -e 's/^\(\s*\)binary: binary,$/\1binary: binary/' -e '/^\s*mask: masked$/d' "$thor_dir/mjolnir.js"
  if grep -q 'mask:' "$thor_dir/mjolnir.js"; then hf_die "thor's mjolnir.js still passes a mask option"; fi
  (cd "$thor_dir" && npm install --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$thor_fixes" >"$thor_dir/.holdfast-fixes"
fi
thor_cmd=(node "$thor_dir/bin/thor")
ws_version=$(node -p 'require(process.argv[1] + "/node_modules/ws/package.json").version' "$thor_dir")

# --- holdfast binaries ---------------------------------------------------------------------------

cargo build --release -q -p aggregator -p mobile-sim
bin="$CARGO_TARGET_DIR/release"

work="$(mktemp -d)"
agg=""
tool=""
cleanup() {
  # Only processes this script started, by their ids.
  # shellcheck disable=SC2046
  [ -n "$tool" ] && { kill -KILL $(tree_pids "$tool") 2>/dev/null || true; }
  [ -n "$agg" ] && { kill -TERM "$agg" 2>/dev/null || true; }
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then hf_log "run outputs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- measuring -----------------------------------------------------------------------------------

# A process and all its descendants (Thor's master forks its workers; mobile-sim may start workers).
tree_pids() {
  local pids="$1" frontier="$1" next p child
  while [ -n "$frontier" ]; do
    next=""
    for p in $frontier; do
      for child in $(ps -o pid= --ppid "$p" 2>/dev/null); do next="$next${next:+ }$child"; done
    done
    [ -n "$next" ] && pids="$pids $next"
    frontier="$next"
  done
  echo "$pids"
}

# Sum of one /proc/PID/status field (KiB: VmRSS, RssAnon) over the given processes.
status_sum_kib() {
  local field="$1" sum=0 p v
  shift
  for p in "$@"; do
    v=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || true)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# "user system" CPU seconds summed over the given processes (utime and stime, fields 14 and 15
# of stat, counted after the ") " that ends the command name).
cpu_sum_s() {
  local user=0 sys=0 p t hz
  hz=$(getconf CLK_TCK)
  for p in "$@"; do
    t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}' || true)
    [ -n "$t" ] || continue
    user=$((user + ${t% *}))
    sys=$((sys + ${t#* }))
  done
  awk -v u="$user" -v s="$sys" -v hz="$hz" 'BEGIN {printf "%.2f %.2f", u / hz, s / hz}'
}

# RssAnon (MiB) of each given process, "20+47+47", to show where the memory is.
anon_each_mib() {
  local out="" p v
  for p in "$@"; do
    v=$(awk '$1 == "RssAnon:" {printf "%.0f", $2 / 1024}' "/proc/$p/status" 2>/dev/null || true)
    out="$out${out:++}${v:-0}"
  done
  echo "$out"
}

now_s() { date +%s.%N; }

# Waits (at most 70 s) until fewer than 100 connections of earlier runs are left in TIME_WAIT.
# Each run closes up to N connections, and the side that closed first keeps them for 60 s, with
# their local port; with tens of thousands of them the kernel's search for a free ephemeral port
# slows every connect() of the next run (Thor's 10,000 connections took 15, 28 and 41 s in
# three back-to-back runs before this wait, though the machine's load rose meanwhile too).
used_ports=""
wait_time_wait() {
  local p left filter=""
  for p in $used_ports; do filter="$filter${filter:+ or }sport = :$p or dport = :$p"; done
  [ -n "$filter" ] || return 0
  for _ in $(seq 1 140); do
    left=$(ss -Htan state time-wait "( $filter )" | wc -l)
    [ "$left" -lt 100 ] && return 0
    sleep 0.5
  done
  hf_warn "$left connections of earlier runs still in TIME_WAIT"
}

# One run: a fresh aggregator, one tool holding N connections, measured, then both stopped.
# Appends "mode tool n run seconds_to_all rss_kib anon_kib user_s sys_s processes held own_time
# anon_each_mib" to results.tsv.
run_one() {
  local mode="$1" which="$2" n="$3" run="$4"
  local port dir scheme http curl_opts=() agg_flags=() ca_opt=() t0 t1 held=0 pids rss anon each cpu own="-"
  # Below the ephemeral port range (32768-60999), so no client socket can hold the port.
  port=$((20000 + RANDOM % 12000))
  wait_time_wait
  used_ports="$used_ports $port"
  dir="$work/$mode-$which-$n-$run"
  mkdir -p "$dir/data"
  if [ "$mode" = plain ]; then
    scheme=ws; http=http; agg_flags=(--plain)
  else
    scheme=wss; http=https; curl_opts=(--cacert "$dir/data/ca.pem"); ca_opt=(--ca "$dir/data/ca.pem")
  fi
  # Thor cannot show device tokens: the aggregator believes phones here (a benchmark, not a
  # deployment).
  RUST_LOG=warn "$bin/aggregator" --data-dir "$dir/data" --listen "127.0.0.1:$port" --phone-auth off \
    --max-phones $((n + 100)) "${agg_flags[@]}" >"$dir/aggregator.out" 2>"$dir/aggregator.log" &
  agg=$!
  for _ in $(seq 1 300); do grep -q '^listening' "$dir/aggregator.out" 2>/dev/null && break; sleep 0.1; done
  grep -q '^listening' "$dir/aggregator.out" || hf_die "aggregator did not start, see $dir/aggregator.log"

  t0=$(now_s)
  if [ "$which" = thor ]; then
    # -B 0: an empty message, which the aggregator does not answer (see the top of this file);
    # -M 1: one message; NODE_EXTRA_CA_CERTS: Node's TLS trusts the aggregator's CA for wss://.
    local node_env=()
    [ "$mode" = tls ] && node_env=(NODE_EXTRA_CA_CERTS="$dir/data/ca.pem")
    env "${node_env[@]}" "${thor_cmd[@]}" -A "$n" -C "$concurrent" -M 1 -B 0 \
      ${THOR_WORKERS:+-W "$THOR_WORKERS"} "$scheme://127.0.0.1:$port/ws?device=thor" \
      >"$dir/tool.out" 2>"$dir/tool.err" &
  else
    "$bin/mobile-sim" phones --target "$scheme://127.0.0.1:$port/ws" "${ca_opt[@]}" --phones "$n" --rate 0 -C "$concurrent" \
      --min-interval 1h --max-interval 1h --duration 30m --quiet --json \
      >"$dir/tool.out" 2>"$dir/tool.err" &
  fi
  tool=$!

  # Until the server holds all N (or 300 s pass: then the run is reported with what it held).
  local deadline
  deadline=$(awk -v t="$t0" 'BEGIN {printf "%.3f", t + 300}')
  while :; do
    held=$(curl -s "${curl_opts[@]}" "$http://127.0.0.1:$port/metrics" |
      awk '/^holdfast_direct_sessions / {print $2}')
    [ "${held:-0}" -ge "$n" ] && break
    awk -v now="$(now_s)" -v d="$deadline" 'BEGIN {exit !(now > d)}' && break
    kill -0 "$tool" 2>/dev/null || break
    sleep 0.05
  done
  t1=$(now_s)

  sleep "$settle"
  pids=$(tree_pids "$tool")
  # shellcheck disable=SC2086
  rss=$(status_sum_kib VmRSS $pids)
  # shellcheck disable=SC2086
  anon=$(status_sum_kib RssAnon $pids)
  # shellcheck disable=SC2086
  each=$(anon_each_mib $pids)
  # shellcheck disable=SC2086
  cpu=$(cpu_sum_s $pids)
  held=$(curl -s "${curl_opts[@]}" "$http://127.0.0.1:$port/metrics" | awk '/^holdfast_direct_sessions / {print $2}')

  # Stop: SIGINT is how both are meant to be ended (Thor closes every socket and prints its
  # summary; mobile-sim drains, closes with 1000 and prints its report); whatever is left after
  # 60 s is killed, by id.
  kill -INT "$tool" 2>/dev/null || true
  for _ in $(seq 1 600); do kill -0 "$tool" 2>/dev/null || break; sleep 0.1; done
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  wait "$tool" 2>/dev/null || true
  tool=""
  kill -TERM "$agg" 2>/dev/null || true
  wait "$agg" 2>/dev/null || true
  agg=""

  # The tool's own "all connected" figure, for comparison with the outside clock.
  if [ "$which" = thor ]; then
    own=$(awk '/^Online/ {printf "%.2f", $2 / 1000}' "$dir/tool.out")
  else
    own=$(node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1]));
      const s = r.connect_rate.all_connected_after_s;
      console.log(s == null ? "-" : s.toFixed(2));' "$dir/tool.out" 2>/dev/null || echo -)
  fi
  # shellcheck disable=SC2086
  printf '%s\t%s\t%s\t%s\t%.2f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$which" "$n" "$run" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" "$rss" "$anon" "${cpu% *}" "${cpu#* }" \
    "$(echo $pids | wc -w)" "${held:-0}" "${own:--}" "$each" >>"$work/results.tsv"
  tail -n 1 "$work/results.tsv" | awk -F'\t' '{printf "    %-5s %-10s N=%-6s run %s: %6.2f s to all held, RSS %7d KiB, anon %7d KiB (%s MiB), CPU %5.2f s user %5.2f s sys, server held %s, tool says %s s\n", $1, $2, $3, $4, $5, $6, $7, $13, $8, $9, $11, $12}' >&2
}

# Median of the numbers on stdin.
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# Median of column C of the results of mode M, tool T, N.
med() { awk -F'\t' -v m="$1" -v t="$2" -v n="$3" -v c="$4" '$1 == m && $2 == t && $3 == n {print $c}' "$work/results.tsv" | median; }

: >"$work/results.tsv"
load0=$(cut -d' ' -f1-3 /proc/loadavg) # other work on the machine skews the times, not the memory
hf_log "Node $(node --version), thor $thor_version with ws $ws_version; $(nproc) CPUs; N = ${sizes[*]}; $runs runs each; -C $concurrent; modes: $modes"
for mode in $modes; do
  for n in 1 "${sizes[@]}"; do
    for run in $(seq 1 "$runs"); do
      # Alternate which tool goes first, so neither always runs on the warmer machine.
      if [ $((run % 2)) = 1 ]; then order="mobile-sim thor"; else order="thor mobile-sim"; fi
      for which in $order; do run_one "$mode" "$which" "$n" "$run"; done
    done
  done
done

# --- the table -----------------------------------------------------------------------------------

echo
echo "Idle connections held against the aggregator (--plain or TLS, embedded SQLite, a fresh process per run); medians of $runs runs"
echo "Node $(node --version), thor $thor_version (ws $ws_version), $(nproc) CPUs, -C $concurrent, measured ${settle}s after all held;"
echo "load average at start $load0, at end $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-10s %6s %12s %10s %10s %10s %10s %9s %9s  %s\n' mode tool N "to all held" "tool says" "VmRSS" "RssAnon" "per conn" \
  "CPU user" "CPU sys" "RssAnon per process (MiB)"
for mode in $modes; do
  for which in mobile-sim thor; do
    base=$(med "$mode" "$which" 1 7)
    for n in 1 "${sizes[@]}"; do
      anon=$(med "$mode" "$which" "$n" 7)
      per="-"
      [ "$n" -gt 1 ] && per=$(awk -v r="$anon" -v b="$base" -v n="$n" 'BEGIN {printf "%.2f KiB", (r - b) / n}')
      # The per-process split of the run whose RssAnon sum is the median.
      each=$(awk -F'\t' -v m="$mode" -v t="$which" -v n="$n" -v r="$anon" \
        '$1 == m && $2 == t && $3 == n && $7 == r {print $13; exit}' "$work/results.tsv")
      printf '%-5s %-10s %6s %10.2f s %8s s %6.1f MiB %6.1f MiB %10s %7.2f s %7.2f s  %s\n' "$mode" "$which" "$n" \
        "$(med "$mode" "$which" "$n" 5)" "$(med "$mode" "$which" "$n" 12)" \
        "$(awk -v r="$(med "$mode" "$which" "$n" 6)" 'BEGIN {print r / 1024}')" \
        "$(awk -v r="$anon" 'BEGIN {print r / 1024}')" "$per" "$(med "$mode" "$which" "$n" 8)" \
        "$(med "$mode" "$which" "$n" 9)" "${each:-}"
    done
    # The marginal cost between consecutive N: independent of any fixed cost.
    prev=""
    for n in "${sizes[@]}"; do
      if [ -n "$prev" ] && [ "$n" -gt "$prev" ]; then
        awk -v a="$(med "$mode" "$which" "$prev" 7)" -v b="$(med "$mode" "$which" "$n" 7)" -v p="$prev" -v n="$n" \
          -v m="$mode" -v t="$which" 'BEGIN {printf "%-5s %-10s marginal %d -> %d: %.2f KiB RssAnon per connection\n", m, t, p, n, (b - a) / (n - p)}'
      fi
      prev="$n"
    done
  done
done
echo
echo "Every run: mode, tool, N, run, s to all held, VmRSS KiB, RssAnon KiB, CPU user s, CPU sys s, processes, held, tool's own s, RssAnon per process MiB"
sort -t$'\t' -k1,1 -k2,2 -k3,3n -k4,4n "$work/results.tsv"
