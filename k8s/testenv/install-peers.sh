#!/usr/bin/env bash
# Install the peer OIP v2 model servers that the tests and `python -m gawm_lib.bench.peers` measure with
# `backend.kind: external`: KServe's Python model server and Seldon MLServer, each into a virtual environment of its own
# (their pins differ from gawm's and from each other's; gawm's .venv is never touched).
#
#   k8s/testenv/install-peers.sh            # install what is missing; prints one line per peer: NAME PYTHON
#   k8s/testenv/install-peers.sh --dry-run  # say what would be done, change nothing
#
# Venvs: ${GAWM_CACHE_DIR:-~/.cache/gawm}/peers/kserve-0.21.0 and .../mlserver-1.7.1, each with torch and torchvision at
# the versions gawm's own .venv has (pip takes them from the local wheel store that pip's config names, so only the
# peer's own packages come from PyPI). A venv is complete when it holds .gawm-ready (written last, with `pip freeze`);
# a half-built one is removed and built again. One install at a time (a lock, <peers>.lock). About 3.5 min per peer.
# GAWM_PEERS_PYTHON picks the interpreter (default: the one gawm's .venv was made from, else python3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${GAWM_CACHE_DIR:-$HOME/.cache/gawm}/peers
KSERVE_VERSION=0.21.0
MLSERVER_VERSION=1.7.1
DRY_RUN=0

for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "install-peers: unknown argument $arg (use --dry-run)" >&2; exit 2 ;;
  esac
done

log() { echo "[install-peers $(date -u +%H:%M:%S)] $*" >&2; }
run() {
  log "+ $*"
  if [[ $DRY_RUN == 0 ]]; then "$@" 9>&-; fi
}

PY=${GAWM_PEERS_PYTHON:-}
if [[ -z $PY ]]; then
  home=$(sed -n 's/^home *= *//p' "$ROOT/.venv/pyvenv.cfg" 2>/dev/null || true)
  ver=$(sed -n 's/^version *= *\([0-9]*\.[0-9]*\).*/\1/p' "$ROOT/.venv/pyvenv.cfg" 2>/dev/null || true)
  if [[ -n $home && -n $ver && -x $home/python$ver ]]; then PY=$home/python$ver; else PY=python3; fi
fi
# torch/torchvision: the versions in gawm's .venv (local label dropped), so every server runs the same torch
TORCH_PINS=$("$ROOT/.venv/bin/python" - <<'EOF' 2>/dev/null || echo "torch==2.14.1 torchvision==0.29.1"
import importlib.metadata as m
print(" ".join(f"{d}=={m.version(d).split('+')[0]}" for d in ("torch", "torchvision")))
EOF
)

# name version pip-requirements...
PEERS=(
  "kserve $KSERVE_VERSION kserve==$KSERVE_VERSION"
  "mlserver $MLSERVER_VERSION mlserver==$MLSERVER_VERSION"
)

all_present() {
  for p in "${PEERS[@]}"; do
    read -r name version _ <<<"$p"
    [[ -f $CACHE/$name-$version/.gawm-ready ]] || return 1
  done
}
report() {
  for p in "${PEERS[@]}"; do
    read -r name version _ <<<"$p"
    echo "$name $CACHE/$name-$version/bin/python"
  done
}
if all_present; then
  log "present: $(report | tr '\n' ' '); nothing to do"
  report
  exit 0
fi
if [[ $DRY_RUN == 0 ]]; then
  mkdir -p "$CACHE"
  exec 9>>"$CACHE.lock"
  if ! flock -n 9; then
    log "another install holds $CACHE.lock: waiting for it to finish"
    flock 9
    if all_present; then report; exit 0; fi
  fi
fi
log "interpreter $PY ($("$PY" --version 2>&1)); $TORCH_PINS from pip's configured sources"
for p in "${PEERS[@]}"; do
  read -r name version reqs <<<"$p"
  venv=$CACHE/$name-$version
  if [[ -f $venv/.gawm-ready ]]; then log "$name $version: present"; continue; fi
  start=$(date +%s)
  log "$name $version: building $venv"
  run rm -rf "$venv"
  run "$PY" -m venv "$venv"
  # shellcheck disable=SC2086
  run "$venv/bin/python" -m pip install -q --disable-pip-version-check $reqs $TORCH_PINS
  if [[ $DRY_RUN == 0 ]]; then
    "$venv/bin/python" -c "import $name, torch, torchvision" 9>&-
    "$venv/bin/python" -m pip freeze --disable-pip-version-check >"$venv/.gawm-ready.tmp" 9>&-
    mv "$venv/.gawm-ready.tmp" "$venv/.gawm-ready"
  fi
  log "$name $version: done in $(($(date +%s) - start)) s"
done
report
