#!/usr/bin/env bash
# Checks of the checks: the end-to-end run, README's run command, the drills, the million's command
# (lab hold) and the fold bench must FAIL when the system does not do its job. Each is run against a database broken on purpose
# (HOLDFAST_FAULT: scripts/faults/NAME.sql, which the lab runs after the migrations) and must exit
# non-zero with the reason named in its output:
#
#   e2e.sh (small)              drop-writes  commits succeed, nothing is persisted: "none-lost"
#   run.sh --once (PostgreSQL)  drop-writes  the same, through nginx and host gateways
#   drills.sh trunk-cut         drop-writes  the same, in a drill
#   drills.sh aggregator-kill   fail-reads   the totals cannot be read: the drill cannot verify
#   lab hold (2,000 phones)     drop-writes  the million's command, small: "none-lost"
#   bench/fold.sh (small)       fold-loses   folding deletes sessions, adds nothing: "wrong after folding"
#   bench/fold.sh (small)       fold-keeps   folding deletes nothing: the table grows, "folding not working"
#
# The last two reach fold.sh's checks after its runs (every device again, the table's bound):
# each run alone verifies exact under those faults, since a run is verified before it is folded.
#
# A check that passes here is a defect: a verification that cannot tell "nothing arrived" from
# "all arrived". Needs DATABASE_URL (scripts/start-postgres.sh) for e2e.sh, PostgreSQL and nginx.
# scripts/test.sh runs it. About 6 minutes on 2 cores (fold-keeps waits 2 minutes for a bound
# that never comes).
#
#   DATABASE_URL=postgres://... scripts/fault-checks.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh prints it)}"
cargo build --release -q -p aggregator -p mobile-sim -p gateway -p lab

work="$(mktemp -d /tmp/holdfast-faults.XXXXXX)"
# As root, run.sh's private PostgreSQL runs as the postgres account, which must reach its folder.
chmod 711 "$work"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0

# expect_failure NAME FAULT PATTERN COMMAND...: runs COMMAND with HOLDFAST_FAULT=FAULT; passes
# when it exits non-zero and its output matches PATTERN (the failure is the one injected, not
# some other breakage).
expect_failure() {
  local name="$1" fault="$2" pattern="$3" log="$work/$1.log" rc=0
  shift 3
  hf_log "fault check $name: HOLDFAST_FAULT=$fault $*"
  HOLDFAST_FAULT="$fault" "$@" </dev/null >"$log" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    tail -n 30 "$log" | sed 's/^/    /'
    printf '  FAIL: %s exited 0 with the fault %s injected: its check cannot fail\n' "$name" "$fault"
    failed=$((failed + 1))
  elif ! grep -Eq "$pattern" "$log"; then
    tail -n 30 "$log" | sed 's/^/    /'
    printf '  FAIL: %s exited %d but its output does not name the fault (/%s/): it failed for another reason\n' \
      "$name" "$rc" "$pattern"
    failed=$((failed + 1))
  else
    printf '  PASS: %s exited %d: %s\n' "$name" "$rc" "$(grep -Eo "$pattern" "$log" | head -1)"
    passed=$((passed + 1))
  fi
}

expect_failure e2e drop-writes 'none-lost' \
  env E2E_PHONES=400 E2E_GATEWAYS=4 E2E_SESSIONS=100 E2E_DURATION=5s bash scripts/e2e.sh

expect_failure run drop-writes 'none-lost' \
  env HOLDFAST_DATA_DIR="$work/run" HOLDFAST_LISTEN="127.0.0.1:$((19000 + RANDOM % 1000))" DEMO_DURATION=5s \
  bash scripts/run.sh --once --store postgres --gateways 1 --phones 50

expect_failure drill-drop-writes drop-writes 'none-lost' bash scripts/drills.sh trunk-cut

expect_failure drill-fail-reads fail-reads 'device_totals.*does not exist|verification could not be carried out' \
  bash scripts/drills.sh aggregator-kill

expect_failure hold drop-writes 'none-lost' \
  "$CARGO_TARGET_DIR/release/lab" hold --phones 2000 --hold-s 5 --out "$work/hold"

expect_failure fold-loses fold-loses 'wrong after folding' bash scripts/bench/fold.sh gateways 2 1000 6s 2

expect_failure fold-keeps fold-keeps 'folding not working' bash scripts/bench/fold.sh direct 1 500 6s 2

echo
echo "fault checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
