# shellcheck shell=bash
# The parts of a local holdfast cluster, started and stopped one by one: a private PostgreSQL
# (or the embedded SQLite store), N aggregators, nginx in front, gateways and phones. Used by
# scripts/run.sh (README's first command) and scripts/drills.sh (the failure drills). Source it
# after scripts/lib.sh; don't run it.
#
# Layout (every part on its own loopback address, all on the cluster's port P, as if on their
# own hosts; nothing listens beyond 127.0.0.0/8):
#   nginx           127.0.0.1:P      TLS 1.3 for phones (/ws) and gateways (/trunk)
#   aggregator i    127.0.1.i:P      --plain behind nginx, or its own TLS in passthrough mode
#   PostgreSQL      127.0.1.200:P    a private instance in the cluster's folder (not the
#                                    system's cluster: the drills restart it)
#   host gateway i  127.0.2.i:P      phones' side of a real gateway (when there is one)
#
# Every process started here is recorded and stopped by cl_stop_all, newest first. Long-running
# servers run in their own session (setsid), so a Ctrl-C at the terminal reaches only the
# foreground load generator and this script, which then stops them in order.

: "${HOLDFAST_ROOT:?source scripts/lib.sh first}"

# --- settings (override before cl_init) ------------------------------------------------------
CL_AGGREGATORS="${CL_AGGREGATORS:-2}"       # aggregators behind nginx
CL_STORE="${CL_STORE:-auto}"                # sqlite | postgres | auto (postgres when installed)
CL_TLS="${CL_TLS:-terminate}"               # terminate (nginx) | passthrough (aggregators)
CL_LINKS="${CL_LINKS:-2}"                   # trunk links per gateway
CL_SESSIONS="${CL_SESSIONS:-500}"           # phones per gateway
CL_MIN_INTERVAL="${CL_MIN_INTERVAL:-200ms}" # pause between a phone's bytes
CL_MAX_INTERVAL="${CL_MAX_INTERVAL:-2s}"
# Which gateway cl_gateway_start runs: "virtual" (mobile-sim's virtual gateway: the trunk crate's
# real state machine, with its phones inside) or "host" (firmware/host's `gateway` binary, with
# mobile-sim phones connecting to it).
CL_GATEWAY="${CL_GATEWAY:-virtual}"
CL_GATEWAY_BIN="${CL_GATEWAY_BIN:-}"
# LAN mode (scripts/run.sh --lan): this machine's address on its local network, for a real
# phone. nginx then listens on it as well as on 127.0.0.1, and the certificate names it.
CL_LAN_ADDRESS="${CL_LAN_ADDRESS:-}"

CL_PIDS=()  # "name:pid" of every process started here, oldest first
CL_PG_STARTED=0

cl_log() { printf '[cluster] %s\n' "$*" >&2; }

# cl_init DIR PORT: the cluster's folder (created; kept between runs) and port.
cl_init() {
  CL_DIR="$1"
  CL_PORT="$2"
  mkdir -p "$CL_DIR"
  CL_DIR="$(cd "$CL_DIR" && pwd)"
  CL_BIN="${CL_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}/release}"
  CL_FRONT="127.0.0.1:$CL_PORT"
  CL_PKI="$CL_DIR/pki"
  # The dashboard's token, kept with the cluster so its address stays the same between runs: the
  # aggregators run --plain behind nginx, where without a token the dashboard is closed.
  if [ ! -s "$CL_DIR/dashboard.token" ]; then
    (umask 077 && head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$CL_DIR/dashboard.token")
  fi
  CL_DASHBOARD_TOKEN="$(cat "$CL_DIR/dashboard.token")"
  # The aggregators read DATABASE_URL when no --database-url is given; the cluster always gives
  # one, but a value meant for something else (scripts/test.sh's shared Postgres) must not leak.
  unset DATABASE_URL
  case "$CL_STORE" in
    auto)
      CL_STORE=sqlite
      if cl_pg_bindir >/dev/null; then
        # As root the server runs as the postgres account, which must reach the folder.
        if [ "$(id -u)" -ne 0 ] || runuser -u postgres -- test -x "$(dirname "$CL_DIR")" 2>/dev/null; then
          CL_STORE=postgres
        else
          cl_log "PostgreSQL is installed but its account cannot reach $CL_DIR: using the embedded store"
        fi
      fi
      ;;
    sqlite | postgres) ;;
    *) hf_die "CL_STORE must be sqlite, postgres or auto, not '$CL_STORE'" ;;
  esac
  case "$CL_TLS" in
    terminate | passthrough) ;;
    *) hf_die "CL_TLS must be terminate or passthrough, not '$CL_TLS'" ;;
  esac
}

