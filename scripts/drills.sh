#!/usr/bin/env bash
# Failure drills on a local cluster (scripts/cluster-lib.sh): a private PostgreSQL, 2 aggregators
# behind nginx (TLS terminated there), 3 gateways x 300 phones on 2 TLS trunks each, and 200
# phones straight to the aggregators through nginx, every phone sending a byte every 0.2-1 s.
# Each drill breaks one thing mid-run, prints what it did and what it saw, and ends with
# mobile-sim's verdict on every phone: every device checked, every byte sent confirmed durable
# and persisted exactly once, connections failed or dropped and bytes left unconfirmed only
# within the bounds the drill states for the part it breaks (none elsewhere), or the drill fails.
# Each drill runs in a subshell with `set -e`, so a probe that errs (a database read, a metric
# read) fails the drill; a drill that cannot run here fails too unless --allow-skip is given.
#
#   scripts/drills.sh [--allow-skip] [DRILL...]     default: all of them, in this order
#
#   aggregator-kill   SIGKILL one aggregator: its trunks reconnect through nginx to the other;
#                     phones at gateways keep their sessions (one session row per phone)
#   postgres-restart  stop PostgreSQL for 10 s: acknowledgements pause and resume, nothing is
#                     lost, aggregator memory stays within a bound
#   trunk-cut         kill one trunk's TCP connection (ss -K; where the kernel cannot, or with
#                     DRILL_CUT=relay, a relay of scripts/tcp-relay.py cuts it): the gateway
#                     reconnects and replays
#   gateway-restart   SIGKILL a host gateway (firmware/host) and restart it: its phones come
#                     back with backoff and jitter, the aggregators see only its trunks
#   passthrough       not a failure: the TLS passthrough variant of nginx (stream proxy, the
#                     aggregators' own TLS) on the embedded SQLite store, 15 s of load, verified
#
# Needs PostgreSQL and nginx (scripts/install-deps.sh) and python3; builds the release binaries.
# scripts/test.sh runs it. Takes about 3 minutes on 2 cores.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"

all=(aggregator-kill postgres-restart trunk-cut gateway-restart passthrough)
drills=()
allow_skip=0
for arg in "$@"; do
  case "$arg" in
    -h | --help)
      sed -n '2,28s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    --allow-skip) allow_skip=1 ;;
    *)
      case " ${all[*]} " in
        *" $arg "*) drills+=("$arg") ;;
        *) hf_die "unknown drill: $arg (drills: ${all[*]})" ;;
      esac
      ;;
  esac
done
[ "${#drills[@]}" -gt 0 ] || drills=("${all[@]}")

cargo build --release -q -p aggregator -p mobile-sim -p gateway

# Folding runs during the drills (docs/ARCHITECTURE.md, "Folding"), with a short margin so that
# it happens while they break things: sessions closed 2 s ago and gateway boots superseded 2 s
# ago leave the sessions table, and the verification must still find every byte exactly once.
export HOLDFAST_FOLD_AFTER_S="${HOLDFAST_FOLD_AFTER_S:-2}" HOLDFAST_FOLD_INTERVAL_MS="${HOLDFAST_FOLD_INTERVAL_MS:-500}"
command -v python3 >/dev/null || hf_die "python3 is needed to read mobile-sim's reports"

# shellcheck source=scripts/cluster-lib.sh
. scripts/cluster-lib.sh

GATEWAYS=3
PHONES=200
export CL_SESSIONS=300 CL_LINKS=2 CL_MIN_INTERVAL=200ms CL_MAX_INTERVAL=1s
LINKS_TOTAL=$((GATEWAYS * CL_LINKS))
work_root="$(mktemp -d /tmp/holdfast-drills.XXXXXX)"
# As root, the private PostgreSQL runs as the postgres account, which must reach its folder.
chmod 711 "$work_root"
passed=0
failed=0
skipped=0

