#!/usr/bin/env bash
# Starts Debian's PostgreSQL cluster (no systemd needed: pg_ctlcluster) and makes
# sure role and database `holdfast` (password `holdfast`) exist. Idempotent.
# Prints one line on stdout, for the tests:
#   DATABASE_URL=postgres://holdfast:holdfast@127.0.0.1:5432/holdfast
# Everything else goes to stderr. Runs as root, or through sudo when not root.
# The server comes from scripts/install-deps.sh (package postgresql).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

db=holdfast
user=holdfast
password=holdfast

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && sudo -u postgres -- "$@")
  fi
}

command -v pg_lsclusters >/dev/null 2>&1 ||
  hf_die "PostgreSQL is not installed: run scripts/install-deps.sh (package postgresql)"

# The newest installed server version, and its cluster (Debian's default: main).
version="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
  awk -F/ '{print $5}' | sort -n | tail -1)"
[ -n "$version" ] || hf_die "no PostgreSQL server binary under /usr/lib/postgresql: install package postgresql"
cluster="$(pg_lsclusters -h | awk -v v="$version" '$1 == v {print $2; exit}')"
if [ -z "$cluster" ]; then
  cluster=main
  hf_log "creating PostgreSQL cluster $version/$cluster"
  hf_as_root pg_createcluster "$version" "$cluster" >&2
fi

# The socket folder lives on /run, which a container may have started empty.
[ -d /var/run/postgresql ] || hf_as_root install -d -m 2775 -o postgres -g postgres /var/run/postgresql

status="$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c {print $4}')"
port="$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c {print $3}')"
if [ "$status" != online ]; then
  hf_log "starting PostgreSQL $version/$cluster on port $port"
  if ! hf_as_root pg_ctlcluster "$version" "$cluster" start >&2; then
    # A server killed with its machine leaves a postmaster.pid whose process
    # id may now belong to another process: remove it when no postgres runs.
    pidfile="/var/lib/postgresql/$version/$cluster/postmaster.pid"
    if [ -f "$pidfile" ] && ! pgrep -u postgres -x postgres >/dev/null 2>&1; then
      hf_warn "removing stale $pidfile and retrying"
      hf_as_root rm -f "$pidfile"
      hf_as_root pg_ctlcluster "$version" "$cluster" start >&2
    else
      tail -n 20 "/var/log/postgresql/postgresql-$version-$cluster.log" >&2 || true
      hf_die "PostgreSQL $version/$cluster did not start"
    fi
  fi
else
  hf_log "PostgreSQL $version/$cluster already running on port $port"
fi

for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p "$port" && break
  sleep 0.5
done
pg_isready -q -h 127.0.0.1 -p "$port" || hf_die "PostgreSQL does not answer on 127.0.0.1:$port"

psql_admin() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"; }
# The way the tests connect: TCP on loopback with the password.
login_ok() {
  PGPASSWORD="$password" psql -X -q -h 127.0.0.1 -p "$port" -U "$user" -d "$db" \
    -tAc 'SELECT 1' >/dev/null 2>&1
}

if ! login_ok; then
  if [ "$(psql_admin -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" = 1 ]; then
    hf_log "resetting the password of role $user"
    psql_admin -c "ALTER ROLE $user LOGIN PASSWORD '$password'" >&2
  else
    hf_log "creating role $user"
    # CREATEDB: tests may make throw-away databases of their own
    psql_admin -c "CREATE ROLE $user LOGIN CREATEDB PASSWORD '$password'" >&2
  fi
  if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
    hf_log "creating database $db"
    psql_admin -c "CREATE DATABASE $db OWNER $user" >&2
  fi
  login_ok || hf_die "cannot log in as $user over TCP at 127.0.0.1:$port (pg_hba.conf?)"
fi

url="postgres://$user:$password@127.0.0.1:$port/$db"
hf_log "PostgreSQL ready: $url"
echo "DATABASE_URL=$url"
