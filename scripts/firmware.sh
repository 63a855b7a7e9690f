#!/usr/bin/env bash
# Builds and runs the gateway firmware (firmware/boards, thumbv7em-none-eabihf).
#
#   scripts/firmware.sh build                     both images (release), with their sizes
#   scripts/firmware.sh run-qemu [PROV] [PORT]    boot mps2-an386 in QEMU; guest port 80 on
#                                                 127.0.0.1:PORT (default 8080); PROV: a
#                                                 provisioning file (<= 16 KiB) or "" for none
#   scripts/firmware.sh smoke                     build both images, boot mps2 in QEMU with a
#                                                 random (invalid) provisioning file: it must
#                                                 load it, get DHCP, and refuse it; exit 0 or 1
#                                                 (firmware/host/tests/qemu.rs runs the real thing)
#   scripts/firmware.sh clippy                    clippy -D warnings over the board workspace
#   scripts/firmware.sh flash [FLAGS]             one step for a NUCLEO-H743ZI: build its image,
#                                                 write the provisioning block for a gateway
#                                                 (from `aggregator gateway add` output, --added
#                                                 FILE or - for stdin; or --id and --secret-file),
#                                                 flash both with probe-rs and reset. Also needs
#                                                 --ca FILE, --aggregator HOST:PORT and
#                                                 --device-public-key HEX (`aggregator device
#                                                 public-key`: phones prove their device; or
#                                                 --phone-auth off); optional
#                                                 --server-name NAME, --links K, --block FILE
#                                                 (where the block is kept), --no-flash (stop
#                                                 before probe-rs). Without probe-rs or a probe:
#                                                 says so, exit 3.
#   scripts/firmware.sh ram-per-phone [A] [B]     static RAM per phone session: both images
#                                                 built with A and B phones (default 32, 128),
#                                                 (RAM(B) - RAM(A)) / (B - A), all RAM counted
#   scripts/firmware.sh qemu-runner ELF           cargo's runner for mps2-an386 (cargo run)
#   scripts/firmware.sh probe-rs-runner ELF       cargo's runner for nucleo-h743zi (cargo run)
#
# Environment: FIRMWARE_TARGET_DIR (default $HOME/.cache/holdfast/target-thumb; the
# shared host CARGO_TARGET_DIR is deliberately not used: another compiler);
# HOLDFAST_PROVISION=FILE and HOLDFAST_HOSTPORT=PORT for the runners; SMOKE_TIMEOUT
# (seconds, default 60) for smoke. Toolchain: Debian's rustc-web 1.96 with
# -Zbuild-std (scripts/install-deps.sh); failing that, a rustup toolchain that has
# the thumbv7em-none-eabihf target (`rustup target add thumbv7em-none-eabihf`).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BOARDS_DIR="$HOLDFAST_ROOT/firmware/boards"
TARGET=thumbv7em-none-eabihf
TARGET_DIR="${FIRMWARE_TARGET_DIR:-$HOME/.cache/holdfast/target-thumb}"
OUT_DIR="$TARGET_DIR/$TARGET/release"
MPS2_ELF="$OUT_DIR/holdfast-gateway-mps2"
NUCLEO_ELF="$OUT_DIR/holdfast-gateway-nucleo"
# The provisioning block: the last 16 KiB of the mps2's 4 MiB SSRAM1
# (0x40_0000 - 0x4000), and the first 16 KiB of the H743's last flash sector.
MPS2_PROV_ADDR=0x003FC000
NUCLEO_PROV_ADDR=0x081E0000
PROV_SIZE=16384
NUCLEO_CHIP=STM32H743ZITx