cleanup() {
  cl_stop_all || true
  if [ "${DRILLS_KEEP:-0}" = 1 ]; then
    echo "drill folders kept in $work_root" >&2
  else
    rm -rf "$work_root"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '  %s\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }

# drill_start NAME STORE TLS [GATEWAY]: a fresh cluster in its own folder and port, with
# virtual gateways (mobile-sim's) or host gateways (firmware/host's `gateway`).
drill_start() {
  CL_STORE="$2" CL_TLS="$3" CL_AGGREGATORS=2 CL_GATEWAYS=$GATEWAYS CL_GATEWAY="${4:-virtual}"
  CL_PIDS=()
  cl_init "$work_root/$1" "$(cl_free_port)"
  cl_start_servers
  say "cluster: $CL_STORE store, 2 aggregators ($(cl_aggregator_addr 1), $(cl_aggregator_addr 2)), nginx on $CL_FRONT (TLS $CL_TLS)"
}

# What each load may suffer, as mobile-sim's bounds (--max-dropped, --max-failed,
# --allow-unconfirmed); empty: nothing. A drill sets them for the part it breaks, before
# drill_load. GW1_BOUNDS, when set, replaces GW_BOUNDS for gateway 1.
GW_BOUNDS=()
GW1_BOUNDS=()
PHONE_BOUNDS=()

# drill_load NAME DURATION: the gateways and the direct phones, in the background.
drill_load() {
  PREFIX="$1-$(date +%s)-"
  local i bounds
  for i in $(seq 1 "$GATEWAYS"); do
    bounds=("${GW_BOUNDS[@]}")
    [ "$i" != 1 ] || [ "${#GW1_BOUNDS[@]}" -eq 0 ] || bounds=("${GW1_BOUNDS[@]}")
    if [ "$i" = 1 ] && [ -n "${TRUNK_URL_1:-}" ]; then
      CL_TRUNK_URL="$TRUNK_URL_1" cl_gateway_start "$i" "$2" "$PREFIX" "${bounds[@]}"
    else
      cl_gateway_start "$i" "$2" "$PREFIX" "${bounds[@]}"
    fi
  done
  cl_phones_start "$PHONES" "$2" "${PREFIX}phone-" "${PHONE_BOUNDS[@]}"
  LOAD_STARTED="$(now)"
  say "load: $GATEWAYS gateways x $CL_SESSIONS phones on $CL_LINKS trunks each, $PHONES direct phones, for $2"
}

# Sum of an unlabelled metric over the running aggregators; fails when any read fails.
metric_sum() {
  local i sum=0 v
  for i in $(seq 1 "$CL_AGGREGATORS"); do
    [ -n "$(cl_pid "aggregator-$i")" ] || continue
    v="$(cl_metric "$i" "$1")" || return 1
    sum=$((sum + v))
  done
  echo "$sum"
}

# wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds; fails the drill after SECONDS.
wait_for() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || { say "FAILED: $what within ${seconds}s"; return 1; }
    sleep 0.2
  done
}
# Conditions for wait_for: a failed read is "not yet", and wait_for fails the drill at its limit.
all_links_up() {
  local n
  n="$(metric_sum holdfast_trunks)" || return 1
  [ "$n" -eq "$LINKS_TOTAL" ]
}
flushed_since() {
  local n
  n="$(metric_sum holdfast_flushes_total)" || return 1
  [ "$n" -gt "$FLUSHES_BEFORE" ]
}
all_up() {
  local n
  all_links_up || return 1
  n="$(metric_sum holdfast_direct_sessions)" || return 1
  [ "$n" -eq "$PHONES" ]
}

# Waits for the load to end and checks every report: prints one verification line, fails unless
# every report has mobile-sim's OK verdict over the devices expected. Extra python checks (on the
# dict `reports`, appending to `bad`) may follow as $1.
drill_verify() {
  local i status=0 names=() files=()
  for i in $(seq 1 "$GATEWAYS"); do names+=("$(cl_gateway_load "$i")"); files+=("$CL_DIR/gateway-$i.report"); done
  names+=(phones)
  files+=("$CL_DIR/phones.report")
  for i in "${names[@]}"; do cl_wait "$i" || status=$?; done
  python3 - "${1:-}" "$((GATEWAYS * CL_SESSIONS + PHONES))" "${files[@]}" <<'PY' || status=1
import json, sys
extra, expected, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
reports, bad = {}, []
for f in files:
    try:
        reports[f] = json.load(open(f))
    except Exception as e:
        print("  FAILED: no report in %s (%s)" % (f, e)); sys.exit(1)
devices = lost = double = durable = unconfirmed = 0
for f, r in reports.items():
    v = r.get("verification")
    if not v:
        bad.append("%s: no verification" % f); continue
    devices += v["devices_checked"]; lost += v["lost_bytes"]; double += v["double_counted_bytes"]
    unconfirmed += v["unconfirmed_bytes"]; durable += r["bytes"]["durable"]
    if not r.get("ok"):
        bad.append("%s: verdict FAILED: %s" % (f, "; ".join("%s: %s" % (x["rule"], x["detail"]) for x in r.get("failures", []))))
    if v["devices_checked"] != v["devices_expected"] or v["devices_persisted"] != v["devices_checked"]:
        bad.append("%s: %s" % (f, json.dumps(v)[:400]))
print("  verification: %d phones, %d bytes confirmed durable, %d lost, %d double-counted, %d unconfirmed"
      % (devices, durable, lost, double, unconfirmed))
if devices != expected:
    bad.append("%d phones verified, the drill ran %d" % (devices, expected))
if extra:
    exec(extra)
for b in bad:
    print("  FAILED:", b)
sys.exit(1 if bad or lost or double or not reports else 0)
PY
  return "$status"
}

