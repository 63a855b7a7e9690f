#!/usr/bin/env bash
# Two settings of `lab hold` side by side: runs alternate A B A B ... on the same binaries, and
# the table gives each one's median of what the million's goals measure (ramp, the phone side's
# cores and CPU per phone byte, flush lag, drain). Every run must be ok (held and verified exact)
# or the script fails.
#
#   DATABASE_URL=postgres://... scripts/bench/lab-ab.sh RUNS "A's lab hold args" "B's lab hold args"
#   e.g. scripts/bench/lab-ab.sh 3 "--phones 200000 --hold-s 60 --ehash-entries 65536" \
#                                  "--phones 200000 --hold-s 60"
# Runs' folders: lab-runs/ab-STAMP/{a,b}N (reports as text, JSON and HTML).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
cd "$HOLDFAST_ROOT"
hf_setup_path
[ "$#" -eq 3 ] || hf_die 'usage: scripts/bench/lab-ab.sh RUNS "A args" "B args"'
runs="$1"
declare -A args=([a]="$2" [b]="$3")
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}"
cargo build --release -q -p lab -p aggregator -p gateway -p mobile-sim
lab="$CARGO_TARGET_DIR/release/lab"
dir="lab-runs/ab-$(date +%s)"
mkdir -p "$dir"
for i in $(seq 1 "$runs"); do
  for v in a b; do
    echo "== run $v$i: lab hold ${args[$v]} (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    # shellcheck disable=SC2086 # the args are words on purpose
    "$lab" hold ${args[$v]} --out "$dir/$v$i" >/dev/null || hf_die "run $v$i failed: $dir/$v$i/report.txt"
  done
done
median() { sort -g | awk '{v[NR] = $1} END {printf "%.4g\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
field() { # field VARIANT JQ-EXPRESSION: the median over that variant's runs
  for r in "$dir/$1"*/report.json; do jq -r "$2" "$r"; done | median
}
printf '%-44s %14s %14s\n' "median of $runs runs" A B
row() { printf '%-44s %14s %14s\n' "$1" "$(field a "$2")" "$(field b "$2")"; }
row "all connected after, s" '.all_connected_after_s'
row "gateways + mobile-sim, cores" '.gateways_and_mobile_sim_cores'
row "gateways, us per phone byte" '.tiers[0].us_per_phone_byte'
row "mobile-sim, us per phone byte" '.tiers[1].us_per_phone_byte'
row "aggregator, us per phone byte" '.tiers[2].us_per_phone_byte'
row "postgres, us per phone byte" '.tiers[3].us_per_phone_byte'
row "durable bytes per second in the hold" '.durable_bytes_during_hold / .hold_seconds'
row "flush lag p99 at most, s" '.flush_lag_p99_at_most_s'
row "all durable after the stop, s" '.mobile_sim.drain_seconds'
echo "A: ${args[a]}"
echo "B: ${args[b]}"
echo "runs in $dir"
