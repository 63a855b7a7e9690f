#!/usr/bin/env bash
# Runs the holdfast system locally (for now: the trunk simulation example).
#
#   scripts/run.sh [ARGS...]    arguments go to the example
#
# Installs a Rust toolchain first if there is none (scripts/install-deps.sh
# --rust-only: Debian's rustc-web/cargo-web when rustup is absent).
# CARGO_TARGET_DIR defaults to "$HOME/.cache/holdfast/target", shared with scripts/test.sh.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"

bash scripts/install-deps.sh --rust-only </dev/null >&2
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
exec cargo run --release -p trunk --example simulate -- "$@"