# psql on the cluster's database.
db() { psql -X -q -tA "$CL_DB_URL" -c "$1"; }


# --- the drills ---------------------------------------------------------------------------------

drill_aggregator_kill() {
  drill_start aggregator-kill postgres terminate
  # The killed aggregator's trunks drop (every gateway may have had both links there) and their
  # reconnects may be refused while nginx finds out; its direct phones drop, retry, and lose
  # the bytes they had in flight (about 1 per phone; 3 allowed).
  GW_BOUNDS=(--max-dropped "$CL_LINKS" --max-failed 20)
  PHONE_BOUNDS=(--max-dropped "$PHONES" --max-failed $((PHONES * 10)) --allow-unconfirmed $((PHONES * 3)))
  drill_load kill 35s
  wait_for 30 "all trunks and phones connected" all_up || return 1
  local t1 t2 victim survivor
  t1="$(cl_metric 1 holdfast_trunks)"
  t2="$(cl_metric 2 holdfast_trunks)"
  if [ "$t1" -ge "$t2" ]; then victim=1 survivor=2; else victim=2 survivor=1; fi
  say "before: aggregator 1 holds $t1 trunks and $(cl_metric 1 holdfast_direct_sessions) phones, aggregator 2 $t2 trunks and $(cl_metric 2 holdfast_direct_sessions) phones"
  sleep 5
  local killed_at
  killed_at="$(now)"
  cl_aggregator_signal "$victim" KILL
  say "SIGKILL aggregator $victim (pid gone, nothing flushed, no go-away)"
  wait_for 30 "all $LINKS_TOTAL trunks on aggregator $survivor" all_links_up || return 1
  say "all $LINKS_TOTAL trunks on aggregator $survivor after $(elapsed "$killed_at") s: the gateways reconnected through nginx, which skipped the dead one"
  wait_for 30 "the direct phones back" all_up || return 1
  say "all $PHONES direct phones connected again after $(elapsed "$killed_at") s (mobile-sim's backoff with jitter)"
  cl_aggregator_start "$victim"
  say "aggregator $victim restarted; nginx sends it new connections again (least_conn)"
  drill_verify "
drops = sum(r['connections']['dropped'] for f, r in reports.items() if 'gateway-' in f)
print('  gateway links dropped and re-established through nginx: %d' % drops)
if drops < 1: bad.append('no gateway link was dropped: the killed aggregator carried none?')
" || return 1
  # A phone at a gateway kept its one session through the failover: one session row per phone,
  # closed normally (reason 0) at the end, not a new session per reconnect.
  local rows
  rows="$(db "SELECT count(*), count(*) FILTER (WHERE sessions = 1) FROM device_totals WHERE starts_with(device, '$PREFIX') AND device NOT LIKE '${PREFIX}phone-%'")"
  local closed
  closed="$(db "SELECT count(*) FROM sessions_now WHERE starts_with(device, '$PREFIX') AND device NOT LIKE '${PREFIX}phone-%' AND close_reason = 0")"
  hf_int "${rows%%|*}" "gateway phones' devices"
  hf_int "${rows##*|}" "gateway phones with one session"
  hf_int "$closed" "sessions closed normally"
  say "phones at gateways: ${rows%%|*} devices, ${rows##*|} with exactly one session, $closed sessions closed normally"
  if [ "${rows%%|*}" -ne $((GATEWAYS * CL_SESSIONS)) ] || [ "${rows##*|}" -ne "${rows%%|*}" ] ||
    [ "$closed" -ne "${rows%%|*}" ]; then
    say "FAILED: a gateway phone lost its session"
    return 1
  fi
}

