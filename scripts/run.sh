#!/usr/bin/env bash
# Runs holdfast as a local cluster and shows phones being counted:
#   - the store: a private PostgreSQL in the data folder when PostgreSQL is installed, else the
#     embedded SQLite file (shared by the aggregators: safe on one machine);
#   - 2 aggregators behind nginx, which terminates TLS 1.3 (a local CA made in the data folder);
#   - 3 gateways of 500 phones each on TLS trunks through nginx, and 300 phones straight to the
#     aggregators through nginx, each phone sending a byte every 0.2-2 s for --duration;
#   - then mobile-sim's verification of every phone: 0 lost and 0 double-counted bytes.
# It prints where to look, and keeps the cluster running until Ctrl-C, which stops everything
# it started (with --once it stops right after the verification).
#
#   scripts/run.sh [--once] [--lan] [--store sqlite|postgres] [--aggregators N] [--gateways G]
#                  [--phones N] [--duration 30s] [--tls terminate|passthrough]
#
# --lan: for a real phone on this machine's network: nginx listens on its LAN address too, the
# certificate names the LAN address (the default route's source, or HOLDFAST_LAN_ADDRESS), and it
# prints the phone page's address as a QR code and where the phone gets the CA (/ca).
# Data, certificates, logs: ./holdfast-data (HOLDFAST_DATA_DIR). Port: 8443 (the port of
# HOLDFAST_LISTEN). The gateways are firmware/host's `gateway` (the firmware's core on Linux)
# with mobile-sim phones connected to them; CL_GATEWAY=virtual runs mobile-sim's virtual
# gateways instead (scripts/cluster-lib.sh, cl_gateway_start). Installs Rust and nginx first if
# missing.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"

usage() { sed -n '2,23s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
once=0
lan=0
gateways=3
phones=300
duration="${DEMO_DURATION:-30s}"
while [ "$#" -gt 0 ]; do
  case "$1" in
    --once) once=1 ;;
    --lan) lan=1 ;;
    --store) CL_STORE="$2" && shift ;;
    --aggregators) CL_AGGREGATORS="$2" && shift ;;
    --gateways) gateways="$2" && shift ;;
    --phones) phones="$2" && shift ;;
    --duration) duration="$2" && shift ;;
    --tls) CL_TLS="$2" && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && hf_die "unknown argument: $1" ;;
  esac
  shift
done

bash scripts/install-deps.sh --rust-only </dev/null >&2
hf_setup_path
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
hf_log "building aggregator and mobile-sim (release; the first build takes a few minutes)"
cargo build --release -p aggregator -p mobile-sim -p gateway

# Real host gateways unless CL_GATEWAY says otherwise (set before the library's default).
CL_GATEWAY="${CL_GATEWAY:-host}"
# shellcheck source=scripts/cluster-lib.sh
. scripts/cluster-lib.sh
listen="${HOLDFAST_LISTEN:-127.0.0.1:8443}"
CL_GATEWAYS="$gateways"
if [ "$lan" -eq 1 ]; then
  # The address the default route leaves from: a routing table lookup, nothing is sent.
  CL_LAN_ADDRESS="${HOLDFAST_LAN_ADDRESS:-$(ip -4 route get 192.0.2.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}')}"
  [ -n "$CL_LAN_ADDRESS" ] || hf_die "--lan: cannot tell this machine's LAN address; set HOLDFAST_LAN_ADDRESS"
fi
cl_init "${HOLDFAST_DATA_DIR:-$HOLDFAST_ROOT/holdfast-data}" "${listen##*:}"

trap cl_stop_all EXIT
trap 'exit 130' INT TERM
started=$(date +%s)
hf_log "starting: store $CL_STORE, $CL_AGGREGATORS aggregators, nginx on $CL_FRONT (TLS: $CL_TLS)"
cl_start_servers
echo
echo "holdfast local cluster is up ($(($(date +%s) - started)) s):"
cl_print_where
echo

run="run$(date +%s)-"
hf_log "$gateways gateways x $CL_SESSIONS phones on TLS trunks, and $phones phones straight to the aggregators, for $duration"
CL_TEXT=1
for i in $(seq 1 "$gateways"); do cl_gateway_start "$i" "$duration" "$run"; done
# The direct phones in the foreground: their progress shows phones connected and bytes counted.
cl_load_args "$duration" "${run}phone-"
args=()
for a in "${CL_LOAD[@]}"; do [ "$a" = --quiet ] || args+=("$a"); done
status=0
"$CL_BIN/mobile-sim" phones --target "wss://localhost:$CL_PORT/ws" --ca "$CL_PKI/ca.pem" \
  --device-key "$CL_PKI/device-token.key" --phones "$phones" \
  --rate 200 "${args[@]}" || status=$?
for i in $(seq 1 "$gateways"); do
  cl_wait "$(cl_gateway_load "$i")" || status=$?
  echo
  echo "== gateway $i ($CL_DIR/gateway-$i.report)"
  grep -E '^(mobile-sim|connections|bytes|errors|verification|verdict|  (lost|double|unconfirmed|rule ))' "$CL_DIR/gateway-$i.report" || true
done
[ "$status" -eq 0 ] || hf_die "a verification failed (reports above, logs in $CL_DIR)"

echo
echo "Every phone connected, every byte it sent was confirmed durable and is in the database, none"
echo "twice (mobile-sim's verdict on each of the $((gateways + 1)) loads above). Totals of this run:"
echo "  curl --cacert $CL_PKI/ca.pem 'https://localhost:$CL_PORT/api/devices?prefix=$run&token=$CL_DASHBOARD_TOKEN'"
[ "$once" -eq 1 ] && exit 0
echo
echo "The cluster keeps running (Ctrl-C stops everything this started):"
cl_print_where
while kill -0 "$(cl_pid nginx)" 2>/dev/null; do sleep 1; done
hf_die "nginx stopped (see $CL_DIR/nginx/logs/error.log)"
