#!/usr/bin/env bash
# Phone bytes per second sustained through gateway trunks into Postgres, with the aggregator's
# flush lag (p50/p99 from its histogram) and the rows it wrote per second
# (`lab bench trunk-throughput`, lab/src/bench/trunk_throughput.rs): one aggregator (its own TLS,
# nothing in front) and virtual gateways (mobile-sim) on 2 TLS trunks each, straight to it,
# verified per session against the database; a run whose verification fails prints why, no
# figures, and exits non-zero.
#
#   scripts/bench/trunk-throughput.sh [GATEWAYS] [SESSIONS_PER_GATEWAY] [DURATION]
#     defaults: 100 gateways x 1000 sessions, 60s; each session sends 1 byte every 1-5 s
#     (uniform), i.e. about 33,000 bytes/s for 100,000 sessions: the production rate of
#     1,000,000 phones at one tenth of the sessions.
#
# With DATABASE_URL (scripts/start-postgres.sh prints it): a fresh database on that server,
# dropped at the end; without it, a private PostgreSQL in the run's folder. Release builds.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
cargo build --release -q -p lab -p aggregator -p mobile-sim
# The lab reads DATABASE_URL itself (its --database-url).
exec "$CARGO_TARGET_DIR/release/lab" bench trunk-throughput --gateways "${1:-100}" \
  --sessions "${2:-1000}" --duration "${3:-60s}"