drill_postgres_restart() {
  drill_start postgres-restart postgres terminate
  # Nothing is allowed to break: connections stay up while acknowledgements pause.
  drill_load pg 45s
  wait_for 30 "all trunks and phones connected" all_up || return 1
  sleep 5
  local rss_before=() rss_during=() rss_after=() i
  for i in 1 2; do rss_before[i]="$(cl_rss_kib "$(cl_pid "aggregator-$i")")"; done
  local stopped_at flushes_1 flushes_2 errors
  stopped_at="$(now)"
  cl_pg_ctl stop
  local down_from down_to
  down_from="$(elapsed "$LOAD_STARTED")"
  say "PostgreSQL stopped (pg_ctl stop -m fast) at ${down_from} s into the load"
  sleep 2
  flushes_1="$(metric_sum holdfast_flushes_total)"
  sleep 8
  flushes_2="$(metric_sum holdfast_flushes_total)"
  errors="$(metric_sum holdfast_db_errors_total)"
  hf_int "$flushes_1" "flushes before" && hf_int "$flushes_2" "flushes after" && hf_int "$errors" "flush errors"
  for i in 1 2; do rss_during[i]="$(cl_rss_kib "$(cl_pid "aggregator-$i")")"; done
  cl_pg_ctl start
  down_to="$(elapsed "$LOAD_STARTED")"
  local started_at
  started_at="$(now)"
  say "PostgreSQL started again after $(awk -v a="$stopped_at" -v b="$started_at" 'BEGIN {printf "%.1f", b - a}') s down"
  # The flusher waits for a connection (sqlx's acquire timeout, 30 s) and then retries with
  # backoff; either way nothing commits, so nothing is acknowledged.
  say "while down: committed flushes $flushes_1 -> $flushes_2 (none, so no acknowledgement), $errors flushes failed so far (a flush first waits up to 30 s for a connection)"
  [ "$flushes_1" -eq "$flushes_2" ] || { say "FAILED: flushes were committed while PostgreSQL was down"; return 1; }
  FLUSHES_BEFORE="$flushes_2"
  wait_for 60 "a committed flush after the restart" flushed_since || return 1
  say "acknowledgements resumed $(elapsed "$started_at") s after the restart"
  sleep 5
  for i in 1 2; do rss_after[i]="$(cl_rss_kib "$(cl_pid "aggregator-$i")")"; done
  # Bounded: the ledger is a fixed table allocated at start, acknowledgements wait in it, and
  # trunks and phones are not read when it is full. 64 MiB over the starting RSS is generous.
  local bound=$((64 * 1024)) ok=1
  for i in 1 2; do
    say "aggregator $i RSS: before ${rss_before[i]} KiB, during the outage ${rss_during[i]} KiB, after ${rss_after[i]} KiB (bound: before + $bound KiB)"
    [ "${rss_during[i]}" -le $((rss_before[i] + bound)) ] && [ "${rss_after[i]}" -le $((rss_before[i] + bound)) ] || ok=0
  done
  [ "$ok" = 1 ] || { say "FAILED: aggregator memory grew past the bound"; return 1; }
  drill_verify "
# The phones' own view (mobile-sim's once-a-second timeline): bytes kept being sent while none
# was confirmed durable during the outage (1.5 s of margin at each end).
lo, hi = $down_from + 1.5, $down_to - 1.5
for f, r in reports.items():
    s = [x for x in r['timeline'] if lo <= x['t'] <= hi]
    if len(s) < 2:
        bad.append('%s: %d timeline samples while PostgreSQL was down: nothing to judge' % (f, len(s)))
        continue
    if s[-1]['bytes_durable'] != s[0]['bytes_durable']:
        bad.append('%s: bytes confirmed durable while PostgreSQL was down' % f)
    if s[-1]['bytes_sent'] <= s[0]['bytes_sent']:
        bad.append('%s: no bytes sent while PostgreSQL was down' % f)
print('  mobile-sim timelines: from %.1f s to %.1f s bytes were sent and none confirmed' % (lo, hi))
" || return 1
}

# Whether `ss -K` can destroy a TCP socket here (the kernel needs CONFIG_INET_DIAG_DESTROY): on a
# throwaway connection of our own.
sock_destroy_works() {
  python3 - <<'PY'
import socket, subprocess, sys
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
client = socket.create_connection(server.getsockname())
peer, _ = server.accept()
port = client.getsockname()[1]
subprocess.run(["ss", "-K", "-Htn", "( sport = :%d )" % port], capture_output=True)
client.settimeout(1)
try:
    client.recv(1)
except socket.timeout:
    sys.exit(1)  # still alive: not destroyed
except OSError:
    sys.exit(0)  # aborted by the kernel
sys.exit(1)
PY
}

