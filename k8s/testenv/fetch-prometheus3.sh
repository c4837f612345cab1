#!/usr/bin/env bash
# Fetch Prometheus 3.x (with kubernetes_sd_configs) from Debian sid for the integration tests. Debian 12's prometheus
# (2.42) is built without Kubernetes service discovery; sid's statically linked Go binary runs on Debian 12 as is.
#
#   k8s/testenv/fetch-prometheus3.sh            # download and unpack if missing; prints the binary's path
#   k8s/testenv/fetch-prometheus3.sh --dry-run  # say what would be done, change nothing
#
# The package is unpacked (dpkg-deb -x, nothing is installed) into ${GAWM_CACHE_DIR:-~/.cache/gawm}/prometheus-3; the
# binary is <that>/usr/bin/prometheus. When it is already there, this only prints its path. One fetch at a time
# (a lock, <that>.lock); an interrupted fetch leaves only <that>.partial, replaced by the next. apt uses a separate,
# temporary state (its own sources list and package lists), so the system's apt sources are not touched. Needs apt-get,
# dpkg-deb and access to deb.debian.org; works as root or as any user.
set -euo pipefail

CACHE=${GAWM_CACHE_DIR:-$HOME/.cache/gawm}/prometheus-3
BIN=$CACHE/usr/bin/prometheus
MIRROR=${GAWM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DRY_RUN=0

for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "fetch-prometheus3: unknown argument $arg (use --dry-run)" >&2; exit 2 ;;
  esac
done

log() { echo "[fetch-prometheus3 $(date -u +%H:%M:%S)] $*" >&2; }
run() {
  log "+ $*"
  if [[ $DRY_RUN == 0 ]]; then "$@" 9>&-; fi
}

present() {
  log "present: $BIN ($("$BIN" --version 2>&1 | head -n1)); nothing to do"
  echo "$BIN"
  exit 0
}
if [[ -x $BIN ]]; then present; fi
# One fetch at a time: a second caller waits on the lock, then finds the binary.
if [[ $DRY_RUN == 0 ]]; then
  mkdir -p "$(dirname "$CACHE")"
  exec 9>>"$CACHE.lock"
  if ! flock -n 9; then
    log "another fetch holds $CACHE.lock: waiting for it to finish"
    flock 9
    if [[ -x $BIN ]]; then present; fi
  fi
fi
for tool in apt-get dpkg-deb dpkg; do
  command -v "$tool" >/dev/null || { echo "fetch-prometheus3: $tool not found (a Debian system is needed)" >&2; exit 1; }
done
log "fetching Prometheus 3 from Debian sid into $CACHE (dry run: $DRY_RUN)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gawm-prometheus3.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# apt's download sandbox user (_apt, when run as root) must be able to write here
chmod 755 "$WORK"
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/deb"
signed=""
[[ -r $KEYRING ]] && signed=" [signed-by=$KEYRING]"
echo "deb$signed $MIRROR sid main" > "$WORK/sid.list"
if [[ $(id -u) == 0 ]] && id _apt >/dev/null 2>&1; then
  chown -R _apt "$WORK/lists/partial" "$WORK/cache/archives/partial" "$WORK/deb"
fi
APT=(apt-get -q -o "Dir::State::Lists=$WORK/lists" -o "Dir::Etc::SourceList=$WORK/sid.list"
     -o "Dir::Etc::SourceParts=/dev/null" -o "Dir::Cache=$WORK/cache" -o "Dir::Cache::pkgcache="
     -o "Dir::Cache::srcpkgcache=" -o "APT::Architectures=$(dpkg --print-architecture)"
     -o "Acquire::Languages=none" -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false")

log "1. package lists of sid (separate apt state in $WORK)"
run "${APT[@]}" update
log "2. download the prometheus package"
if [[ $DRY_RUN == 0 ]]; then
  (cd "$WORK/deb" && log "+ ${APT[*]} download prometheus" && "${APT[@]}" download prometheus)
  deb=$(ls "$WORK"/deb/prometheus_*.deb)
else
  log "+ (cd $WORK/deb && ${APT[*]} download prometheus)"
  deb="$WORK/deb/prometheus_VERSION.deb"
fi
log "3. unpack $deb into $CACHE (nothing is installed)"
run mkdir -p "$(dirname "$CACHE")"
run rm -rf "$CACHE.partial"
run dpkg-deb -x "$deb" "$CACHE.partial"
run rm -rf "$CACHE"
run mv "$CACHE.partial" "$CACHE"
if [[ $DRY_RUN == 0 ]]; then
  "$BIN" --version >&2
  log "done: $BIN"
fi
echo "$BIN"
