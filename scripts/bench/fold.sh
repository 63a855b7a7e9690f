#!/usr/bin/env bash
# Bounded growth of the sessions table (folding, docs/ARCHITECTURE.md; `lab bench fold`,
# lab/src/bench/fold.rs): RUNS runs, one after the other, into one aggregator on one fresh PostgreSQL
# database. Each run: mobile-sim connects SESSIONS sessions, every one sends a byte every 1 to 3 s
# for DURATION, then closes; mobile-sim verifies the run (its strict verdict: nothing lost,
# nothing counted twice, every byte confirmed). Modes: `gateways` (virtual gateways, 1,000
# sessions each, the same gateway names in every run: every run is a new boot of each gateway,
# which supersedes the previous run's boot) or `direct` (phones straight to the aggregator).
# After each run it prints the rows of `sessions` and `device_folded`, the folded boots and the
# reports waiting in the journal; after the last run it waits for the journal to be merged and
# for folding to reach the bound, then checks every device of every run again against what that
# run sent and had confirmed (mobile-sim's per-device CSVs, compared in SQL with
# `device_totals`), so devices whose sessions were folded are verified too.
#
#   DATABASE_URL=postgres://... scripts/bench/fold.sh MODE RUNS SESSIONS DURATION [FOLD_AFTER_S]
#     the issue's load: gateways 10 100000 20s       (10 runs of 100,000 sessions)
#     CI (scripts/test.sh): gateways 3 5000 6s 2, and direct 3 2000 6s 2
# Fails when a run's verdict fails, when a device's total is wrong at the end, or when the table
# holds more rows than the bound (at most one run's sessions with gateways, none direct).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
[ "$#" -ge 4 ] || hf_die "usage: scripts/bench/fold.sh gateways|direct RUNS SESSIONS DURATION [FOLD_AFTER_S]"
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh)}"
cargo build --release -q -p lab -p aggregator -p mobile-sim
exec "$CARGO_TARGET_DIR/release/lab" bench fold --mode "$1" --runs "$2" --sessions "$3" --duration "$4" \
  --fold-after-s "${5:-5}"