drill_trunk_cut() {
  local method=ss relay_port="" relay=""
  TRUNK_URL_1=""
  if [ "${DRILL_CUT:-ss}" = relay ] || ! sock_destroy_works; then
    # No SOCK_DESTROY here (or asked for): gateway 1's trunks go through a relay we can cut.
    method=relay
  fi
  drill_start trunk-cut postgres terminate
  # Gateway 1 loses the one link that is cut (and may fail a reconnect attempt on the way back).
  GW1_BOUNDS=(--max-dropped 1 --max-failed 5)
  if [ "$method" = relay ]; then
    relay_port="$(cl_free_port)"
    setsid python3 scripts/tcp-relay.py "$relay_port" 127.0.0.1 "$CL_PORT" >"$CL_DIR/relay.out" 2>&1 </dev/null &
    relay=$!
    cl_remember relay "$relay"
    wait_for 10 "the relay listening" grep -q listening "$CL_DIR/relay.out" || return 1
    TRUNK_URL_1="wss://localhost:$relay_port/trunk"
    say "ss -K cannot destroy sockets on this kernel (or DRILL_CUT=relay): gateway 1's trunks go through a relay on 127.0.0.1:$relay_port"
  fi
  drill_load cut 30s
  TRUNK_URL_1=""
  wait_for 30 "all trunks and phones connected" all_up || return 1
  sleep 5
  local cut_at
  cut_at="$(now)"
  if [ "$method" = ss ]; then
    local pid conn local_addr peer_addr tuple
    pid="$(cl_pid gateway-1)"
    # Gateway 1's trunks: its established TCP connections to nginx.
    conn="$(ss -Htnp state established "dst = $CL_FRONT" | grep "pid=$pid," | head -1)"
    [ -n "$conn" ] || { say "FAILED: gateway 1 has no trunk connection"; return 1; }
    local_addr="$(awk '{print $3}' <<<"$conn")"
    peer_addr="$(awk '{print $4}' <<<"$conn")"
    # The whole 4-tuple: ports alone also match other sockets (nginx's connections to the
    # aggregators end in the same port, and any of them may start from the trunk's port number),
    # and cutting one of those drops a phone that has nothing to do with this drill.
    tuple="( src = $local_addr and dst = $peer_addr )"
    cut_at="$(now)"
    ss -K -Htn state established "$tuple" >/dev/null
    sleep 0.3
    if [ -n "$(ss -Htn state established "$tuple")" ]; then
      say "FAILED: ss -K did not close the connection"
      return 1
    fi
    say "cut gateway 1's trunk $local_addr -> $peer_addr with ss -K (the kernel aborts the socket and resets the peer)"
  else
    kill -USR1 "$relay"
    wait_for 5 "the relay's cut" grep -q '^cut' "$CL_DIR/relay.out" || return 1
    say "cut one of gateway 1's trunks in the relay (reset on both sides): $(grep '^cut' "$CL_DIR/relay.out" | head -1)"
  fi
  wait_for 30 "the trunk back" all_links_up || return 1
  say "all $LINKS_TOTAL trunks up again $(elapsed "$cut_at") s after the cut"
  drill_verify "
r = reports['$CL_DIR/gateway-1.report']
c = r['connections']
print('  gateway 1: links dropped %d, established %d (of %d links): it reconnected and replayed from its last acknowledged counts' % (c['dropped'], c['established'], $CL_LINKS))
if c['dropped'] < 1 or c['established'] < $CL_LINKS + 1: bad.append('gateway 1 did not reconnect its cut link')
" || return 1
}

