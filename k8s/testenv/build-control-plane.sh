#!/usr/bin/env bash
# Build the Kubernetes 1.20.2 control-plane binaries (kube-apiserver, kube-controller-manager, kube-scheduler) used by
# the integration tests, from Debian bookworm's source package `kubernetes` (the only source of them reachable here).
#
#   k8s/testenv/build-control-plane.sh            # build if missing (about 7 min and 2.3 GB on 2 cores, once)
#   k8s/testenv/build-control-plane.sh --dry-run  # say what would be done, change nothing
#
# The binaries (243 MB) are cached outside the repository in $GAWM_K8S_CACHE/bin, by default
# ${GAWM_CACHE_DIR:-~/.cache/gawm}/kubernetes-1.20.2/bin; the build tree is removed afterwards. When the three binaries
# and etcd are there, this does nothing. As root it installs the Debian packages it needs (golang-go rsync jq
# etcd-server dpkg-dev make) and adds a deb-src entry for bookworm; otherwise it names what is missing.
set -euo pipefail

VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${GAWM_K8S_CACHE:-${GAWM_CACHE_DIR:-$HOME/.cache/gawm}/kubernetes-$VERSION}
BIN=$CACHE/bin
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler)
PACKAGES=(golang-go rsync jq etcd-server dpkg-dev make)
SRC_LIST=/etc/apt/sources.list.d/gawm-bookworm-src.sources
DRY_RUN=0

for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "build-control-plane: unknown argument $arg (use --dry-run)" >&2; exit 2 ;;
  esac
done

log() { echo "[build-control-plane $(date -u +%H:%M:%S)] $*" >&2; }
run() {
  log "+ $*"
  if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

have_all() {
  local name
  for name in "${BINARIES[@]}"; do [[ -x $BIN/$name ]] || return 1; done
}

if have_all && command -v etcd >/dev/null; then
  log "binaries present in $BIN and etcd installed: nothing to do"
  exit 0
fi
log "setting up the Kubernetes $VERSION control plane in $BIN (dry run: $DRY_RUN)"

# 1. Debian packages: the Go toolchain, rsync and jq for the Kubernetes make files, etcd for the tests, dpkg-source.
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
need_src=1
if have_all; then  # only etcd is missing
  missing=(); dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q "install ok installed" || missing=(etcd-server)
  need_src=0
elif grep -rqsE '^(Types:.*deb-src|deb-src ).*' /etc/apt/sources.list /etc/apt/sources.list.d/ \
   && apt-cache showsrc kubernetes 2>/dev/null | grep -q "^Version: $DEB_VERSION"; then
  need_src=0
fi
if (( ${#missing[@]} )) || [[ $need_src == 1 ]]; then
  if [[ $(id -u) != 0 && $DRY_RUN == 0 ]]; then
    echo "build-control-plane: needs root for apt: apt-get install ${missing[*]:-} and a deb-src entry for bookworm" >&2
    exit 1
  fi
  if [[ $need_src == 1 ]]; then
    log "adding deb-src entries for bookworm in $SRC_LIST"
    if [[ $DRY_RUN == 0 ]]; then
      cat > "$SRC_LIST" <<SOURCES
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
  fi
  run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  if (( ${#missing[@]} )); then
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

if have_all; then
  log "binaries present in $BIN: nothing to build"
  exit 0
fi

# 2. The source package, unpacked in a build tree under the cache (removed at the end, also on failure).
WORK=$CACHE/build
run mkdir -p "$WORK" "$BIN"
if [[ $DRY_RUN == 0 ]]; then trap 'log "removing build tree $WORK"; rm -rf "$WORK"' EXIT; fi
cd_work() { if [[ $DRY_RUN == 0 ]]; then cd "$1"; else log "+ cd $1"; fi; }
cd_work "$WORK"
run apt-get source --download-only "kubernetes=$DEB_VERSION"
run dpkg-source --no-check -x "kubernetes_${DEB_VERSION#*:}.dsc" src
cd_work "$WORK/src"

# 3. Generated code, then the three static binaries (no cgo, stripped). GOFLAGS=-mod=vendor: no network for modules.
export CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE=$WORK/gocache GOPATH=$WORK/gopath GOTOOLCHAIN=local
export KUBE_GIT_VERSION=v$VERSION KUBE_GIT_TREE_STATE=clean
start=$(date +%s)
run nice -n 10 make generated_files
log "generated files in $(( $(date +%s) - start )) s"
start=$(date +%s)
run nice -n 10 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler" GOLDFLAGS="-s -w"
log "binaries built in $(( $(date +%s) - start )) s"

# 4. Into the cache, atomically per binary.
for name in "${BINARIES[@]}"; do
  run install -m 0755 "_output/bin/$name" "$BIN/$name.tmp"
  run mv -f "$BIN/$name.tmp" "$BIN/$name"
done
if [[ $DRY_RUN == 0 ]]; then "$BIN/kube-apiserver" --version >&2; fi
log "done: $(ls "$BIN" 2>/dev/null | tr '\n' ' ')in $BIN"
