#!/usr/bin/env bash
# Builds a no_std crate for thumbv7em-none-eabihf (Cortex-M4F/M7) with Debian's
# Rust (rustc-web 1.96, /usr/bin/cargo) and -Zbuild-std, so no rustup target
# download and no special .cargo/config.toml in the workspace are needed.
#
#   scripts/build-thumb.sh -p trunk                 a workspace package (release)
#   scripts/build-thumb.sh path/to/crate [ARGS...]  a crate folder (its Cargo.toml)
#   scripts/build-thumb.sh --dev -p trunk           debug profile instead of release
#
# Any other arguments go to `cargo build` unchanged. Environment:
#   CARGO_TARGET_DIR   default "$HOME/.cache/holdfast/target-thumb" (kept apart
#                      from the host build: a different compiler)
#   THUMB_TARGET       default thumbv7em-none-eabihf
# Packages come from scripts/install-deps.sh (rustc-web cargo-web rust-web-src
# rust-web-llvm lld-22).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

target="${THUMB_TARGET:-thumbv7em-none-eabihf}"
profile=(--release)
args=()

if [ "$#" -eq 0 ]; then
  sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
for arg in "$@"; do
  case "$arg" in
    -h | --help)
      sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    --dev) profile=() ;;
    --release | --profile | --profile=*) profile=() && args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done
# A folder as the first argument stands for its Cargo.toml.
if [ "${#args[@]}" -gt 0 ] && [ -d "${args[0]}" ]; then
  [ -f "${args[0]}/Cargo.toml" ] || hf_die "${args[0]} has no Cargo.toml"
  args[0]="--manifest-path=$(cd "${args[0]}" && pwd)/Cargo.toml"
fi

if [ ! -x /usr/bin/cargo ] || [ ! -x /usr/bin/rustc ]; then
  hf_die "Debian's Rust is missing (/usr/bin/cargo, /usr/bin/rustc): run scripts/install-deps.sh"
fi
rustc_version="$(/usr/bin/rustc --version)"
sysroot="$(/usr/bin/rustc --print sysroot)"
[ -f "$sysroot/lib/rustlib/src/rust/library/core/Cargo.toml" ] ||
  hf_die "no library source at $sysroot/lib/rustlib/src/rust for $rustc_version: install rust-web-src (scripts/install-deps.sh)"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target-thumb}"
mkdir -p "$CARGO_TARGET_DIR"

# PATH first, or rustup's cargo/rustc win. RUSTC and the wrappers are cleared
# so nothing of a rustup toolchain leaks in; RUSTC_BOOTSTRAP=1 lets Debian's
# stable compiler take -Z flags.
cmd=(/usr/bin/cargo build --target "$target" "${profile[@]}"
  -Zbuild-std=core -Zbuild-std-features=compiler-builtins-mem "${args[@]}")
hf_log "$rustc_version: ${cmd[*]}"
cd "$HOLDFAST_ROOT"
exec env -u RUSTC -u RUSTDOC -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER \
  -u RUSTUP_TOOLCHAIN -u CARGO_BUILD_TARGET \
  PATH=/usr/bin:/bin RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$CARGO_TARGET_DIR" \
  "${cmd[@]}"