drill_gateway_restart() {
  # The real host gateway (firmware/host), with real phone WebSockets from mobile-sim.
  drill_start gateway-restart postgres terminate host
  # Gateway 1's phones all drop when it is killed, retry while it is down, and lose what was in
  # flight and unacknowledged (about 1 byte per phone; 3 allowed).
  GW1_BOUNDS=(--max-dropped "$CL_SESSIONS" --max-failed $((CL_SESSIONS * 10)) --allow-unconfirmed $((CL_SESSIONS * 3)))
  drill_load restart 40s
  wait_for 60 "all trunks and phones connected" all_up || return 1
  local out="$CL_DIR/gateway-1.out" lines killed_at direct_before
  sleep 4
  direct_before="$(metric_sum holdfast_direct_sessions)"
  killed_at="$(now)"
  local victim
  victim="$(cl_pid gateway-1)"
  kill -KILL "$victim"
  wait "$victim" 2>/dev/null || true
  say "SIGKILL gateway 1 (its $CL_SESSIONS phones lose their connections; unacknowledged counts die with it)"
  lines="$(($(wc -l <"$out") + 1))" # what the restarted gateway logs comes after this
  sleep 1
  cl_host_gateway_spawn 1
  say "gateway 1 restarted with the same id (a new boot epoch) after $(elapsed "$killed_at") s"
  wait_for 30 "gateway 1's trunks back ($LINKS_TOTAL in all)" all_links_up || return 1
  # Its phones come back on their own, spread by their backoff with jitter.
  back() { tail -n +"$lines" "$out" | grep -o 'live=[0-9]*' | tail -1 | grep -q "live=$CL_SESSIONS\b"; }
  wait_for 60 "all $CL_SESSIONS phones of gateway 1 back" back || return 1
  say "all $CL_SESSIONS phones of gateway 1 reconnected $(elapsed "$killed_at") s after the kill, spread by their backoff; phones held, second by second after the restart: $(tail -n +"$lines" "$out" | grep -o 'live=[0-9]*' | cut -d= -f2 | tr '\n' ' ')"
  local direct_after
  direct_after="$(metric_sum holdfast_direct_sessions)"
  hf_int "$direct_before" "direct phones before" && hf_int "$direct_after" "direct phones after"
  [ "$direct_after" -eq "$direct_before" ] || { say "FAILED: direct phones at the aggregators went from $direct_before to $direct_after"; return 1; }
  say "no storm reached the aggregators: they saw $CL_LINKS trunk reconnects, and $direct_after direct phones before and after"
  # The killed boot was superseded by the restarted one: its sessions are folded while the run
  # goes on, and the verification below reads them from the folded totals.
  # Marking the boot and folding its sessions are separate steps: a session's rows are folded
  # only once none of the boot's reports waits in the journal (PostgreSQL), which can take a
  # compaction or two after the mark.
  folded_boot() { [ "$(metric_sum holdfast_folded_boots_total)" -ge 1 ]; }
  wait_for 30 "gateway 1's killed boot marked folded" folded_boot || return 1
  local folded
  folded_sessions() {
    folded="$(metric_sum holdfast_folded_sessions_total)" && hf_int "$folded" "folded sessions" &&
      [ "$folded" -ge "$CL_SESSIONS" ]
  }
  wait_for 30 "the killed boot's $CL_SESSIONS sessions folded" folded_sessions || return 1
  say "the killed boot was folded: $folded sessions moved to per-device totals before the verification"
  drill_verify || return 1
}

drill_passthrough() {
  drill_start passthrough sqlite passthrough
  drill_load pass 15s
  wait_for 30 "all trunks and phones connected" all_up || return 1
  say "aggregators serve TLS 1.3 themselves (the same certificate); nginx passes TCP through (stream module)"
  drill_verify || return 1
}

n=0
for d in "${drills[@]}"; do
  n=$((n + 1))
  printf '\n=== drill %d/%d: %s\n' "$n" "${#drills[@]}" "$d"
  began=$SECONDS
  # The drill in a subshell with errexit really on: called as `drill || rc=$?`, bash would
  # ignore `set -e` inside it, and a failing probe would go unnoticed. Its cluster is stopped
  # when the subshell ends, however it ends.
  set +e
  (
    set -e
    GW_BOUNDS=() GW1_BOUNDS=() PHONE_BOUNDS=()
    trap 'cl_stop_all || true' EXIT
    "drill_${d//-/_}"
  )
  rc=$?
  set -e
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    printf '  PASS (%d s)\n' $((SECONDS - began))
  elif [ "$rc" -eq 2 ]; then
    skipped=$((skipped + 1))
    printf '  SKIPPED (%d s)%s\n' $((SECONDS - began)) "$([ "$allow_skip" = 1 ] || echo ': fails the run (--allow-skip to allow)')"
  else
    failed=$((failed + 1))
    dir="$work_root/$d"
    printf '  FAIL (%d s); logs: %s (DRILLS_KEEP=1 keeps them)\n' $((SECONDS - began)) "$dir"
    if [ "${DRILLS_KEEP:-0}" != 1 ]; then
      tail -n 5 "$dir"/aggregator-*.log "$dir"/gateway-*.log "$dir"/phones.log 2>/dev/null | sed 's/^/    /' || true
    fi
  fi
done
echo
echo "drills: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && { [ "$skipped" -eq 0 ] || [ "$allow_skip" = 1 ]; }
