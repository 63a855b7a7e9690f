#!/usr/bin/env bash
# The write path side by side: the same trunk load into each given aggregator binary in turn
# (alternating, RUNS times), each on a fresh PostgreSQL database: mobile-sim virtual gateways,
# G gateways x P sessions on 2 TLS trunks each, all opened at once, every session sending a byte
# every MIN to MAX, for DURATION. Per run: phone bytes per second made durable, flush lag p50 and
# p99 over the whole run (bucket bounds; per flush: the age of its oldest report at commit,
# holdfast_flush_lag_seconds; per row: what each session's oldest report waited,
# holdfast_flush_row_lag_seconds, "-" where the binary lacks it), rows per second, the
# aggregator's CPU over its life (utime + stime; and per phone byte sent), and
# mobile-sim's verdict on every session (a failed verdict fails the script; trunk links may drop
# or fail, up to one per link, and are counted: an aggregator that drops busy trunks as idle
# still has its throughput measured, and its drops shown). Then the median of each figure per
# binary.
#
#   DATABASE_URL=postgres://... scripts/bench/write-path.sh G P MIN MAX DURATION RUNS [AGGREGATOR_BIN[:MOBILE_SIM_BIN]...]
#     the issue's load: 1000 1000 2s 6s 120s 3 OLD NEW   (1,000,000 sessions, 250,000 bytes/s offered)
#     default binary: this checkout's release build; each aggregator is driven by this
#     checkout's mobile-sim unless a mobile-sim binary of its own follows it after a colon (an
#     older aggregator speaks only with the mobile-sim of its commit: scripts/bench/old-vs-new.sh
#     builds both)
#   DATABASE_URL=sqlite: scripts/bench/write-path.sh ...   the embedded store: a fresh file per run
#   WRITE_PATH_MAX_FAILED=N scripts/bench/write-path.sh ... allow N failed connection attempts (default:
#                                                          one per link; the embedded SQLite store answers
#                                                          thousands of the opening's upgrades with HTTP 503)
#   WRITE_PATH_KEEP=DIR scripts/bench/write-path.sh ...    keep every run's logs, metrics and mobile-sim
#                                                          report in DIR (default: deleted on exit)
#   WRITE_PATH_MERGED=1 scripts/bench/write-path.sh ...    after mobile-sim's verdict, keep the aggregator
#       running until its compactor has merged the whole journal into the sessions table, print
#       how long that took (stderr), and fail unless the table then holds exactly the bytes sent
#       (PostgreSQL; binaries without a journal are not waited for)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
[ "$#" -ge 6 ] || hf_die "usage: scripts/bench/write-path.sh G P MIN MAX DURATION RUNS [AGGREGATOR_BIN[:MOBILE_SIM_BIN]...]"
gateways="$1" per="$2" min="$3" max="$4" duration="$5" runs="$6"
shift 6
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh), or sqlite: for the embedded store}"
cargo build --release -q -p aggregator -p mobile-sim
bins=("$@")
[ "${#bins[@]}" -gt 0 ] || bins=("$CARGO_TARGET_DIR/release/aggregator")
default_sim="$CARGO_TARGET_DIR/release/mobile-sim"
work="$(mktemp -d)"
keep="${WRITE_PATH_KEEP:-}"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
      if [ -n "$keep" ]; then mkdir -p "$keep" && cp -a "$work"/. "$keep"/ && echo "logs kept in $keep" >&2; fi
      rm -rf "$work"' EXIT

