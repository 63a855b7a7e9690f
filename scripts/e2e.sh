#!/usr/bin/env bash
# End-to-end checks with the real binaries (release builds) and a real PostgreSQL (`lab e2e`,
# lab/src/e2e.rs): mobile-sim against the aggregator, each run verified per device against the
# database: mobile-sim's verdict (every connection up, every byte sent confirmed and persisted
# exactly once) or the run fails.
#   1. 21,000 phones over wss: more than one process may open here, so mobile-sim runs worker
#      processes with sources spread over 127.0.0.x, and the aggregator runs --workers 2.
#   2. 100 virtual gateways x 1,000 sessions (100,000 sessions) over 200 TLS trunks.
#
#   DATABASE_URL=postgres://... scripts/e2e.sh     (scripts/test.sh runs it)
#
# Smaller runs (scripts/fault-checks.sh): E2E_PHONES (21000), E2E_GATEWAYS (100), E2E_SESSIONS
# (1000 per gateway), E2E_DURATION (45s for the phones, 20s for the gateways). HOLDFAST_FAULT
# (scripts/faults/) breaks the database after the migrations: the run must then fail.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh prints it)}"
cargo build --release -q -p lab -p aggregator -p mobile-sim
exec "$CARGO_TARGET_DIR/release/lab" e2e "$@"