# A port that nothing listens on at any of the cluster's addresses (for tests: the drills run
# next to other work on the same machine).
cl_free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 10000))
    if [ -z "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]; then
      echo "$p"
      return 0
    fi
  done
  hf_die "no free port found"
}

cl_remember() { CL_PIDS+=("$1:$2"); }

# The pid recorded under NAME (the newest one).
cl_pid() {
  local entry pid=""
  for entry in "${CL_PIDS[@]}"; do
    [ "${entry%%:*}" = "$1" ] && pid="${entry##*:}"
  done
  echo "$pid"
}

cl_forget() {
  local entry kept=()
  for entry in "${CL_PIDS[@]}"; do
    [ "${entry%%:*}" = "$1" ] || kept+=("$entry")
  done
  CL_PIDS=("${kept[@]}")
}

# Resident memory of a process, KiB.
cl_rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# --- certificates -----------------------------------------------------------------------------

# A local CA and one server certificate (ECDSA P-256, what the gateways' TLS stack speaks) for
# localhost, 127.0.0.1, ::1, the aggregators' addresses and CL_LAN_ADDRESS, in DIR/pki, made by
# the aggregator's own self-made TLS (`aggregator certificate`: the one CA implementation): the CA
# is kept between runs (a phone that installed it keeps trusting the cluster), the server
# certificate is made again when it lacks a name or is about to expire (800 days at most: iOS
# refuses longer-lived server certificates even from a CA the user installed). nginx serves it
# (terminate) or every aggregator does (passthrough): clients pin the CA either way.
cl_pki() {
  local sans i
  sans="$(for i in $(seq 1 16); do printf '127.0.1.%s,' "$i"; done)${CL_LAN_ADDRESS}"
  mkdir -p "$CL_PKI"
  if ! "$CL_BIN/aggregator" --data-dir "$CL_PKI" --tls-san "${sans%,}" certificate >/dev/null 2>"$CL_PKI/certificate.log"; then
    if grep -q 'made by holdfast' "$CL_PKI/certificate.log"; then
      # A CA from before (scripts made it with openssl): the aggregator cannot sign with it, so
      # it is put aside and a new one made (phones that installed the old one must install this).
      local old
      old="$CL_PKI/old-$(date +%Y%m%d%H%M%S)"
      mkdir -p "$old" && mv "$CL_PKI"/ca.pem "$CL_PKI"/ca.key "$CL_PKI"/server.pem "$CL_PKI"/server.key "$old"/ 2>/dev/null
      cl_log "the cluster's CA was made by an older version; a new one is made (the old one is in $old)"
      "$CL_BIN/aggregator" --data-dir "$CL_PKI" --tls-san "${sans%,}" certificate >/dev/null 2>"$CL_PKI/certificate.log" ||
        hf_die "the cluster's certificates could not be made in $CL_PKI: $(cat "$CL_PKI/certificate.log")"
    else
      hf_die "the cluster's certificates could not be made in $CL_PKI: $(cat "$CL_PKI/certificate.log")"
    fi
  fi
}

# --- PostgreSQL (private instance) -------------------------------------------------------------

# The newest installed PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/V/bin).
cl_pg_bindir() {
  local v
  v="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
    awk -F/ '{print $5}' | sort -n | tail -1)"
  [ -n "$v" ] || return 1
  echo "/usr/lib/postgresql/$v/bin"
}

