#!/usr/bin/env bash
# The write path side by side (`lab bench write-path`, lab/src/bench/write_path.rs): the same trunk load
# into each given aggregator binary in turn (alternating, RUNS times), each on a fresh PostgreSQL
# database: mobile-sim virtual gateways, G gateways x P sessions on 2 TLS trunks each, all opened
# at once, every session sending a byte every MIN to MAX, for DURATION. Per run: phone bytes per
# second made durable, rows per second, flush lag p50 and p99 per flush and per row (bucket
# bounds, "-" where the binary lacks them), links dropped, and the aggregator's CPU over its life
# (and per phone byte sent); then the median of each figure per binary. A failed verdict of
# mobile-sim fails the script (links may drop or fail, up to one per link, and are counted).
#
#   DATABASE_URL=postgres://... scripts/bench/write-path.sh G P MIN MAX DURATION RUNS [AGGREGATOR_BIN[:MOBILE_SIM_BIN]...]
#     the issue's load: 1000 1000 2s 6s 120s 3 OLD NEW   (1,000,000 sessions, 250,000 bytes/s offered)
#     default binary: this checkout's release build; each aggregator is driven by this
#     checkout's mobile-sim unless a mobile-sim binary of its own follows it after a colon (an
#     older aggregator speaks only with the mobile-sim of its commit: scripts/bench/old-vs-new.sh
#     builds both)
#   DATABASE_URL=sqlite: scripts/bench/write-path.sh ...   the embedded store: a fresh file per run
#   WRITE_PATH_MAX_FAILED=N ...  allow N failed connection attempts (default: one per link)
#   WRITE_PATH_KEEP=DIR ...      keep every run's logs, metrics and mobile-sim report in DIR
#   WRITE_PATH_MERGED=1 ...      after mobile-sim's verdict, wait for the journal's merge, print how
#                                long it took (stderr), and fail unless the sessions table then
#                                holds exactly the bytes sent (PostgreSQL)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
[ "$#" -ge 6 ] || hf_die "usage: scripts/bench/write-path.sh G P MIN MAX DURATION RUNS [AGGREGATOR_BIN[:MOBILE_SIM_BIN]...]"
: "${DATABASE_URL:?set DATABASE_URL (scripts/start-postgres.sh), or sqlite: for the embedded store}"
args=(--gateways "$1" --sessions "$2" --min-interval "$3" --max-interval "$4" --duration "$5" --runs "$6")
shift 6
if [ -n "${WRITE_PATH_MAX_FAILED:-}" ]; then args+=(--max-failed "$WRITE_PATH_MAX_FAILED"); fi
if [ -n "${WRITE_PATH_KEEP:-}" ]; then args+=(--keep "$WRITE_PATH_KEEP"); fi
if [ -n "${WRITE_PATH_MERGED:-}" ]; then args+=(--merged); fi
cargo build --release -q -p lab -p aggregator -p mobile-sim
exec "$CARGO_TARGET_DIR/release/lab" bench write-path "${args[@]}" -- "$@"
