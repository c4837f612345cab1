#!/usr/bin/env bash
# Build Kubernetes 1.20.2 for the tests and the local node (k8s/testenv/node.sh): kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy and kubectl, from Debian bookworm's source package
# `kubernetes` (the only source of them reachable here), with the reflect2 fix (Debian's reflect2 1.0.2 over the
# vendored 1.0.1, which crashes under Go >= 1.18 on any pretty/YAML answer), plus two container images written without
# a registry: the pause image (compiled from the tree's build/pause/linux/pause.c with gcc -static) and
# gawm.local/host-python:1 (k8s/testenv/images.py). `make test-prereqs` (a step of `make test`, before pytest starts)
# runs it; the tests never build.
#
#   k8s/testenv/build-kubernetes.sh            # build if missing (7.5-16 min and 2.3 GB on 2 cores, once)
#   k8s/testenv/build-kubernetes.sh --dry-run  # say what would be done, change nothing
#
# The binaries (about 425 MB) are cached outside the repository in $GAWM_K8S_CACHE/bin, by default
# ${GAWM_CACHE_DIR:-~/.cache/gawm}/kubernetes-1.20.2/bin, the image archives in <cache>/images. <cache>/bin/build-stamp
# records what was built (version, reflect2 fix, binaries): a cache without it, or with another one (such as the
# control-plane-only build without the fix), is rebuilt. When all is there and etcd installed, this does nothing. As
# root it installs the Debian packages it needs (golang-go rsync jq etcd-server dpkg-dev make gcc libc6-dev
# golang-github-modern-go-reflect2-dev) and adds a deb-src entry for bookworm; otherwise it names what is missing. One
# build at a time: a second caller waits on the lock <cache>/lock, then finds the binaries. The build runs in a fresh
# <cache>/build.XXXXXX, removed at the end; a killed build's tree is removed by the next run, and its compilers die
# with it. GAWM_BUILD_JOBS=N: N compile jobs.
set -euo pipefail

VERSION=1.20.2
DEB_VERSION=1.20.5+really1.20.2-1.1+deb12u1
CACHE=${GAWM_K8S_CACHE:-${GAWM_CACHE_DIR:-$HOME/.cache/gawm}/kubernetes-$VERSION}
BIN=$CACHE/bin
LOCK=$CACHE/lock
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
IMAGES_DIR=$CACHE/images
PAUSE_VERSION=3.4.1
IMAGES=(pause.tar host-python.tar)
PACKAGES=(golang-go rsync jq etcd-server dpkg-dev make gcc libc6-dev golang-github-modern-go-reflect2-dev)
REFLECT2_SRC=${GAWM_REFLECT2_SRC:-/usr/share/gocode/src/github.com/modern-go/reflect2}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# What a complete cache holds; a different stamp (or none: the old control-plane-only build) means rebuild.
STAMP_TEXT="kubernetes v$VERSION (Debian source $DEB_VERSION); reflect2 v1.0.2 over the vendored v1.0.1; CGO_ENABLED=0 -s -w
binaries: ${BINARIES[*]}
images: pause $PAUSE_VERSION (gawm.local/pause:$PAUSE_VERSION), gawm.local/host-python:1"
SRC_LIST=${GAWM_K8S_SRC_LIST:-/etc/apt/sources.list.d/gawm-bookworm-src.sources}
DRY_RUN=0

for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build-kubernetes: unknown argument $arg (use --dry-run)" >&2; exit 2 ;;
  esac
done

log() { echo "[build-kubernetes $(date -u +%H:%M:%S)] $*" >&2; }
# A short command; fd 9 (the lock) is not handed on, so nothing this starts can hold the lock after we are gone.
run() {
  log "+ $*"
  if [[ $DRY_RUN == 0 ]]; then "$@" 9>&-; fi
}

# A long command (download, unpack, make) runs in a process group of its own, led by a small bash that SIGTERMs the
# whole group when told to stop or when this script dies, even by SIGKILL (its parent-death signal): no compiler
# outlives the build, and none holds the lock.
STEP_PID=""
step() {
  log "+ $*"
  if [[ $DRY_RUN == 1 ]]; then return 0; fi
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid setpriv --pdeathsig TERM -- bash -c \
    'trap "trap - TERM HUP; kill -TERM -- -\$\$ 2>/dev/null; exit 143" TERM HUP; "$@" & wait "$!"' \
    build-step "$@" 9>&- </dev/null &
  STEP_PID=$!
  local rc=0
  wait "$STEP_PID" || rc=$?
  STEP_PID=""
  return "$rc"
}