# Runs a PostgreSQL server command as the user that owns the data: root cannot run postgres, so
# as root that is the postgres account (the package creates it), else the invoking user.
cl_pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

CL_PG_HOST=127.0.1.200

# Starts the private PostgreSQL in DIR/postgres (made with initdb the first time), and creates
# database `holdfast`. Sets CL_PG_URL (the server) and CL_DB_URL (the cluster's database).
cl_pg_start() {
  local bin data pw
  bin="$(cl_pg_bindir)" || hf_die "PostgreSQL is not installed (scripts/install-deps.sh installs it); or use --store sqlite"
  data="$CL_DIR/postgres"
  CL_PG_DATA="$data"
  CL_PG_BIN="$bin"
  if [ ! -s "$data/PG_VERSION" ]; then
    cl_log "initdb: a private PostgreSQL in $data"
    mkdir -p "$data"
    head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$CL_DIR/postgres.password"
    chmod 600 "$CL_DIR/postgres.password"
    if [ "$(id -u)" -eq 0 ]; then
      # The postgres account must reach its folder: traverse (not list) the parents.
      chmod 711 "$CL_DIR"
      chown postgres: "$data"
      runuser -u postgres -- test -x "$data" ||
        hf_die "the postgres account cannot reach $data: make its parent folders traversable (chmod o+x)"
      install -m 600 -o postgres "$CL_DIR/postgres.password" "$data.pwfile"
    else
      install -m 600 "$CL_DIR/postgres.password" "$data.pwfile"
    fi
    cl_pg_as_owner "$bin/initdb" -D "$data" -U holdfast --pwfile="$data.pwfile" \
      --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$CL_DIR/postgres-initdb.log" 2>&1 ||
      { cat "$CL_DIR/postgres-initdb.log" >&2; hf_die "initdb failed"; }
    rm -f "$data.pwfile"
  fi
  pw="$(cat "$CL_DIR/postgres.password")"
  CL_PG_URL="postgres://holdfast:$pw@$CL_PG_HOST:$CL_PORT"
  CL_DB_URL="$CL_PG_URL/holdfast"
  cl_pg_ctl start
  if [ "$(PGPASSWORD="$pw" psql -X -h "$CL_PG_HOST" -p "$CL_PORT" -U holdfast -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'holdfast'")" != 1 ]; then
    PGPASSWORD="$pw" psql -X -q -h "$CL_PG_HOST" -p "$CL_PORT" -U holdfast -d postgres \
      -c "CREATE DATABASE holdfast" || hf_die "cannot create database holdfast"
  fi
}

# cl_pg_ctl start|stop|restart: the private server. Stop is "fast": sessions are cut at once, as
# when a database fails over (the aggregators' flushes fail and are retried).
cl_pg_ctl() {
  # Its socket and log, in a folder the server's account can write to.
  local run="$CL_DIR/postgres-run"
  mkdir -p "$run"
  [ "$(id -u)" -ne 0 ] || chown postgres: "$run"
  case "$1" in
    start)
      cl_pg_as_owner "$CL_PG_BIN/pg_ctl" -D "$CL_PG_DATA" -l "$run/postgres.log" -w -t 60 \
        -o "-c listen_addresses=$CL_PG_HOST -p $CL_PORT -k $run" start >/dev/null ||
        { tail -n 20 "$run/postgres.log" >&2; hf_die "PostgreSQL did not start"; }
      CL_PG_STARTED=1
      ;;
    stop)
      cl_pg_as_owner "$CL_PG_BIN/pg_ctl" -D "$CL_PG_DATA" -m fast -w -t 60 stop >/dev/null
      CL_PG_STARTED=0
      ;;
    *) hf_die "cl_pg_ctl: $1?" ;;
  esac
}

# --- the store --------------------------------------------------------------------------------

