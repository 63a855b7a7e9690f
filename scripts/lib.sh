# shellcheck shell=bash
# Helpers shared by the holdfast scripts. Source it; don't run it:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Repository root (the folder above scripts/).
HOLDFAST_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export HOLDFAST_ROOT

: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
export HOME

# The Debian Rust that builds the thumbv7em firmware (-Zbuild-std needs the
# compiler and rust-web-src at the same version; 1.96 is in bookworm-security).
HOLDFAST_MIN_DEBIAN_RUST="1.96"
export HOLDFAST_MIN_DEBIAN_RUST

hf_log() { printf '==> %s\n' "$*" >&2; }
hf_warn() { printf 'warning: %s\n' "$*" >&2; }
hf_die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Runs a command as root: directly when root, else through sudo.
hf_as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    hf_die "'$*' needs root: run this as root or install sudo"
  fi
}

# Puts cargo's bin folder (rustup's cargo, cargo-fuzz) first on PATH when it
# exists. With no rustup, cargo then resolves to Debian's /usr/bin/cargo.
hf_setup_path() {
  local bin="${CARGO_HOME:-$HOME/.cargo}/bin"
  if [ -d "$bin" ]; then
    case ":$PATH:" in
      *":$bin:"*) ;;
      *) PATH="$bin:$PATH" ;;
    esac
  fi
  export PATH
}

# True when cargo is Debian's (no rustup cargo in front of it).
hf_host_cargo_is_debian() {
  local c
  c="$(command -v cargo 2>/dev/null || true)"
  [ -z "$c" ] || [ "$c" = /usr/bin/cargo ]
}

# Exit status 0 when a nightly Rust toolchain is usable through rustup (what
# `cargo +nightly fuzz` needs); prints its name. Non-zero otherwise: callers
# such as scripts/fuzz.sh then fall back to a stable harness.
hf_nightly_available() {
  command -v rustup >/dev/null 2>&1 || return 1
  if rustup run nightly rustc --version >/dev/null 2>&1; then
    echo nightly
    return 0
  fi
  return 1
}

# hf_int VALUE WHAT: dies naming WHAT unless VALUE is a whole number. Call it as a statement on
# figures read from a database or a metric before comparing them, so that an empty or garbled
# read stops the script instead of making a comparison that reads as false.
hf_int() {
  case "$1" in
    '' | *[!0-9]*) hf_die "$2: expected a whole number, read '$1'" ;;
  esac
}

# The median of the numbers on standard input, one a line (the lower middle of an even count).
hf_median() { sort -g | awk '{a[NR] = $1} END {if (NR) print (NR % 2) ? a[(NR + 1) / 2] : a[NR / 2]}'; }

# hf_drop_database ADMIN_URL NAME: drops a test database, retrying: WITH (FORCE) cannot end an
# autovacuum worker busy on it (it belongs to the server's superuser), which ends on its own.
hf_drop_database() {
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    psql "$1" -qc "DROP DATABASE IF EXISTS $2 WITH (FORCE)" >/dev/null 2>&1 && return 0
    sleep "$i"
  done
  hf_warn "could not drop database $2"
  return 1
}