WORK=""
cleanup() {
  local rc=$?
  if [[ -n $STEP_PID ]]; then
    kill -TERM -- "-$STEP_PID" 2>/dev/null || true
    wait "$STEP_PID" 2>/dev/null || true
  fi
  if [[ -n $WORK && -d $WORK ]]; then
    log "removing build tree $WORK"
    cd / && rm -rf "$WORK"
  fi
  exit "$rc"
}

have_all() {
  local name
  for name in "${BINARIES[@]}"; do [[ -x $BIN/$name ]] || return 1; done
  for name in "${IMAGES[@]}"; do [[ -s $IMAGES_DIR/$name ]] || return 1; done
  [[ -f $BIN/build-stamp && $(cat "$BIN/build-stamp") == "$STAMP_TEXT" ]]
}

if have_all && command -v etcd >/dev/null; then
  log "binaries present in $BIN and etcd installed: nothing to do"
  exit 0
fi

# 0. One build at a time (a second caller waits here, then finds the binaries).
if [[ $DRY_RUN == 0 ]]; then
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
  mkdir -p "$CACHE"
  exec 9>>"$LOCK"
  if ! flock -n 9; then
    log "another build of Kubernetes holds $LOCK: waiting for it to finish"
    flock 9
    log "the other build has finished"
    if have_all && command -v etcd >/dev/null; then
      log "binaries present in $BIN and etcd installed: nothing to do"
      exit 0
    fi
  fi
else
  log "would take the lock $LOCK (one build at a time)"
fi
log "setting up Kubernetes $VERSION (${BINARIES[*]}) and the node images in $CACHE (dry run: $DRY_RUN)"

# 1. Debian packages: the Go toolchain, rsync and jq for the Kubernetes make files, etcd for the tests, dpkg-source,
#    gcc and libc6-dev for the static pause binary, Debian's reflect2 1.0.2 for the fix.
missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
need_src=1
if have_all; then  # only etcd is missing
  missing=(); dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q "install ok installed" || missing=(etcd-server)
  need_src=0
elif grep -rqsE '^(Types:.*deb-src|deb-src ).*' /etc/apt/sources.list /etc/apt/sources.list.d/ "$SRC_LIST" \
   && apt-cache showsrc kubernetes 2>/dev/null | grep -q "^Version: $DEB_VERSION"; then
  need_src=0