# Starts the store and sets CL_DB_URL. Two or more aggregators may share the SQLite file: SQLite
# in WAL mode locks between processes on one machine (not over a network filesystem), every
# flush is one IMMEDIATE transaction, and the writes are idempotent and monotonic, so they
# interleave safely; they do serialise, which is fine for a local cluster.
cl_store_start() {
  case "$CL_STORE" in
    postgres) cl_pg_start ;;
    sqlite)
      mkdir -p "$CL_DIR/store"
      CL_DB_URL="sqlite://$CL_DIR/store/holdfast.db"
      ;;
  esac
  # Migrations once, before the aggregators race for them; the gateways of this cluster.
  cl_provision_gateways "${CL_GATEWAYS:-2}"
  # scripts/fault-checks.sh breaks the database here, after the migrations, on purpose.
  hf_inject_fault "$CL_DB_URL"
}

# A database URL for a client other than the aggregators (mobile-sim's verification).
cl_db_url() { echo "$CL_DB_URL"; }

# Makes sure gateways gw-1..gw-N are provisioned; their `NAME HEXSECRET` lines go to
# DIR/gateways.txt (kept with the database).
cl_provision_gateways() {
  local n="$1" have=0 names=() i
  local file="$CL_DIR/gateways-$CL_STORE.txt"
  [ -f "$file" ] && have="$(grep -c . "$file" || true)"
  # A fresh database (a new private Postgres) does not know gateways provisioned before.
  if [ "$have" -gt 0 ] && ! "$CL_BIN/aggregator" --data-dir "$CL_DIR/admin" --database-url "$CL_DB_URL" \
    gateway list 2>/dev/null | grep -q "	gw-1	"; then
    have=0
    : >"$file"
  fi
  for i in $(seq $((have + 1)) "$n"); do names+=("gw-$i"); done
  if [ "${#names[@]}" -gt 0 ]; then
    RUST_LOG=warn "$CL_BIN/aggregator" --data-dir "$CL_DIR/admin" --database-url "$CL_DB_URL" \
      gateway add "${names[@]}" >>"$file" || hf_die "cannot provision gateways"
  fi
  CL_GATEWAYS_FILE="$file"
}

# --- aggregators --------------------------------------------------------------------------------

cl_aggregator_addr() { echo "127.0.1.$1:$CL_PORT"; }

# The scheme and curl options to reach aggregator i directly (metrics, probes).
cl_aggregator_url() {
  if [ "$CL_TLS" = passthrough ]; then echo "https://$(cl_aggregator_addr "$1")"; else echo "http://$(cl_aggregator_addr "$1")"; fi
}

cl_curl() { curl -fsS --max-time 5 --cacert "$CL_PKI/ca.pem" "$@"; }

# cl_aggregator_start I [EXTRA ARGS...]: aggregator I, waits until it listens.
cl_aggregator_start() {
  local i="$1" tls=()
  shift
  if [ "$CL_TLS" = passthrough ]; then
    tls=(--tls-cert "$CL_PKI/server.pem" --tls-key "$CL_PKI/server.key")
  else
    tls=(--plain)
  fi
  local out="$CL_DIR/aggregator-$i.out" log="$CL_DIR/aggregator-$i.log"
  : >"$out"
  NO_COLOR=1 RUST_LOG="${CL_AGGREGATOR_LOG:-info}" setsid "$CL_BIN/aggregator" --data-dir "$CL_DIR/aggregator-$i" \
    --listen "$(cl_aggregator_addr "$i")" --database-url "$CL_DB_URL" "${tls[@]}" \
    --ca-cert "$CL_PKI/ca.pem" --dashboard-token "$CL_DASHBOARD_TOKEN" --device-key "$CL_PKI/device-token.key" "$@" \
    >"$out" 2>>"$log" </dev/null &
  local pid=$!
  cl_remember "aggregator-$i" "$pid"
  for _ in $(seq 1 150); do
    grep -q '^listening on' "$out" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log" >&2; hf_die "aggregator $i exited at start"; }
    sleep 0.2
  done
  hf_die "aggregator $i did not start listening (see $log)"
}