usage() {
  sed -n '2,34s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

# Runs cargo in firmware/boards (its .cargo/config.toml is found from the
# working directory, not from --manifest-path).
fw_cargo() {
  mkdir -p "$TARGET_DIR"
  local sysroot
  sysroot="$(/usr/bin/rustc --print sysroot 2>/dev/null || true)"
  if [ -x /usr/bin/cargo ] && [ -f "$sysroot/lib/rustlib/src/rust/library/core/Cargo.toml" ]; then
    # Debian's Rust: PATH first (or rustup's cargo wins), no rustup variables,
    # RUSTC_BOOTSTRAP=1 so that the [unstable] build-std table applies.
    (cd "$BOARDS_DIR" && env -u RUSTC -u RUSTDOC -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER \
      -u RUSTUP_TOOLCHAIN -u CARGO_BUILD_TARGET \
      PATH=/usr/bin:/bin RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$TARGET_DIR" /usr/bin/cargo "$@")
  elif command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
    (cd "$BOARDS_DIR" && CARGO_TARGET_DIR="$TARGET_DIR" cargo "$@")
  else
    hf_die "no toolchain for $TARGET: run scripts/install-deps.sh (Debian's rustc-web + rust-web-src)" \
      "or 'rustup target add $TARGET'"
  fi
}

# The first size tool that is there; GNU size reads ARM ELF files too.
size_tool() {
  local t
  for t in llvm-size-22 llvm-size rust-size size; do
    if command -v "$t" >/dev/null 2>&1; then
      echo "$t"
      return 0
    fi
  done
  return 1
}

# Prints the image's flash use (vector table, code, read-only data, and the
# initial values of .data) and its static RAM (.data + .bss + .uninit), from
# the section table (`size -A`, which llvm-size and GNU size both print).
# PSRAM pools (mps2's .psram section) are shown apart.
print_size() {
  local name="$1" elf="$2" tool
  tool="$(size_tool)" || {
    hf_warn "no size tool (llvm-size or binutils' size): sizes not shown"
    return 0
  }
  "$tool" -A "$elf" | awk -v name="$name" -v tool="$tool" '
    $1 == ".vector_table" || $1 == ".text" || $1 == ".rodata" || $1 == ".gnu.sgstubs" { flash += $2 }
    $1 == ".data" { flash += $2; data = $2 }
    $1 == ".bss" || $1 == ".uninit" { bss += $2 }
    $1 == ".psram" { psram = $2 }
    END {
      printf "%-40s flash %7d bytes (incl. data %d), static RAM %7d bytes (data %d + bss %d)", \
        name, flash, data, data + bss, data, bss
      if (psram > 0) printf ", PSRAM %d bytes", psram
      printf "  [%s -A]\n", tool
    }'
}

cmd_build() {
  local started=$SECONDS
  hf_log "building firmware/boards (release, $TARGET) into $TARGET_DIR"
  fw_cargo build --release --locked
  hf_log "built in $((SECONDS - started))s"
  print_size "mps2-an386 ($(basename "$MPS2_ELF"))" "$MPS2_ELF"
  print_size "nucleo-h743zi ($(basename "$NUCLEO_ELF"))" "$NUCLEO_ELF"
}

# An image's static RAM in bytes: .data, .bss, .uninit and (mps2) .psram.
ram_bytes() {
  local tool
  tool="$(size_tool)" || hf_die "no size tool (llvm-size or binutils' size)"
  "$tool" -A "$1" | awk '$1 == ".data" || $1 == ".bss" || $1 == ".uninit" || $1 == ".psram" { n += $2 } END { print n + 0 }'
}

# Builds both images with two phone counts (HOLDFAST_PHONES, read at build time)
# and prints what one more phone session costs in static RAM on each board.
cmd_ram_per_phone() {
  local a="${1:-32}" b="${2:-128}" name n
  [ "$b" -gt "$a" ] || hf_die "ram-per-phone: B ($b) must be larger than A ($a)"
  declare -A ram
  for n in "$a" "$b"; do
    hf_log "building both images with HOLDFAST_PHONES=$n"
    HOLDFAST_PHONES="$n" fw_cargo build --release --locked
    ram[mps2-an386 $n]="$(ram_bytes "$MPS2_ELF")"
    ram[nucleo-h743zi $n]="$(ram_bytes "$NUCLEO_ELF")"
  done
  for name in mps2-an386 nucleo-h743zi; do
    echo "$name: static RAM ${ram[$name $a]} B with $a phones, ${ram[$name $b]} B with $b:" \
      "$(((ram[$name $b] - ram[$name $a]) / (b - a))) B per phone session"
  done
  # Leave the default build in place for the other commands.
  fw_cargo build --release --locked
}

cmd_clippy() {
  # Debian's cargo looks for subcommands in ~/.cargo/bin first, where rustup's
  # cargo-clippy proxy (another compiler) would win: call Debian's directly.
  if [ -x /usr/bin/cargo-clippy ] && [ -x /usr/bin/cargo ]; then
    (cd "$BOARDS_DIR" && env -u RUSTC -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER -u RUSTUP_TOOLCHAIN \
      PATH=/usr/bin:/bin RUSTC_BOOTSTRAP=1 CARGO=/usr/bin/cargo CARGO_TARGET_DIR="$TARGET_DIR" \
      /usr/bin/cargo-clippy clippy --release --locked -- -D warnings)
  else
    fw_cargo clippy --release --locked -- -D warnings
  fi
}

build_mps2() {
  fw_cargo build --release --locked -p board-mps2-an386
  print_size "mps2-an386 ($(basename "$MPS2_ELF"), ${HOLDFAST_PHONES:-64} phones)" "$MPS2_ELF" >&2
}

# qemu_cmd ELF PROV PORT: the QEMU command line, one word a line.
qemu_args() {
  local elf="$1" prov="$2" port="$3"
  # shellcheck disable=SC2054 # the commas are QEMU's option syntax
  local args=(qemu-system-arm -M mps2-an386 -nographic -monitor none -serial stdio
    -semihosting-config enable=on,target=native
    -nic "user,model=lan9118,hostfwd=tcp:127.0.0.1:$port-:80"
    -kernel "$elf")
  if [ -n "$prov" ]; then
    [ -f "$prov" ] || hf_die "provisioning file not found: $prov"
    local size
    size="$(stat -c %s "$prov")"
    [ "$size" -le "$PROV_SIZE" ] || hf_die "provisioning file is $size bytes, more than the block's $PROV_SIZE"
    args+=(-device "loader,file=$prov,addr=$MPS2_PROV_ADDR,force-raw=on")
  fi
  printf '%s\n' "${args[@]}"
}

need_qemu() {
  command -v qemu-system-arm >/dev/null 2>&1 || hf_die "qemu-system-arm missing: run scripts/install-deps.sh"
}

cmd_qemu_runner() {
  local elf="${1:?usage: firmware.sh qemu-runner ELF}"
  need_qemu
  local port="${HOLDFAST_HOSTPORT:-8080}" prov="${HOLDFAST_PROVISION:-}"
  mapfile -t cmd < <(qemu_args "$elf" "$prov" "$port")
  hf_log "QEMU mps2-an386: http://127.0.0.1:$port/ reaches the guest's port 80${prov:+; provisioning $prov};" \
    "quit with Ctrl-A X"
  exec "${cmd[@]}"
}

cmd_run_qemu() {
  local prov="${1:-${HOLDFAST_PROVISION:-}}" port="${2:-${HOLDFAST_HOSTPORT:-8080}}"
  need_qemu
  build_mps2
  HOLDFAST_PROVISION="$prov" HOLDFAST_HOSTPORT="$port" cmd_qemu_runner "$MPS2_ELF"
}

cmd_probe_rs_runner() {
  local elf="${1:?usage: firmware.sh probe-rs-runner ELF}"
  command -v probe-rs >/dev/null 2>&1 ||
    hf_die "probe-rs missing: 'cargo install probe-rs-tools --locked' (see firmware/README.md)"
  if [ -n "${HOLDFAST_PROVISION:-}" ]; then
    local size
    size="$(stat -c %s "$HOLDFAST_PROVISION")"
    [ "$size" -le "$PROV_SIZE" ] || hf_die "provisioning file is $size bytes, more than the block's $PROV_SIZE"
    hf_log "writing $HOLDFAST_PROVISION to the provisioning sector at $NUCLEO_PROV_ADDR"
    probe-rs download --chip "$NUCLEO_CHIP" --binary-format bin --base-address "$NUCLEO_PROV_ADDR" \
      "$HOLDFAST_PROVISION"
  fi
  exec probe-rs run --chip "$NUCLEO_CHIP" "$elf"
}

# The host build's gateway binary (it writes provisioning blocks): HOLDFAST_GATEWAY_BIN, or the
# release build in the host's target directory, built if missing.
gateway_bin() {
  if [ -n "${HOLDFAST_GATEWAY_BIN:-}" ]; then
    echo "$HOLDFAST_GATEWAY_BIN"
    return 0
  fi
  local bin="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}/release/gateway"
  if [ ! -x "$bin" ]; then
    hf_log "building the host gateway (it writes the provisioning block) into $(dirname "$bin")" >&2
    (cd "$HOLDFAST_ROOT" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}" \
      cargo build --release --locked -q -p gateway) >&2
  fi
  echo "$bin"
}

cmd_flash() {
  local added="" id="" secret_file="" ca="" aggregator="" server_name="" links="" block="" flash=1
  local device_public_key="" phone_auth=required
  while [ $# -gt 0 ]; do
    case "$1" in
      --added) added="${2:?--added FILE (or - for stdin)}"; shift 2 ;;
      --id) id="${2:?--id NAME}"; shift 2 ;;
      --secret-file) secret_file="${2:?--secret-file FILE}"; shift 2 ;;
      --ca) ca="${2:?--ca FILE}"; shift 2 ;;
      --aggregator) aggregator="${2:?--aggregator HOST:PORT}"; shift 2 ;;
      --server-name) server_name="${2:?--server-name NAME}"; shift 2 ;;
      --links) links="${2:?--links K}"; shift 2 ;;
      --block) block="${2:?--block FILE}"; shift 2 ;;
      --no-flash) flash=0; shift ;;
      --device-public-key) device_public_key="${2:?--device-public-key HEX}"; shift 2 ;;
      --phone-auth) phone_auth="${2:?--phone-auth required|off}"; shift 2 ;;
      *) hf_die "flash: unknown flag $1 (scripts/firmware.sh --help)" ;;
    esac
  done
  [ -n "$ca" ] && [ -n "$aggregator" ] || hf_die "flash: --ca FILE and --aggregator HOST:PORT are needed"
  # Phones prove their device to the board with a token the operator signed: the board gets
  # the public key in its block. Without it any phone counts bytes for any device.
  case "$phone_auth" in
    required)
      [ -n "$device_public_key" ] || hf_die "flash: phones must prove their device: --device-public-key HEX" \
        "(the output of 'aggregator device public-key'), or --phone-auth off on a trusted test network" ;;
    off) device_public_key="" ;;
    *) hf_die "flash: --phone-auth is required or off, not '$phone_auth'" ;;
  esac
  # The gateway's identity: the line `aggregator gateway add NAME` printed ("NAME SECRETHEX"),
  # or --id and --secret-file. The secret goes to `gateway provision` in its environment, not
  # its command line (which every local user can read).
  local secret=""
  if [ -n "$added" ]; then
    local line
    if [ "$added" = - ]; then line="$(head -n1)"; else line="$(head -n1 "$added")"; fi
    read -r id secret _ <<<"$line"
    [[ "$secret" =~ ^[0-9a-fA-F]{2,}$ ]] ||
      hf_die "flash: --added: expected the line 'NAME SECRETHEX' that 'aggregator gateway add NAME' prints"
  elif [ -n "$id" ] && [ -n "$secret_file" ]; then
    secret="$(tr -d ' \n' <"$secret_file")"
  else
    hf_die "flash: which gateway? --added FILE (the output of 'aggregator gateway add NAME'), or --id and --secret-file"
  fi

  hf_log "building the NUCLEO-H743ZI image (release) into $TARGET_DIR"
  fw_cargo build --release --locked -p board-nucleo-h743zi
  print_size "nucleo-h743zi ($(basename "$NUCLEO_ELF"))" "$NUCLEO_ELF"

  local keep=1
  if [ -z "$block" ]; then
    block="$(mktemp --suffix=.prov.bin)"
    keep=0
  fi
  local args=(provision --id "$id" --ca "$ca" --aggregator "$aggregator" -o "$block")
  [ -n "$server_name" ] && args+=(--server-name "$server_name")
  [ -n "$links" ] && args+=(--links "$links")
  [ -n "$device_public_key" ] && args+=(--device-public-key "$device_public_key")
  HOLDFAST_GATEWAY_SECRET="$secret" "$(gateway_bin)" "${args[@]}" ||
    hf_die "flash: the provisioning block could not be written"
  if [ "$flash" -eq 0 ]; then
    echo "not flashed (--no-flash): image $NUCLEO_ELF, provisioning block $block for gateway $id"
    return 0
  fi

  if ! command -v probe-rs >/dev/null 2>&1; then
    [ "$keep" -eq 1 ] || rm -f "$block"
    echo "probe-rs is not installed: 'cargo install probe-rs-tools --locked' (https://probe.rs)," \
      "then run this again; nothing was flashed" >&2
    return 3
  fi
  local probes
  probes="$(probe-rs list 2>&1 || true)"
  if ! grep -q '^\[[0-9]*\]' <<<"$probes"; then
    [ "$keep" -eq 1 ] || rm -f "$block"
    echo "no debug probe found: connect the NUCLEO-H743ZI's ST-LINK (the USB port by the" \
      "reset button, CN1) and run this again; nothing was flashed. probe-rs list said: $probes" >&2
    return 3
  fi
  hf_log "flashing the image, then the provisioning block at $NUCLEO_PROV_ADDR ($NUCLEO_CHIP)"
  probe-rs download --chip "$NUCLEO_CHIP" "$NUCLEO_ELF"
  probe-rs download --chip "$NUCLEO_CHIP" --binary-format bin --base-address "$NUCLEO_PROV_ADDR" "$block"
  probe-rs reset --chip "$NUCLEO_CHIP"
  [ "$keep" -eq 1 ] || rm -f "$block"
  echo "flashed gateway $id: the board boots, gets DHCP and opens its trunks to $aggregator" \
    "(its log: probe-rs attach --chip $NUCLEO_CHIP $NUCLEO_ELF)"
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU seconds (user + system) that process PID has used so far.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

