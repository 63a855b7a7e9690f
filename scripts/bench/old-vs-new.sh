#!/usr/bin/env bash
# Issue #16's comparison in one command: the write path of an older commit and of this checkout,
# side by side under the same trunk load (scripts/bench/write-path.sh, alternating runs).
#
# An older aggregator speaks only with the mobile-sim of its own commit (device tokens and the
# verification schema changed since), so this builds both binaries of OLD from `git archive`
# into a directory and target of their own under ~/.cache/holdfast (kept: the next invocation
# reuses them), then passes OLD_AGGREGATOR:OLD_MOBILE_SIM and this checkout's aggregator to
# write-path.sh.
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
old="$(git rev-parse --short "$old^{commit}")"
src="$HOME/.cache/holdfast/old-$old"
target="$HOME/.cache/holdfast/target-old-$old"
if [ ! -f "$src/Cargo.toml" ]; then
  mkdir -p "$src"
  git archive "$old" | tar -x -C "$src"
fi
echo "==> building the aggregator and mobile-sim of $old (in $src)" >&2
CARGO_TARGET_DIR="$target" cargo build --release -q --manifest-path "$src/Cargo.toml" -p aggregator -p mobile-sim
new="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}/release/aggregator"
exec scripts/bench/write-path.sh "$@" "$target/release/aggregator:$target/release/mobile-sim" "$new"
