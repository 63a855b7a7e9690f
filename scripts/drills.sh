#!/usr/bin/env bash
# Failure drills on local clusters (`lab drills`, lab/src/drills/): a private PostgreSQL, 2
# aggregators behind nginx (TLS terminated there), 3 gateways x 300 phones on 2 TLS trunks each,
# and 200 phones straight to the aggregators through nginx, every phone sending a byte every
# 0.2-1 s. Each drill breaks one thing mid-run, prints what it did and what it saw, and ends with
# mobile-sim's verdict on every phone: every device checked, every byte sent confirmed durable
# and persisted exactly once, connections failed or dropped and bytes left unconfirmed only
# within the bounds the drill states for the part it breaks (none elsewhere), or the drill fails.
# A probe that errs (a database read, a metric read) fails the drill.
#
#   scripts/drills.sh [--allow-skip] [--keep] [--cut auto|ss|relay] [DRILL...]
#                                                  default: all of them, in this order
#
#   aggregator-kill   SIGKILL one aggregator: its trunks reconnect through nginx to the other;
#                     phones at gateways keep their sessions (one session row per phone)
#   postgres-restart  stop PostgreSQL for 10 s: acknowledgements pause and resume, nothing is
#                     lost, aggregator memory stays within a bound
#   trunk-cut         kill one trunk's TCP connection (ss -K; where the kernel cannot, or with
#                     --cut relay, a relay in the lab cuts it): the gateway reconnects and replays
#   gateway-restart   SIGKILL a host gateway (firmware/host) and restart it: its phones come
#                     back with backoff and jitter, the aggregators see only its trunks
#   passthrough       not a failure: the TLS passthrough variant of nginx (stream proxy, the
#                     aggregators' own TLS) on the embedded SQLite store, 15 s of load, verified
#
# Needs PostgreSQL and nginx (scripts/install-deps.sh); builds the release binaries.
# scripts/test.sh runs it. Takes about 3 minutes on 2 cores.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
cargo build --release -q -p lab -p aggregator -p mobile-sim -p gateway
exec "$CARGO_TARGET_DIR/release/lab" drills "$@"
