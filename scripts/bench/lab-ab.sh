#!/usr/bin/env bash
# Two settings of `lab hold` side by side (`lab hold-ab`, lab/src/hold_ab.rs): runs alternate
# A B A B ... on the same binaries, and the table gives each one's median of what the million's
# goals measure (ramp, the phone side's cores and CPU per phone byte, flush lag, drain) and B / A.
# Every run must be ok (held and verified exact) or the command fails. Both settings are checked
# as lab hold's arguments before the first run. For environment variables per setting (every
# process of its runs inherits them), run `lab hold-ab` with --a-env / --b-env KEY=VALUE.
#
#   DATABASE_URL=postgres://... scripts/bench/lab-ab.sh RUNS "A's lab hold args" "B's lab hold args"
#   e.g. scripts/bench/lab-ab.sh 3 "--phones 200000 --hold-s 60 --ehash-entries 65536" \
#                                  "--phones 200000 --hold-s 60"
# Runs' folders: lab-runs/ab-STAMP/{a,b}N (reports as text, JSON and HTML; each run's output in
# {a,b}N.log).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
[ "$#" -eq 3 ] || hf_die 'usage: scripts/bench/lab-ab.sh RUNS "A args" "B args"'
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
cargo build --release -q -p lab -p aggregator -p gateway -p mobile-sim
exec "$CARGO_TARGET_DIR/release/lab" hold-ab --runs "$1" --a "$2" --b "$3"
