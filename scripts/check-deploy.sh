#!/usr/bin/env bash
# Checks the deployment files in deploy/ offline, without a cluster or a system service:
#   k8s       every manifest against the Kubernetes schemas (kubernetes-validate --strict, which
#             bundles them; versions 1.30 and its newest), and that names and labels that refer
#             to each other match; optional/ (custom resources) only parses
#   nginx     both templates rendered as the local cluster does, then `nginx -t`
#   systemd   every unit with `systemd-analyze verify` (stand-in binaries for the ones not built)
#   sysctl    every key exists on this kernel, with as many fields as the kernel's value
#   limits    every line of deploy/limits is `account soft|hard nofile N`
#   postgres  deploy/postgres/holdfast.conf included by a throwaway cluster's postgresql.conf:
#             `postgres -C` reads every setting back (an unknown name or a bad value fails), and
#             synchronous_commit and fsync are on
#
#   scripts/check-deploy.sh        (scripts/test.sh runs it; scripts/install-deps.sh installs
#                                   kubernetes-validate in $HOME/.cache/holdfast/k8s-validate)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$HOLDFAST_ROOT"

passed=0
failed=0
check() {
  local name="$1"
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok    $name"
  else
    failed=$((failed + 1))
    echo "FAIL  $name"
  fi
}
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- k8s ----------------------------------------------------------------------------------------
venv="$HOME/.cache/holdfast/k8s-validate"
k8s_schemas() {
  local v out
  [ -x "$venv/bin/kubernetes-validate" ] ||
    { echo "kubernetes-validate is missing: run scripts/install-deps.sh" >&2; return 1; }
  for v in 1.30.0 ""; do
    # --strict: unknown fields are errors (a misspelt key would otherwise be ignored silently).
    out="$("$venv/bin/kubernetes-validate" --strict ${v:+-k "$v"} deploy/k8s/*.yaml 2>&1)" ||
      { echo "$out" >&2; return 1; }
    # A warning is a kind without a schema: not expected outside optional/.
    if grep -v '^INFO' <<<"$out" | grep -q .; then echo "$out" >&2; return 1; fi
  done
  echo "      $(grep -c '^INFO' <<<"$out") resources valid against Kubernetes 1.30 and $("$venv/bin/kubernetes-validate" --version)"
}
k8s_references() {
  "$venv/bin/python" - deploy/k8s <<'PY'
import glob, sys, yaml
docs = []
for f in sorted(glob.glob(sys.argv[1] + "/*.yaml")):
    docs += [(f, d) for d in yaml.safe_load_all(open(f)) if d]
for f in glob.glob(sys.argv[1] + "/optional/*.yaml"):
    list(yaml.safe_load_all(open(f)))  # parses
by = {(d["kind"], d["metadata"]["name"]): d for _, d in docs}
errors = []
ns = {d["metadata"].get("namespace") for _, d in docs if d["kind"] != "Namespace"}
if ns != {"holdfast"}:
    errors.append("namespaces: %s" % ns)
dep = by[("Deployment", "holdfast-aggregator")]
labels = dep["spec"]["template"]["metadata"]["labels"]
def selects(sel):
    return all(labels.get(k) == v for k, v in sel.items())
if not selects(dep["spec"]["selector"]["matchLabels"]): errors.append("deployment selector")
if not selects(by[("Service", "holdfast-aggregator")]["spec"]["selector"]): errors.append("service selector")
if not selects(by[("PodDisruptionBudget", "holdfast-aggregator")]["spec"]["selector"]["matchLabels"]): errors.append("pdb selector")
if not selects(by[("NetworkPolicy", "holdfast-aggregator")]["spec"]["podSelector"]["matchLabels"]): errors.append("networkpolicy selector")
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
for ref in c["envFrom"]:
    kind, name = ("ConfigMap", ref["configMapRef"]["name"]) if "configMapRef" in ref else ("Secret", ref["secretRef"]["name"])
    if (kind, name) not in by: errors.append("envFrom %s %s missing" % (kind, name))
port_names = {p["name"] for p in c["ports"]}
for t in by[("Service", "holdfast-aggregator")]["spec"]["ports"]:
    if t["targetPort"] not in port_names: errors.append("service targetPort %s" % t["targetPort"])
cm = by[("ConfigMap", "holdfast-aggregator")]["data"]
mounts = {m["mountPath"] for m in c["volumeMounts"]}
for key in ("HOLDFAST_TLS_CERT", "HOLDFAST_TLS_KEY", "HOLDFAST_DATA_DIR"):
    if not any(cm[key].startswith(m) for m in mounts): errors.append("%s not on a mounted volume" % key)
listen_port = int(cm["HOLDFAST_LISTEN"].rsplit(":", 1)[1])
if listen_port != c["ports"][0]["containerPort"]: errors.append("HOLDFAST_LISTEN port != containerPort")
grace_ms = int(cm["HOLDFAST_SHUTDOWN_GRACE_MS"])
if grace_ms / 1000 + 5 + 5 > pod["terminationGracePeriodSeconds"]:
    errors.append("shutdown grace + preStop + flush exceed terminationGracePeriodSeconds")
for e in errors: print("      " + e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
}
check "k8s: schemas (kubernetes-validate --strict)" k8s_schemas
check "k8s: names, selectors, ports and mounts agree" k8s_references

# --- nginx --------------------------------------------------------------------------------------
# The local cluster's configuration (`lab nginx-config`: the same rendering `lab cluster` and the
# drills run), for 3 aggregators on port 8443.
hf_setup_path
cargo build --release -q -p lab -p aggregator
nginx_test() {
  local variant="$1" out conf prefix
  conf="$("${CARGO_TARGET_DIR:-$HOME/.cache/holdfast/target}/release/lab" nginx-config --tls "$variant" \
    --aggregators 3 --port 8443 --dir "$work/nginx-$variant")" || return 1
  prefix="$(dirname "$conf")"
  out="$(nginx -t -p "$prefix" -e "$prefix/logs/error.log" -c "$conf" 2>&1)" ||
    { echo "$out" >&2; return 1; }
  # Three aggregators in, three upstream servers out.
  [ "$(grep -c 'server 127.0.1.[0-9]*:8443 max_fails' "$conf")" -eq 3 ] || return 1
  # Terminating TLS, nginx sends the gateways' records: at most 4 KiB of plaintext each, the
  # trunk protocol's contract (docs/trunk-protocol.md, section 1).
  if [ "$variant" = terminate ] && ! grep -Eq '^\s*ssl_buffer_size 4k;' "$conf"; then
    echo "nginx.conf does not cap TLS records at 4 KiB (ssl_buffer_size 4k)" >&2
    return 1
  fi
}
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  PATH="$PATH:/usr/sbin"
  check "nginx: holdfast-tls.conf.in renders and passes nginx -t" nginx_test terminate
  check "nginx: holdfast-passthrough.conf.in renders and passes nginx -t" nginx_test passthrough
else
  check "nginx: installed (scripts/install-deps.sh)" false
fi

# --- systemd ------------------------------------------------------------------------------------
systemd_verify() {
  local unit="$1" dir="$work/systemd" out
  mkdir -p "$dir/bin"
  # The binaries the units name may not be installed here: stand-ins that exist.
  printf '#!/bin/sh\nexit 0\n' >"$dir/bin/stand-in"
  chmod +x "$dir/bin/stand-in"
  sed "s#/usr/local/bin/[a-z-]*#$dir/bin/stand-in#g" "$unit" >"$dir/$(basename "$unit")"
  out="$(systemd-analyze verify "$dir/$(basename "$unit")" 2>&1)" || { echo "$out" >&2; return 1; }
  # Warnings (an unknown key, a bad value) do not change the exit status: any output fails.
  if [ -n "$out" ]; then echo "$out" >&2; return 1; fi
}
if command -v systemd-analyze >/dev/null 2>&1; then
  for unit in deploy/systemd/*.service; do
    check "systemd: $(basename "$unit") (systemd-analyze verify)" systemd_verify "$unit"
  done
else
  echo "skip  systemd: systemd-analyze is not installed"
fi

# --- sysctl -------------------------------------------------------------------------------------
sysctl_keys() {
  local line key value optional file bad=0 n=0 have
  for file in deploy/sysctl/*.conf; do
    while IFS= read -r line; do
      case "$line" in '' | '#'* | ';'*) continue ;; esac
      key="${line%%=*}"
      value="${line#*=}"
      key="$(tr -d ' ' <<<"$key")"
      optional=0
      [ "${key#-}" != "$key" ] && optional=1 && key="${key#-}"
      n=$((n + 1))
      if [ ! -e "/proc/sys/${key//.//}" ]; then
        if [ "$optional" = 1 ]; then continue; fi
        echo "      $file: $key does not exist on this kernel" >&2
        bad=1
        continue
      fi
      have="$(wc -w <"/proc/sys/${key//.//}")"
      if [ "$(wc -w <<<"$value")" -ne "$have" ]; then
        echo "      $file: $key wants $have values, the file gives '$value'" >&2
        bad=1
      fi
    done <"$file"
  done
  echo "      $n settings"
  [ "$bad" = 0 ]
}
check "sysctl: every key exists, values have the kernel's shape" sysctl_keys

limits_lines() {
  awk '!/^[[:space:]]*(#|$)/ { if (NF != 4 || ($2 != "soft" && $2 != "hard") || $3 != "nofile" || $4 !~ /^[0-9]+$/) { print "      bad line: " $0 > "/dev/stderr"; bad = 1 } }
       END { exit bad }' deploy/limits/*.conf
}
check "limits: pam_limits lines" limits_lines

# --- postgres -------------------------------------------------------------------------------------
postgres_settings() {
  local v bin data keys key value as=()
  v="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
    awk -F/ '{print $5}' | sort -n | tail -1)"
  [ -n "$v" ] || { echo "      PostgreSQL is not installed (scripts/install-deps.sh)" >&2; return 1; }
  bin="/usr/lib/postgresql/$v/bin"
  data="$work/pg"
  mkdir -p "$data"
  cp deploy/postgres/holdfast.conf "$work/holdfast.conf"
  if [ "$(id -u)" -eq 0 ]; then
    # root cannot run postgres: its own account does, in a folder it can reach.
    chmod 755 "$work"
    chown postgres: "$data" "$work/holdfast.conf"
    as=(runuser -u postgres --)
  fi
  (cd / && "${as[@]}" "$bin/initdb" -D "$data" -A trust >/dev/null) || return 1
  echo "include '$work/holdfast.conf'" >>"$data/postgresql.conf"
  keys="$(awk -F= '!/^[[:space:]]*(#|$)/ {gsub(/[[:space:]]/, "", $1); print $1}' deploy/postgres/holdfast.conf)"
  for key in $keys; do
    value="$(cd / && "${as[@]}" "$bin/postgres" -D "$data" -C "$key" 2>&1)" ||
      { echo "      $key: $value" >&2; return 1; }
  done
  for key in synchronous_commit fsync; do
    value="$(cd / && "${as[@]}" "$bin/postgres" -D "$data" -C "$key")"
    [ "$value" = on ] || { echo "      $key is '$value': acknowledged bytes must be on disk" >&2; return 1; }
  done
  echo "      $(wc -w <<<"$keys") settings read back by PostgreSQL $v"
}
check "postgres: deploy/postgres/holdfast.conf is valid and keeps commits durable" postgres_settings

echo
echo "deploy checks: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
