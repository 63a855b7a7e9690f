#!/usr/bin/env bash
# Issue #16's comparison in one command: the write path of an older commit and of this checkout,
# side by side under the same trunk load (scripts/bench/write-path.sh, alternating runs).
#
# An older aggregator speaks only with the mobile-sim of its own commit (device tokens and the
# verification schema changed since), so this has `lab build-rev` build both binaries of OLD
# (from `git archive`, kept under ~/.cache/holdfast/rev-SHA for the next invocation), then passes
# OLD_AGGREGATOR:OLD_MOBILE_SIM and this checkout's aggregator to write-path.sh.
#
#   DATABASE_URL=postgres://... scripts/bench/old-vs-new.sh [--old COMMIT] G P MIN MAX DURATION RUNS
#     default OLD: 1bbef25, main before the write-path work of issue #16 (one upsert per session
#     per flush, one flush in flight)
#     the issue's loads: 1000 1000 2s 6s 120s 3   and   1000 1000 5s 15s 120s 3
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
old=1bbef25
if [ "${1:-}" = --old ]; then
  old="$2"
  shift 2
fi
[ "$#" -eq 6 ] || hf_die "usage: scripts/bench/old-vs-new.sh [--old COMMIT] G P MIN MAX DURATION RUNS"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
cargo build --release -q -p lab -p aggregator
bin="$("$CARGO_TARGET_DIR/release/lab" build-rev "$old" -p aggregator -p mobile-sim)"
new="$CARGO_TARGET_DIR/release/aggregator"
exec scripts/bench/write-path.sh "$@" "$bin/aggregator:$bin/mobile-sim" "$new"
