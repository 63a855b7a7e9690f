#!/usr/bin/env bash
# Installs what holdfast's build and tests need on Debian 12 (bookworm).
#
#   scripts/install-deps.sh              everything: toolchains, qemu, postgres, chromium, cargo-fuzz
#   scripts/install-deps.sh --rust-only  only what `cargo build` and scripts/run.sh need
#
# Runs as root, or through sudo when not root. Idempotent: packages already
# installed are only checked (dpkg), so a re-run takes about a second, and
# `apt-get update` runs only when something is missing (and at most once an hour).
#
# Debian's Rust (rustc-web/cargo-web 1.96 from bookworm-security, with its
# library source rust-web-src and rust-lld from rust-web-llvm + lld-22) is what
# builds the no_std firmware for thumbv7em-none-eabihf with -Zbuild-std
# (scripts/build-thumb.sh); rustup's toolchains cannot fetch that target here.
# If rustup's cargo is absent, Debian's /usr/bin/cargo is also the host
# toolchain, and its rustfmt and clippy are installed too.
# qemu-system-arm is Debian 12's 7.2 (it emulates the mps2 boards' LAN9118); on a
# machine that carries a newer backported qemu-utils, apt replaces that package
# (and its qemu-img) to install it: nothing here uses qemu-img.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rust_only=0
for arg in "$@"; do
  case "$arg" in
    --rust-only) rust_only=1 ;;
    -h | --help)
      sed -n '2,9s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
      exit 0
      ;;
    *) hf_die "unknown argument: $arg (try --help)" ;;
  esac
done

started=$(date +%s)
hf_setup_path

command -v dpkg-query >/dev/null 2>&1 || hf_die "this script needs Debian (12, bookworm) or a derivative with apt"

# --- which packages -----------------------------------------------------------
pkgs=(build-essential pkg-config rustc-web cargo-web rust-web-src rust-web-llvm lld-22)
# scripts/run.sh's local cluster: nginx in front (the stream module for the TLS passthrough
# variant), openssl for its CA's fingerprint, curl for its probes. Run as the invoking user with its own
# prefix; the system nginx service is not used.
pkgs+=(nginx libnginx-mod-stream openssl curl)
if hf_host_cargo_is_debian; then
  # no rustup: Debian's cargo is the host toolchain, so `cargo fmt` and
  # `cargo clippy` must come from Debian too
  pkgs+=(rustfmt-web rust-web-clippy)
fi
if [ "$rust_only" -eq 0 ]; then
  pkgs+=(qemu-system-arm postgresql iproute2 python3-venv)
  # the aggregator's browser tests: headless Chromium driven by chromedriver, and a font to draw with
  pkgs+=(chromium chromium-driver fonts-dejavu-core)
  # the LAN mode's browser test: Chromium trusts the downloaded CA through an NSS database
  # (certutil), as a person's browser does once the CA is installed
  pkgs+=(libnss3-tools)
fi
# packages whose installed version must be at least HOLDFAST_MIN_DEBIAN_RUST
versioned=" rustc-web cargo-web rust-web-src rust-web-llvm rustfmt-web rust-web-clippy "

pkg_ok() {
  local p="$1" status version
  status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
  [ "$status" = installed ] || return 1
  case "$versioned" in
    *" $p "*)
      version="$(dpkg-query -W -f='${Version}' "$p")"
      dpkg --compare-versions "$version" ge "$HOLDFAST_MIN_DEBIAN_RUST" || return 1
      ;;
  esac
  return 0
}

missing=()
for p in "${pkgs[@]}"; do
  pkg_ok "$p" || missing+=("$p")
done

# --- apt ------------------------------------------------------------------------
apt_env=(env DEBIAN_FRONTEND=noninteractive)
apt_opts=(-y -q --no-install-recommends -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=600)
stamp_dir=/var/lib/holdfast
stamp="$stamp_dir/apt-update.stamp"