# cl_aggregator_signal I SIGNAL: sends SIGNAL to aggregator I (the one this script started).
cl_aggregator_signal() {
  local pid
  pid="$(cl_pid "aggregator-$1")"
  [ -n "$pid" ] || hf_die "no aggregator $1 was started"
  kill "-$2" "$pid"
  if [ "$2" = KILL ] || [ "$2" = 9 ]; then
    wait "$pid" 2>/dev/null || true
    cl_forget "aggregator-$1"
  fi
}

# The value of an unlabelled metric of aggregator I, as a whole number. Fails (prints nothing,
# status 1) when the aggregator does not answer or has no such metric: a probe that errs must
# never read as 0.
cl_metric() {
  local body value
  body="$(cl_curl "$(cl_aggregator_url "$1")/metrics")" || { cl_log "metrics of aggregator $1: no answer"; return 1; }
  value="$(awk -v m="$2" '$1 == m {printf "%d", $2; found = 1} END {if (!found) exit 1}' <<<"$body")" ||
    { cl_log "metrics of aggregator $1: no metric $2"; return 1; }
  echo "$value"
}

# --- nginx --------------------------------------------------------------------------------------

# cl_render_nginx TEMPLATE OUT PREFIX: fills in deploy/nginx/*.conf.in for this cluster.
cl_render_nginx() {
  local template="$1" out="$2" prefix="$3" nofile conns aggs="" i
  nofile="$(ulimit -Hn)"
  [ "$nofile" = unlimited ] && nofile=1048576
  # Leave room for logs and listeners; every proxied connection needs two.
  conns=$((nofile - 256))
  for i in $(seq 1 "$CL_AGGREGATORS"); do aggs="$aggs $(cl_aggregator_addr "$i")"; done
  # LAN mode: each listen line again for the LAN address (not 0.0.0.0, which would collide with
  # the aggregators on 127.0.1.i at the same port).
  local lan_listen=""
  [ -z "$CL_LAN_ADDRESS" ] || lan_listen="$CL_LAN_ADDRESS:$CL_PORT"
  awk -v aggs="$aggs" -v prefix="$prefix" -v listen="$CL_FRONT" -v lan="$lan_listen" -v cert="$CL_PKI/server.pem" \
    -v key="$CL_PKI/server.key" -v nofile="$nofile" -v conns="$conns" \
    -v workers="${CL_NGINX_WORKERS:-1}" -v modules="${CL_NGINX_MODULES:-/usr/lib/nginx/modules}" '
    function fill(s) {
      gsub(/@PREFIX@/, prefix, s); gsub(/@LISTEN@/, listen, s); gsub(/@SERVER_NAME@/, "localhost", s)
      gsub(/@CERT@/, cert, s); gsub(/@KEY@/, key, s); gsub(/@WORKER_RLIMIT_NOFILE@/, nofile, s)
      gsub(/@WORKER_CONNECTIONS@/, conns, s); gsub(/@WORKER_PROCESSES@/, workers, s)
      gsub(/@MODULES@/, modules, s)
      return s
    }
    /^[[:space:]]*listen @LISTEN@/ && lan != "" {
      line = $0; gsub(/@LISTEN@/, lan, line); print fill(line)
    }
    /@AGGREGATOR@/ {
      n = split(aggs, list, " ")
      for (i = 1; i <= n; i++) { line = $0; gsub(/@AGGREGATOR@/, list[i], line); print fill(line) }
      next
    }
    { print fill($0) }' "$template" >"$out"
  local left
  left="$(grep -v '^[[:space:]]*#' "$out" | grep -o '@[A-Z_]*@' | sort -u | tr '\n' ' ' || true)"
  [ -z "$left" ] || hf_die "unfilled placeholders in $out: $left"
}