cmd_smoke() {
  local timeout="${SMOKE_TIMEOUT:-60}" started=$SECONDS
  need_qemu
  cmd_build
  local built=$SECONDS

  local work port log prov expect qpid
  work="$(mktemp -d)"
  log="$work/qemu.log"
  prov="$work/prov.bin"
  # A provisioning file of the block's full size, so that the SHA-256 the
  # firmware logs over its 16 KiB is the file's.
  head -c "$PROV_SIZE" /dev/urandom >"$prov"
  expect="$(sha256sum "$prov" | cut -c1-16)"
  port="$(free_port)"
  mapfile -t cmd < <(qemu_args "$MPS2_ELF" "$prov" "$port")
  hf_log "smoke: ${cmd[*]}"
  local boot_ms
  boot_ms=$(date +%s%3N)
  "${cmd[@]}" </dev/null >"$log" 2>&1 &
  qpid=$!
  # shellcheck disable=SC2064
  trap "kill $qpid 2>/dev/null || true; rm -rf '$work'" EXIT

  local body="" ok=0 deadline=$((SECONDS + timeout))
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$qpid" 2>/dev/null; then
      hf_warn "QEMU exited early"
      break
    fi
    # The gateway reads the block after DHCP, and says why it will not use random bytes.
    if grep -q "not provisioned" "$log" 2>/dev/null; then
      body="$(grep -m1 "not provisioned" "$log")"
      ok=1
      break
    fi
    sleep 0.2
  done
  local answered_ms
  answered_ms=$(date +%s%3N)

  local idle_cpu=""
  if [ "$ok" -eq 1 ]; then
    # Idle cost: QEMU's CPU time over 2 s with nothing to do (reported, not
    # asserted: timings on a shared machine are noisy).
    local c0 c1
    c0="$(cpu_seconds "$qpid")"
    sleep 2
    c1="$(cpu_seconds "$qpid")"
    idle_cpu="$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.0f%%", (b - a) / 2 * 100 }')"
  fi
  kill "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true

  echo "----- QEMU output -----"
  cat "$log"
  echo "-----------------------"
  local verdict=0
  if [ "$ok" -ne 1 ]; then
    hf_warn "the gateway did not start (no 'not provisioned' line) within ${timeout}s"
    verdict=1
  else
    echo "the gateway started and refused the random block: $body"
    if ! grep -q "provisioned, sha256 $expect" "$log"; then
      hf_warn "the firmware did not report the provisioning file's digest ($expect) at $MPS2_PROV_ADDR"
      verdict=1
    else
      echo "provisioning block loaded at $MPS2_PROV_ADDR, digest $expect as expected"
    fi
  fi
  echo "build $((built - started))s; QEMU start to the gateway's verdict: $((answered_ms - boot_ms)) ms;" \
    "QEMU CPU while idle: ${idle_cpu:-n/a}"
  rm -rf "$work"
  trap - EXIT
  if [ "$verdict" -eq 0 ]; then
    echo "smoke: 1 passed, 0 failed"
  else
    echo "smoke: 0 passed, 1 failed"
  fi
  return "$verdict"
}

case "${1:-}" in
  build) cmd_build ;;
  run-qemu)
    shift
    cmd_run_qemu "$@"
    ;;
  smoke) cmd_smoke ;;
  clippy) cmd_clippy ;;
  ram-per-phone)
    shift
    cmd_ram_per_phone "$@"
    ;;
  flash)
    shift
    cmd_flash "$@"
    ;;
  qemu-runner)
    shift
    cmd_qemu_runner "$@"
    ;;
  probe-rs-runner)
    shift
    cmd_probe_rs_runner "$@"
    ;;
  -h | --help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
