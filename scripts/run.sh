#!/usr/bin/env bash
# Runs holdfast as a local cluster and shows phones being counted (README's run command):
#   - the store: a private PostgreSQL in the data folder when PostgreSQL is installed, else the
#     embedded SQLite file (shared by the aggregators: safe on one machine);
#   - 2 aggregators behind nginx, which terminates TLS 1.3 (a local CA made in the data folder);
#   - 3 host gateways (firmware/host's `gateway`) of 500 phones each on TLS trunks through nginx,
#     and 300 phones straight to the aggregators through nginx, each phone sending a byte every
#     0.2-2 s for --duration;
#   - then mobile-sim's verification of every phone: 0 lost and 0 double-counted bytes.
# It prints where to look, and keeps the cluster running until Ctrl-C, which stops everything
# it started (with --once it stops right after the verification).
#
#   scripts/run.sh [--once] [--lan] [--store sqlite|postgres] [--aggregators N] [--gateways G]
#                  [--phones N] [--duration 30s] [--tls terminate|passthrough] [--gateway host|virtual]
#
# The cluster itself is the lab's code (`lab cluster`, lab/src/cluster/); `scripts/run.sh --help`
# lists every option. This script installs Rust and nginx first if missing and builds the release
# binaries. Data, certificates, logs: ./holdfast-data (HOLDFAST_DATA_DIR). Port: 8443 (the port of
# HOLDFAST_LISTEN). --lan: for a real phone on this machine's network (nginx listens on its LAN
# address too, the certificate names it, and the phone page's address is printed as a QR code).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"

bash scripts/install-deps.sh --rust-only </dev/null >&2
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
hf_log "building the lab, aggregator, gateway and mobile-sim (release; the first build takes a few minutes)"
cargo build --release -q -p lab -p aggregator -p mobile-sim -p gateway
exec "$CARGO_TARGET_DIR/release/lab" cluster "$@"