# Starts nginx as the invoking user with its own prefix in DIR/nginx (not the system service),
# waits until /healthz answers through it.
cl_nginx_start() {
  local prefix="$CL_DIR/nginx" template
  mkdir -p "$prefix/logs" "$prefix/tmp"
  if [ "$CL_TLS" = passthrough ]; then
    template="$HOLDFAST_ROOT/deploy/nginx/holdfast-passthrough.conf.in"
  else
    template="$HOLDFAST_ROOT/deploy/nginx/holdfast-tls.conf.in"
  fi
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] ||
    hf_die "nginx is not installed: run scripts/install-deps.sh"
  local nginx_bin
  nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
  cl_render_nginx "$template" "$prefix/nginx.conf" "$prefix"
  "$nginx_bin" -t -q -p "$prefix" -e "$prefix/logs/error.log" -c "$prefix/nginx.conf" ||
    hf_die "nginx -t failed for $prefix/nginx.conf"
  setsid "$nginx_bin" -p "$prefix" -e "$prefix/logs/error.log" -c "$prefix/nginx.conf" </dev/null \
    >>"$prefix/logs/stdout.log" 2>&1 &
  cl_remember nginx $!
  for _ in $(seq 1 100); do
    cl_curl "https://localhost:$CL_PORT/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -n 20 "$prefix/logs/error.log" >&2
  hf_die "nginx does not answer on https://localhost:$CL_PORT/healthz"
}

# --- gateways and phones ------------------------------------------------------------------------

# cl_load_args DURATION PREFIX: sets CL_LOAD to mobile-sim's load and verification flags: every
# phone sends a byte every CL_MIN_INTERVAL..CL_MAX_INTERVAL for DURATION, then its bytes are
# checked against the database. --json, or text with CL_TEXT=1.
cl_load_args() {
  CL_LOAD=(--duration "$1" --min-interval "$CL_MIN_INTERVAL" --max-interval "$CL_MAX_INTERVAL"
    --device-prefix "$2" --verify --database-url "$CL_DB_URL" --quiet)
  [ "${CL_TEXT:-0}" = 1 ] || CL_LOAD+=(--json)
}

# cl_gateway_start I DURATION PREFIX [EXTRA MOBILE-SIM ARGS...]: starts gateway I (gw-I) with its
# CL_SESSIONS phones, each sending a byte every CL_MIN_INTERVAL..CL_MAX_INTERVAL for DURATION,
# then closing; mobile-sim verifies every phone's bytes against the database at the end. The
# report (--json, or text with CL_TEXT=1) goes to DIR/gateway-I.report; wait with cl_wait.
#
# This is the one place that knows what "a gateway" is. CL_GATEWAY=virtual (today): mobile-sim's
# virtual gateway, the trunk crate's real gateway state machine with its phones inside, on real
# TLS trunks through nginx. CL_GATEWAY=host: the host gateway of firmware/host (binary `gateway`,
# the firmware's core on the kernel's TCP), and mobile-sim phones over ws:// to it.
cl_gateway_start() {
  local i="$1" duration="$2" prefix="$3"
  shift 3
  local line name secret report="$CL_DIR/gateway-$i.report"
  line="$(sed -n "${i}p" "$CL_GATEWAYS_FILE")"
  name="${line%% *}"
  secret="${line##* }"
  if [ -z "$name" ] || [ "$name" = "$line" ]; then hf_die "gateway $i is not provisioned in $CL_GATEWAYS_FILE"; fi
  cl_load_args "$duration" "$prefix"
  case "$CL_GATEWAY" in
    virtual)
      printf '%s %s\n' "$name" "$secret" >"$CL_DIR/gateway-$i.txt"
      # CL_TRUNK_URL: another way to the aggregators for this gateway (the drills' relay).
      setsid "$CL_BIN/mobile-sim" gateways --target "${CL_TRUNK_URL:-wss://localhost:$CL_PORT/trunk}" --ca "$CL_PKI/ca.pem" \
        --gateways-file "$CL_DIR/gateway-$i.txt" --sessions-per-gateway "$CL_SESSIONS" --links "$CL_LINKS" \
        "${CL_LOAD[@]}" "$@" >"$report" 2>"$CL_DIR/gateway-$i.log" </dev/null &
      cl_remember "gateway-$i" $!
      ;;
    host)
      cl_host_gateway_spawn "$i"
      # Phones of a real gateway are device ids of their own; "$prefix$name-" keeps them apart.
      cl_load_args "$duration" "$prefix$name-"
      setsid "$CL_BIN/mobile-sim" phones --target "ws://127.0.2.$i:$CL_PORT/ws" --phones "$CL_SESSIONS" --rate 500 \
        --device-key "$CL_PKI/device-token.key" "${CL_LOAD[@]}" "$@" >"$report" 2>"$CL_DIR/gateway-$i-phones.log" </dev/null &
      cl_remember "gateway-$i-phones" $!
      ;;
    *) hf_die "CL_GATEWAY must be virtual or host, not '$CL_GATEWAY'" ;;
  esac
}

