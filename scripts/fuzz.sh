#!/usr/bin/env bash
# Fuzzes the parsers and state machines that read network input: the cargo-fuzz targets in
# trunk/fuzz and firmware/core/fuzz (libFuzzer, nightly Rust).
#
#   scripts/fuzz.sh --smoke          every target for FUZZ_SECONDS (default 30) each, as CI does
#   scripts/fuzz.sh [TARGET...]      the named targets (default: all) for FUZZ_SECONDS (default 300)
#   scripts/fuzz.sh --list           the targets
#
# Targets: decode (arbitrary bytes through the frame decoder; every decoded frame must re-encode
# to the same bytes) and gateway (a gateway driven by arbitrary phone, link and aggregator events),
# in trunk/fuzz; phone-upgrade and phone-ws (the gateway's phone upgrade parser and WebSocket
# framing, bytes cut into arbitrary pieces), in firmware/core/fuzz.
# Each run starts from a fresh temporary corpus seeded from trunk/fuzz/seeds/TARGET, so the
# repository is not touched. Exits non-zero when a target fails; libFuzzer writes the input to
# trunk/fuzz/artifacts/TARGET/ (replay: cd trunk && cargo +nightly fuzz run TARGET FILE).
#
# Without cargo-fuzz or a nightly toolchain it falls back to the stable replay test
# (trunk/fuzz/tests/replay.rs: the seeds, then FUZZ_REPLAY_CASES deterministic pseudo-random
# inputs per target through the same code), unless FUZZ_REQUIRE_LIBFUZZER=1; FUZZ_STABLE=1 picks
# that replay even when libFuzzer is there.
# Environment: FUZZ_SECONDS; FUZZ_TARGET_DIR (default "$HOME/.cache/holdfast/fuzz-target", kept
# apart from the host build: other compiler flags); TRUNK_FUZZ_LIVENESS=0 drops the gateway's
# liveness check (see docs/benchmarks.md); TRUNK_FUZZ_TRACE=1 prints every gateway step.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

targets_all=(decode gateway phone-upgrade phone-ws)
# The crate folder that holds a target's fuzz/ package.
crate_of() { case "$1" in decode | gateway) echo "$HOLDFAST_ROOT/trunk" ;; *) echo "$HOLDFAST_ROOT/firmware/core" ;; esac; }
usage() { sed -n '2,22s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

smoke=0
targets=()
for arg in "$@"; do
  case "$arg" in
    -h | --help)
      usage
      exit 0
      ;;
    --smoke) smoke=1 ;;
    --list)
      printf '%s\n' "${targets_all[@]}"
      exit 0
      ;;
    -*)
      usage >&2
      hf_die "unknown option: $arg"
      ;;
    *)
      case " ${targets_all[*]} " in
        *" $arg "*) targets+=("$arg") ;;
        *) hf_die "unknown fuzz target: $arg (targets: ${targets_all[*]})" ;;
      esac
      ;;
  esac
done
[ "${#targets[@]}" -gt 0 ] || targets=("${targets_all[@]}")
if [ "$smoke" -eq 1 ]; then
  seconds="${FUZZ_SECONDS:-30}"
else
  seconds="${FUZZ_SECONDS:-300}"
fi
case "$seconds" in
  '' | *[!0-9]*) hf_die "FUZZ_SECONDS must be a whole number of seconds, not '$seconds'" ;;
esac

hf_setup_path
trunk_dir="$HOLDFAST_ROOT/trunk"
fuzz_dir="$trunk_dir/fuzz"
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cache/holdfast/fuzz-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

have_libfuzzer() {
  [ "${FUZZ_STABLE:-0}" != 1 ] || return 1
  hf_nightly_available >/dev/null || return 1
  cargo +nightly fuzz --version >/dev/null 2>&1
}

if ! have_libfuzzer; then
  if [ "${FUZZ_REQUIRE_LIBFUZZER:-0}" = 1 ]; then
    hf_die "cargo-fuzz or a nightly toolchain is missing (install: rustup toolchain install nightly && cargo install --locked cargo-fuzz)"
  fi
  hf_warn "cargo-fuzz or a nightly toolchain is missing: running the stable replay of the trunk's fuzz targets instead (the phone parsers' property tests run in cargo test)"
  hf_log "cargo test --release --manifest-path trunk/fuzz/Cargo.toml (FUZZ_REPLAY_CASES=${FUZZ_REPLAY_CASES:-100000})"
  filters=()
  for t in "${targets[@]}"; do
    case "$t" in decode | gateway) filters+=("$t") ;; esac
  done
  [ "${#filters[@]}" -lt 2 ] || filters=()
  CARGO_TARGET_DIR="$target_dir" cargo test --release --manifest-path "$fuzz_dir/Cargo.toml" \
    --test replay -- --nocapture "${filters[@]}"
  exit $?
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for t in "${targets[@]}"; do
  cd "$(crate_of "$t")"
  hf_log "building $t (cargo +nightly fuzz build, target dir $target_dir)"
  cargo +nightly fuzz build --target-dir "$target_dir" "$t" >"$work/build.log" 2>&1 || {
    cat "$work/build.log" >&2
    hf_die "fuzz target $t does not build"
  }
done

failed=()
summary=()
for t in "${targets[@]}"; do
  cd "$(crate_of "$t")"
  corpus="$work/corpus-$t"
  mkdir -p "$corpus"
  if [ -d "fuzz/seeds/$t" ]; then
    cp "fuzz/seeds/$t"/* "$corpus"/ 2>/dev/null || true
  fi
  log="$work/$t.log"
  hf_log "fuzzing $t for ${seconds}s ($(find "$corpus" -type f | wc -l) seeds)"
  rc=0
  cargo +nightly fuzz run --target-dir "$target_dir" "$t" "$corpus" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs="$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log" | tail -n 1)"
  cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -n 1 || true)"
  if [ "$rc" -ne 0 ]; then
    tail -n 60 "$log" >&2
    failed+=("$t")
    summary+=("$t: FAILED (exit $rc) ${runs:-} ${cov:-}")
  else
    summary+=("$t: ok, ${runs:-? runs}, ${cov:-}")
  fi
done

printf '\nfuzz summary:\n' >&2
printf '  %s\n' "${summary[@]}" >&2
if [ "${#failed[@]}" -gt 0 ]; then
  hf_die "fuzz target(s) failed: ${failed[*]} (inputs in trunk/fuzz/artifacts/ or firmware/core/fuzz/artifacts/)"
fi
