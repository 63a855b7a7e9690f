#!/usr/bin/env bash
# How long the aggregator's test suite takes to run, before and after a change (issue #13):
# `cargo test -p aggregator` on two git revisions, each checked out in a worktree of its own and
# built first (`cargo test -p aggregator --no-run`, and mobile-sim, which the dashboard's browser
# test runs), so that only the run is timed. Runs alternate before/after, RUNS times each (3);
# prints each run's time and exit status with the load average, then the medians and the ratio.
#
#   scripts/bench/aggregator-tests.sh BEFORE [AFTER]     (AFTER: HEAD)
#   PER_BINARY=1 scripts/bench/aggregator-tests.sh REV   (each test binary alone, timed, once)
#
# Needs PostgreSQL (scripts/start-postgres.sh; DATABASE_URL is taken from it when unset) and
# chromium with chromedriver for the browser tests. Worktrees go to $BENCH_DIR
# (default /tmp/holdfast-bench-tests), target folders to $HOME/.cache/holdfast/bench-tests-<rev>;
# both stay for the next run (KEEP=0 removes them at the end).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
[ $# -ge 1 ] || hf_die "usage: $0 BEFORE [AFTER]   (git revisions)"
runs="${RUNS:-3}"
bench_dir="${BENCH_DIR:-/tmp/holdfast-bench-tests}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-0}"
if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL="$(bash scripts/start-postgres.sh | sed -n 's/^DATABASE_URL=//p')"
fi
export DATABASE_URL

revs=()
for r in "$@"; do revs+=("$(git rev-parse --short=9 "$r^{commit}")"); done
[ ${#revs[@]} -ge 2 ] || [ -n "${PER_BINARY:-}" ] || revs+=("$(git rev-parse --short=9 HEAD)")

tree() { echo "$bench_dir/$1"; }
target() { echo "$HOME/.cache/holdfast/bench-tests-$1"; }

cleanup() {
  if [ "${KEEP:-1}" = 0 ]; then
    for r in "${revs[@]}"; do
      git worktree remove --force "$(tree "$r")" 2>/dev/null || true
      rm -rf "$(target "$r")"
    done
  fi
}
trap cleanup EXIT

for r in "${revs[@]}"; do
  if [ ! -d "$(tree "$r")" ]; then
    git worktree add --detach "$(tree "$r")" "$r" >&2
  fi
  hf_log "building $r (not timed)"
  (cd "$(tree "$r")" && CARGO_TARGET_DIR="$(target "$r")" cargo build -q -p mobile-sim &&
    CARGO_TARGET_DIR="$(target "$r")" cargo test -q -p aggregator --no-run)
done

# Runs `cargo test -p aggregator ARGS...` in revision $1's worktree; prints "seconds status".
timed() {
  local r="$1" log start end status
  shift
  log="$bench_dir/$r.log"
  start="$(date +%s.%N)"
  status=0
  (cd "$(tree "$r")" && CARGO_TARGET_DIR="$(target "$r")" cargo test -q -p aggregator --no-fail-fast "$@") \
    >"$log" 2>&1 || status=$?
  end="$(date +%s.%N)"
  if [ "$status" != 0 ]; then
    grep -E -- '--- FAILED|^test result' "$log" | sed 's/^/    /' >&2 || true
  fi
  echo "$(echo "$end - $start" | bc) $status"
}

if [ -n "${PER_BINARY:-}" ]; then
  r="${revs[0]}"
  for t in $(cd "$(tree "$r")/aggregator/tests" && ls -- *.rs | sed 's/\.rs$//'); do
    read -r s status < <(timed "$r" --test "$t")
    printf '%-12s %7.1f s  exit %s  load %s\n' "$t" "$s" "$status" "$(cut -d' ' -f1-3 /proc/loadavg)"
  done
  exit 0
fi

declare -A times
failed=0
for i in $(seq 1 "$runs"); do
  for r in "${revs[@]}"; do
    load="$(cut -d' ' -f1-3 /proc/loadavg)"
    read -r s status < <(timed "$r")
    printf 'run %d  %-9s %7.1f s  exit %s  load before %s\n' "$i" "$r" "$s" "$status" "$load"
    times[$r]="${times[$r]:-} $s"
    [ "$status" = 0 ] || failed=$((failed + 1))
  done
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
before="$(echo "${times[${revs[0]}]}" | median)"
after="$(echo "${times[${revs[1]}]}" | median)"
echo "median of $runs: before ${revs[0]} $before s, after ${revs[1]} $after s, ratio $(echo "scale=2; $before / $after" | bc)"
echo "load average now: $(cat /proc/loadavg)"
# A suite that failed may have stopped early: its time says nothing about speed.
if [ "$failed" != 0 ]; then
  echo "FAILED: $failed run(s) did not pass (their times are in the medians above, which are therefore not a comparison)" >&2
  exit 1
fi