# cl_host_gateway_spawn I: starts host gateway I (firmware/host's `gateway`, provisioned as
# line I of CL_GATEWAYS_FILE) on 127.0.2.I:CL_PORT, its trunks through nginx; waits until it
# listens. Also how the drills restart one.
cl_host_gateway_spawn() {
  local i="$1" line name secret bin="${CL_GATEWAY_BIN:-$CL_BIN/gateway}" listen="127.0.2.$1:$CL_PORT"
  line="$(sed -n "${i}p" "$CL_GATEWAYS_FILE")"
  name="${line%% *}"
  secret="${line##* }"
  [ -x "$bin" ] || hf_die "no host gateway binary at $bin (cargo build --release -p gateway)"
  # Phones prove their device at the gateway too: it checks their tokens with the public key.
  local device_public_key
  device_public_key="$("$CL_BIN/aggregator" --device-key "$CL_PKI/device-token.key" device public-key)" ||
    hf_die "aggregator device public-key failed"
  RUST_LOG="${CL_GATEWAY_LOG:-info}" NO_COLOR=1 setsid "$bin" --listen "$listen" --aggregator "127.0.0.1:$CL_PORT" \
    --server-name localhost --ca "$CL_PKI/ca.pem" --id "$name" --secret "$secret" --links "$CL_LINKS" \
    --capacity "$CL_SESSIONS" --device-public-key "$device_public_key" --status-interval-s 1 >>"$CL_DIR/gateway-$i.out" 2>>"$CL_DIR/gateway-$i.log" </dev/null &
  local pid=$!
  cl_remember "gateway-$i" "$pid"
  for _ in $(seq 1 100); do
    [ -n "$(ss -Hltn "src = $listen" 2>/dev/null)" ] && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$CL_DIR/gateway-$i.log" >&2; hf_die "host gateway $i exited at start"; }
    sleep 0.1
  done
  tail -n 20 "$CL_DIR/gateway-$i.log" >&2
  hf_die "host gateway $i does not listen on $listen after 10 s (see $CL_DIR/gateway-$i.log)"
}

# The name (for cl_wait) of the process whose exit ends gateway I's load and which writes its
# report: the virtual gateway itself, or the phones of a host gateway.
cl_gateway_load() {
  if [ "$CL_GATEWAY" = host ]; then echo "gateway-$1-phones"; else echo "gateway-$1"; fi
}

# cl_phones_start N DURATION PREFIX [EXTRA MOBILE-SIM ARGS...]: N phones straight to the
# aggregators through nginx (wss://.../ws), for phones with no gateway nearby. Report in
# DIR/phones.report.
cl_phones_start() {
  local n="$1"
  cl_load_args "$2" "$3"
  shift 3
  setsid "$CL_BIN/mobile-sim" phones --target "wss://localhost:$CL_PORT/ws" --ca "$CL_PKI/ca.pem" \
    --device-key "$CL_PKI/device-token.key" --phones "$n" --rate 200 "${CL_LOAD[@]}" "$@" >"$CL_DIR/phones.report" 2>"$CL_DIR/phones.log" </dev/null &
  cl_remember phones $!
}

# cl_wait NAME: waits for a process started here to end; its exit status.
cl_wait() {
  local pid status=0
  pid="$(cl_pid "$1")"
  [ -n "$pid" ] || return 0
  wait "$pid" || status=$?
  cl_forget "$1"
  return "$status"
}

# --- the whole cluster --------------------------------------------------------------------------