if [ "${#missing[@]}" -gt 0 ]; then
  if [ -n "$(find "$stamp" -mmin -60 2>/dev/null)" ]; then
    hf_log "apt-get update ran less than an hour ago: skipped"
  else
    hf_log "apt-get update"
    if hf_as_root "${apt_env[@]}" apt-get update -q -o DPkg::Lock::Timeout=600; then
      hf_as_root mkdir -p "$stamp_dir" && hf_as_root touch "$stamp"
    else
      hf_warn "apt-get update failed; trying the install with the package lists there are"
    fi
  fi
  hf_log "apt-get install ${missing[*]}"
  hf_as_root "${apt_env[@]}" apt-get install "${apt_opts[@]}" "${missing[@]}"
else
  hf_log "Debian packages: all present (${pkgs[*]})"
fi

debian_rustc="$(/usr/bin/rustc --version 2>/dev/null || echo 'not installed')"
if ! pkg_ok rustc-web; then
  hf_warn "Debian's rustc is '$debian_rustc', older than $HOLDFAST_MIN_DEBIAN_RUST:" \
    "the thumbv7em firmware build needs rustc-web $HOLDFAST_MIN_DEBIAN_RUST from the bookworm-security suite;" \
    "add that suite to the apt sources and re-run this script"
fi

# --- Rust tools from crates.io and rustup -------------------------------------------
hf_setup_path
if ! command -v cargo >/dev/null 2>&1; then
  hf_die "no cargo on PATH even after installing cargo-web (expected /usr/bin/cargo)"
fi

nightly="none"
if [ "$rust_only" -eq 0 ]; then
  if command -v cargo-fuzz >/dev/null 2>&1; then
    hf_log "cargo-fuzz: present ($(command -v cargo-fuzz))"
  else
    hf_log "cargo install --locked cargo-fuzz"
    (unset CARGO_TARGET_DIR CARGO_BUILD_TARGET && cargo install --locked cargo-fuzz)
    hf_setup_path
  fi

  # cargo fuzz wants a nightly compiler. Try to get one through rustup, but a
  # machine that cannot download one is fine: scripts/fuzz.sh falls back to a
  # stable harness (see hf_nightly_available in scripts/lib.sh).
  if command -v rustup >/dev/null 2>&1 && ! hf_nightly_available >/dev/null; then
    hf_log "rustup toolchain install nightly --profile minimal"
    timeout 600 rustup toolchain install nightly --profile minimal </dev/null ||
      hf_warn "no nightly toolchain could be installed (fuzzing will use the stable harness)"
  fi
  nightly="$(hf_nightly_available || echo none)"

  # mobile-sim's tests run an independent WebSocket peer written with Python's websockets.
  if ! python3 -c 'import websockets' >/dev/null 2>&1; then
    hf_log "python3 websockets: installing"
    python3 -m pip install --quiet websockets </dev/null ||
      hf_as_root apt-get install -y --no-install-recommends python3-websockets </dev/null
  fi
fi

# scripts/check-deploy.sh validates deploy/k8s offline with kubernetes-validate (it bundles the
# Kubernetes schemas), in a venv of its own.
k8s_venv="$HOME/.cache/holdfast/k8s-validate"
if [ "$rust_only" -eq 0 ] && [ ! -x "$k8s_venv/bin/kubernetes-validate" ]; then
  hf_log "kubernetes-validate: installing into $k8s_venv"
  if ! { python3 -m venv "$k8s_venv" && "$k8s_venv/bin/pip" install --quiet kubernetes-validate </dev/null; }; then
    hf_warn "kubernetes-validate could not be installed (scripts/check-deploy.sh will fail)"
  fi
fi

# --- report ------------------------------------------------------------------------
elapsed=$(($(date +%s) - started))
hf_log "done in ${elapsed}s"
{
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "  installed now:     ${missing[*]}"
  fi
  echo "  /usr/bin/rustc:    $debian_rustc (firmware, scripts/build-thumb.sh)"
  echo "  host cargo:        $(command -v cargo) ($(cargo --version 2>/dev/null || echo '?'))"
  if [ "$rust_only" -eq 0 ]; then
    echo "  cargo-fuzz:        $(command -v cargo-fuzz || echo missing)"
    echo "  nightly (rustup):  $nightly"
  fi
} >&2