fi
if (( ${#missing[@]} )) || [[ $need_src == 1 ]]; then
  if [[ $(id -u) != 0 && $DRY_RUN == 0 ]]; then
    echo "build-kubernetes: needs root for apt: apt-get install ${missing[*]:-} and a deb-src entry for bookworm" >&2
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

# 2. What an interrupted build left (we hold the lock: no build is running): its tree, half-installed binaries.
for stale in "$CACHE/build" "$CACHE"/build.* "$BIN"/.*.tmp.* "$IMAGES_DIR"/.*.tmp.*; do
  if [[ -e $stale ]]; then
    log "removing what an interrupted build left: $stale"
    run rm -rf "$stale"
  fi
done

# 3. The source package, unpacked in a fresh build tree under the cache (removed at the end, also on failure).
build_start=$(date +%s)
if [[ $DRY_RUN == 0 ]]; then
  WORK=$(mktemp -d "$CACHE/build.XXXXXX")
  chmod 755 "$WORK"  # for apt's download sandbox user (_apt), where the folders above let it in
  cd "$WORK"
else
  WORK_SHOWN=$CACHE/build.XXXXXX
  log "+ mktemp -d $WORK_SHOWN && cd $WORK_SHOWN"
fi
step apt-get source --download-only "kubernetes=$DEB_VERSION"
step dpkg-source --no-check -x "kubernetes_${DEB_VERSION#*:}.dsc" src
if [[ $DRY_RUN == 0 ]]; then cd "$WORK/src"; else log "+ cd src"; fi

# 4. The reflect2 fix: Debian's reflect2 1.0.2 (Go >= 1.18 safe) over the vendored 1.0.1, and the version in go.mod's
#    replace line and vendor/modules.txt, so that -mod=vendor accepts it.
if [[ $DRY_RUN == 0 ]]; then
  log "reflect2 fix: $REFLECT2_SRC/*.go and *.s over vendor/github.com/modern-go/reflect2/, v1.0.1 -> v1.0.2"
  [[ -d $REFLECT2_SRC ]] || { echo "build-kubernetes: $REFLECT2_SRC missing (golang-github-modern-go-reflect2-dev)" >&2; exit 1; }
  # 1.0.1's own files go first: some (go_above_17.go, ...) are gone from 1.0.2 and would clash with its files
  rm -f vendor/github.com/modern-go/reflect2/*.go vendor/github.com/modern-go/reflect2/*.s
  cp "$REFLECT2_SRC"/*.go "$REFLECT2_SRC"/*.s vendor/github.com/modern-go/reflect2/
  rm -f vendor/github.com/modern-go/reflect2/*_test.go
  sed -i 's#\(=> github.com/modern-go/reflect2\) v1\.0\.1#\1 v1.0.2#' go.mod vendor/modules.txt
  if grep -q '=> github.com/modern-go/reflect2 v1.0.1' go.mod vendor/modules.txt \
     || ! grep -q '=> github.com/modern-go/reflect2 v1.0.2' go.mod \
     || ! grep -q '=> github.com/modern-go/reflect2 v1.0.2' vendor/modules.txt; then
    echo "build-kubernetes: the reflect2 fix did not apply to go.mod / vendor/modules.txt" >&2
    exit 1
  fi
else
  log "would replace the *.go and *.s of vendor/github.com/modern-go/reflect2/ with $REFLECT2_SRC's, in vendor/github.com/modern-go/reflect2/ and set v1.0.2 in go.mod and vendor/modules.txt"
fi

# 5. Generated code, then the static binaries (no cgo, stripped). GOFLAGS=-mod=vendor: no network for modules.
export CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE=$WORK/gocache GOPATH=$WORK/gopath GOTOOLCHAIN=local
if [[ -n ${GAWM_BUILD_JOBS:-} ]]; then
  export GOMAXPROCS=$GAWM_BUILD_JOBS  # go build's -p defaults to it (a -p in GOFLAGS upsets Kubernetes' make files)
  log "compiling with $GAWM_BUILD_JOBS job(s) (GAWM_BUILD_JOBS)"
fi
export KUBE_GIT_VERSION=v$VERSION KUBE_GIT_TREE_STATE=clean
start=$(date +%s)
step nice -n 10 make generated_files
log "generated files in $(( $(date +%s) - start )) s"
start=$(date +%s)
what=""
for name in "${BINARIES[@]}"; do what+="${what:+ }cmd/$name"; done
step nice -n 10 make WHAT="$what" GOLDFLAGS="-s -w"
log "binaries built in $(( $(date +%s) - start )) s"

# 6. The pause binary (static, from the tree) and the two image archives (docker-archive tars, imported by node.sh).
run mkdir -p _output/images
step gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-gawm" -o _output/bin/pause build/pause/linux/pause.c
step python3 "$HERE/images.py" pause --binary _output/bin/pause --tag "gawm.local/pause:$PAUSE_VERSION" \
  --output _output/images/pause.tar
step python3 "$HERE/images.py" host-python --tag gawm.local/host-python:1 --output _output/images/host-python.tar

# 7. Into the cache, atomically per file (a half-copied file is never at its final name); the stamp last.
run mkdir -p "$BIN" "$IMAGES_DIR"
for name in "${BINARIES[@]}"; do
  run install -m 0755 "_output/bin/$name" "$BIN/.$name.tmp.$$"
  run mv -f "$BIN/.$name.tmp.$$" "$BIN/$name"
done
for name in "${IMAGES[@]}"; do
  run install -m 0644 "_output/images/$name" "$IMAGES_DIR/.$name.tmp.$$"
  run mv -f "$IMAGES_DIR/.$name.tmp.$$" "$IMAGES_DIR/$name"
done
if [[ $DRY_RUN == 0 ]]; then
  printf '%s\n' "$STAMP_TEXT" > "$BIN/.build-stamp.tmp.$$"
  mv -f "$BIN/.build-stamp.tmp.$$" "$BIN/build-stamp"
  "$BIN/kube-apiserver" --version >&2
fi
log "done in $(( $(date +%s) - build_start )) s: ${BINARIES[*]} in $BIN, ${IMAGES[*]} in $IMAGES_DIR"