# The store, CL_AGGREGATORS aggregators and nginx, ready for load.
cl_start_servers() {
  if [ ! -x "$CL_BIN/aggregator" ] || [ ! -x "$CL_BIN/mobile-sim" ]; then
    hf_die "build first: cargo build --release -p aggregator -p mobile-sim"
  fi
  cl_pki
  cl_store_start
  local i
  for i in $(seq 1 "$CL_AGGREGATORS"); do cl_aggregator_start "$i"; done
  cl_nginx_start
}

# Stops everything started here, newest first (load, then nginx, then aggregators, which flush
# what they hold), and the private PostgreSQL last.
cl_stop_all() {
  local n entry pid
  for ((n = ${#CL_PIDS[@]} - 1; n >= 0; n--)); do
    entry="${CL_PIDS[$n]}"
    pid="${entry##*:}"
    kill -TERM "$pid" 2>/dev/null || true
    # Each gets up to 10 s to finish (an aggregator's graceful shutdown takes about 4 s).
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  CL_PIDS=()
  if [ "$CL_PG_STARTED" = 1 ]; then cl_pg_ctl stop || true; fi
}

# What to look at, for people.
cl_print_where() {
  local i db
  if [ "$CL_STORE" = postgres ]; then
    db="$(printf '%s' "$CL_DB_URL" | sed 's#://\([^:]*\):[^@]*@#://\1:***@#')  (password in $CL_DIR/postgres.password; log $CL_DIR/postgres-run/postgres.log)"
  else
    db="SQLite $CL_DIR/store/holdfast.db, shared by the aggregators (WAL; one machine)"
  fi
  local host=localhost
  [ -z "$CL_LAN_ADDRESS" ] || host="$CL_LAN_ADDRESS"
  # The aggregators require device tokens: the phone page's link carries a demo device's (30 days).
  local demo page
  demo="$("$CL_BIN/aggregator" --device-key "$CL_PKI/device-token.key" device token --valid-for-days 30 \
    "web-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')" 2>/dev/null)" || hf_die "cannot issue a device token"
  page="https://$host:$CL_PORT/?device=${demo%% *}&token=${demo#* }"
  cat <<EOF
  phone page              $page   (a demo device; more: aggregator --device-key $CL_PKI/device-token.key device token ID)
  dashboard               https://$host:$CL_PORT/dashboard?token=$CL_DASHBOARD_TOKEN   (the figures of the aggregator nginx picks; each one's below)
  metrics                 per aggregator, below
  front (nginx, TLS 1.3)  https://localhost:$CL_PORT   phones: wss://localhost:$CL_PORT/ws?device=ID   gateways: wss://localhost:$CL_PORT/trunk
  CA to pin               $CL_PKI/ca.pem   (curl --cacert $CL_PKI/ca.pem ...; phones: https://$host:$CL_PORT/ca)
  device totals           https://localhost:$CL_PORT/api/devices?prefix=PREFIX&token=$CL_DASHBOARD_TOKEN
  database                $db
  nginx                   $CL_DIR/nginx/nginx.conf, logs in $CL_DIR/nginx/logs/
EOF
  for i in $(seq 1 "$CL_AGGREGATORS"); do
    printf '  aggregator %-12s %s/metrics   %s/dashboard?token=%s   log %s\n' "$i" "$(cl_aggregator_url "$i")" \
      "$(cl_aggregator_url "$i")" "$CL_DASHBOARD_TOKEN" "$CL_DIR/aggregator-$i.log"
  done
  if [ -n "$CL_LAN_ADDRESS" ]; then
    printf '\nOn the phone (same Wi-Fi; nginx listens on %s too): install the CA\n' "$CL_LAN_ADDRESS"
    printf 'from https://%s:%s/ca (accept the certificate warning that one time; check that the phone\n' "$CL_LAN_ADDRESS" "$CL_PORT"
    printf 'shows SHA-256 %s),\nthen open the phone page:\n' "$(openssl x509 -noout -fingerprint -sha256 -in "$CL_PKI/ca.pem" | cut -d= -f2)"
    "$CL_BIN/aggregator" qr "$page" || true
    echo "  $page"
  fi
}