# one_run BIN[:SIM] TAG: prints "bytes_per_s rows_per_s lag_p50 lag_p99 row_lag_p50 row_lag_p99 dropped
#   cpu_s cpu_us_per_byte" (the aggregator's CPU over its life, per byte mobile-sim sent)
one_run() {
  local bin="${1%%:*}" sim="$default_sim" tag="$2" db="holdfast_writepath_$$_$2" port pid url
  [[ "$1" != *:* ]] || sim="${1#*:}"
  # Links may drop or fail, up to one per link (mobile-sim's of older commits have no such flags
  # and fail on none).
  local tolerate=()
  # (Read whole, not piped into grep -q: under pipefail an early exit of grep would fail the
  # pipe once the help outgrows the pipe's buffer.)
  local help
  help="$("$sim" gateways --help)"
  if [[ "$help" == *--max-dropped* ]]; then
    tolerate=(--max-dropped $((gateways * 2)) --max-failed "${WRITE_PATH_MAX_FAILED:-$((gateways * 2))}")
  fi
  if [[ "$DATABASE_URL" == sqlite:* ]]; then
    url="sqlite://$work/$db.sqlite"
  else
    psql "$DATABASE_URL" -qc "CREATE DATABASE $db" >/dev/null
    url="${DATABASE_URL%/*}/$db"
  fi
  port=$((22000 + RANDOM % 2000))
  rm -f "$work/ca.pem" "$work/agg.out"
  RUST_LOG=warn "$bin" --data-dir "$work" --database-url "$url" --listen "127.0.0.1:$port" \
    --max-trunks $((gateways * 2 + 100)) >"$work/agg.out" 2>"$work/agg-$tag.log" &
  pid=$!
  # This runs in a subshell ($(one_run ...)): the script's own trap does not see the aggregator.
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  for _ in $(seq 1 300); do grep -q '^listening' "$work/agg.out" 2>/dev/null && break; sleep 0.2; done
  grep -q '^listening' "$work/agg.out" || { cat "$work/agg-$tag.log" >&2; hf_die "$bin did not start"; }
  seq -f "wp-gw-%04g" 0 $((gateways - 1)) | xargs "$bin" --data-dir "$work" --database-url "$url" gateway add \
    >"$work/gateways.txt"
  "$sim" gateways --target "wss://localhost:$port/trunk" --ca "$work/ca.pem" --gateways-file "$work/gateways.txt" \
    --sessions-per-gateway "$per" --min-interval "$min" --max-interval "$max" --duration "$duration" \
    --drain-timeout 120s --device-prefix "wp$tag-" --verify --database-url "$url" --quiet --json \
    "${tolerate[@]}" \
    >"$work/sim-$tag.json" 2>"$work/sim-$tag.err" ||
    { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r.get("failures"))' "$work/sim-$tag.json" >&2 || true
      hf_die "mobile-sim's verdict failed (run $tag, $bin)"; }
  curl -fsS --cacert "$work/ca.pem" "https://localhost:$port/metrics" >"$work/metrics-$tag.txt"
  if [ -n "${WRITE_PATH_MERGED:-}" ] && [[ "$DATABASE_URL" != sqlite:* ]] &&
    [ "$(psql "$url" -Atc "SELECT to_regclass('journal') IS NOT NULL")" = t ]; then
    # The journal's merge, checked on its own: once the journal is empty, the sessions table
    # (and the folded totals) must hold exactly the bytes mobile-sim sent.
    local from=$SECONDS left persisted sent_bytes
    while left="$(psql "$url" -Atc 'SELECT count(*) FROM journal')" && [ "$left" -gt 0 ]; do
      [ $((SECONDS - from)) -lt 1800 ] || hf_die "run $tag: $left journal flights still unmerged after 30 min"
      sleep 2
    done
    [ "$left" = 0 ] || hf_die "run $tag: could not read the journal's size ($left)"
    persisted="$(psql "$url" -Atc 'SELECT (SELECT coalesce(sum(bytes), 0) FROM sessions)
                                         + (SELECT coalesce(sum(bytes), 0) FROM device_folded)')"
    sent_bytes="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"]["sent"])' "$work/sim-$tag.json")"
    [ "$sent_bytes" -gt 0 ] || hf_die "run $tag: mobile-sim sent nothing: nothing to check the merge against"
    [ "$persisted" = "$sent_bytes" ] ||
      hf_die "run $tag: after the merge the sessions table holds $persisted bytes; mobile-sim sent $sent_bytes"
    echo "  run $tag: journal merged $((SECONDS - from)) s after mobile-sim's verdict; the sessions table holds exactly the $sent_bytes bytes sent" >&2
  fi
  # The aggregator's CPU over its whole life (opening, the run, the drain, the verification's
  # reads): utime + stime from /proc/PID/stat, in clock ticks (fields 14 and 15 after the name).
  local ticks
  ticks="$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')"
  kill -TERM "$pid"
  wait "$pid" || true
  if [[ "$DATABASE_URL" == sqlite:* ]]; then rm -f "$work/$db".sqlite*; else hf_drop_database "$DATABASE_URL" "$db"; fi
  local sent run_s dropped total_sent
  read -r sent run_s dropped total_sent < <(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["bytes"]["durable"], r["run_seconds"], r["connections"]["dropped"], r["bytes"]["sent"])' "$work/sim-$tag.json")
  awk -v sent="$sent" -v secs="$run_s" -v dropped="$dropped" -v ticks="$ticks" -v hz="$(getconf CLK_TCK)" \
    -v total_sent="$total_sent" '
    function le_of(line) { match(line, /le="[^"]+"/); return substr(line, RSTART + 4, RLENGTH - 5) }
    # The q-quantile of histogram h, as the bound of the first bucket that holds it ("-": none).
    function at_most(h, q,   i) {
      for (i = 1; i <= n[h]; i++) if (cum[h, i] >= q * total[h]) return les[h, i]
      return "-"
    }
    /^holdfast_flush_lag_seconds_bucket/ { h = "flight"; n[h]++; les[h, n[h]] = le_of($0); cum[h, n[h]] = $2 }
    /^holdfast_flush_lag_seconds_count/ { total["flight"] = $2 }
    /^holdfast_flush_row_lag_seconds_bucket/ { h = "row"; n[h]++; les[h, n[h]] = le_of($0); cum[h, n[h]] = $2 }
    /^holdfast_flush_row_lag_seconds_count/ { total["row"] = $2 }
    /^holdfast_flush_rows_total/ { rows = $2 }
    END {
      printf "%.0f %.0f %s %s %s %s %d %.1f %.1f\n", sent / secs, rows / secs, at_most("flight", 0.5), at_most("flight", 0.99),
        at_most("row", 0.5), at_most("row", 0.99), dropped, ticks / hz, ticks / hz * 1e6 / (total_sent > 0 ? total_sent : 1)
    }' "$work/metrics-$tag.txt"
}


echo "write-path: $gateways gateways x $per sessions, a byte every $min-$max, $duration, $runs runs per binary; load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$runs"); do
  for i in "${!bins[@]}"; do
    line="$(one_run "${bins[$i]}" "$r$i")"
    echo "$line" >>"$work/results-$i"
    printf '  run %d  %-50s  durable %s bytes/s  rows %s/s  flush lag p50 <= %s s  p99 <= %s s  per row p50 <= %s s  p99 <= %s s  links dropped %s  aggregator CPU %s s (%s us per byte sent)\n' "$r" "${bins[$i]%%:*}" $line
  done
done
for i in "${!bins[@]}"; do
  f="$work/results-$i"
  med() { cut -d' ' -f"$1" "$f" | grep -v '^-$' | hf_median; }
  printf 'median  %-50s  durable %s bytes/s  rows %s/s  flush lag p50 <= %s s  p99 <= %s s  per row p50 <= %s s  p99 <= %s s  aggregator CPU %s s (%s us per byte sent)  (verified)\n' \
    "${bins[$i]%%:*}" "$(med 1)" "$(med 2)" "$(med 3)" "$(med 4)" "$(med 5)" "$(med 6)" "$(med 8)" "$(med 9)"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
