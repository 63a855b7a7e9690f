#!/usr/bin/env bash
# Checks of the checks: the end-to-end run, README's run command, the drills, the million's command
# (lab hold) and the fold bench must FAIL when the system does not do its job. Each runs against a
# database broken on purpose (HOLDFAST_FAULT: scripts/faults/NAME.sql) and must exit non-zero
# with the reason named in its output. The checks, their faults and what each must say are in
# lab/src/faults.rs (`lab faults --list`); `lab faults --only NAME` runs one.
#
# A check that passes here is a defect: a verification that cannot tell "nothing arrived" from
# "all arrived". Needs DATABASE_URL (scripts/start-postgres.sh) for e2e.sh, PostgreSQL and nginx.
# scripts/test.sh runs it. About 6 minutes on 2 cores.
#
#   DATABASE_URL=postgres://... scripts/fault-checks.sh [--only NAME]...
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh prints it)}"
cargo build --release -q -p aggregator -p mobile-sim -p gateway -p lab
exec "$CARGO_TARGET_DIR/release/lab" faults "$@"
