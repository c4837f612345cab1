# shellcheck shell=bash
# Shared by the scripts in k8s/cluster/ (sourced, never run): flags, a timestamped log of each step (stdout and a log
# file), dry-run, idempotency guards, confirmation, and the host steps that create and recover both need.
#
# Dry-run contract: with DRY_RUN=1 nothing is changed and nothing needs root, network or the cluster tools; every
# action is printed as `+ command` (files as their content, waits as what is waited for), and every idempotency guard is
# shown as "(at run time: skipped if ...)" instead of being evaluated, so the printed plan is the whole plan.

DRY_RUN=${DRY_RUN:-0}
ASSUME_YES=${ASSUME_YES:-0}
LOG_FILE=${LOG_FILE:-}
LOG_DIR=${LOG_DIR:-/var/log/gawm}
GAWM_SCRIPT=${GAWM_SCRIPT:-$(basename "${BASH_SOURCE[1]:-$0}" .sh)}
_STEP=0

# Files the scripts own on the host; cleanup-cluster.sh --purge removes exactly these.
MODULES_FILE=/etc/modules-load.d/gawm-k8s.conf
SYSCTL_FILE=/etc/sysctl.d/99-gawm-k8s.conf
SWAP_MARK='# gawm-swapoff: '
# shellcheck disable=SC2034 # used by the scripts that source this file
CRIO_SOCKET=unix:///var/run/crio/crio.sock

dry() { [[ $DRY_RUN == 1 ]]; }

log() { printf '[%s %s] %s\n' "$GAWM_SCRIPT" "$(date -u +%FT%TZ)" "$*"; }
warn() { log "WARNING: $*" >&2; }
die() {
  log "ERROR: $*" >&2
  exit 1
}

# A numbered step header: the log reads as the plan.
step() {
  _STEP=$((_STEP + 1))
  log "== step $_STEP: $*"
}

# Words of a command, quoted only where the shell needs it, for the log.
quote_args() {
  local out="" arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+="$arg "; else out+="'${arg//\'/\'\\\'\'}' "; fi
  done
  printf '%s' "${out% }"
}

# run CMD ARGS...: log it; execute it unless dry-run.
run() {
  log "+ $(quote_args "$@")"
  if dry; then return 0; fi
  "$@"
}

# run_sh 'a | b': a pipeline or redirection, run by bash with pipefail; logged as written.
run_sh() {
  log "+ $1"
  if dry; then return 0; fi
  bash -euo pipefail -c "$1"
}

# already WHAT CHECK ARGS...: true (skip the step) when CHECK succeeds, said in the log. In dry-run it is never
# evaluated and is false, so the plan shows the step with its guard.
already() {
  local what=$1
  shift
  if dry; then
    log "  (at run time: skipped if $what)"
    return 1
  fi
  if "$@" >/dev/null 2>&1; then
    log "  already done: $what"
    return 0
  fi
  return 1
}

# write_file PATH [MODE] <<'EOF' ... EOF: write stdin to PATH atomically, only when the content differs.
write_file() {
  local path=$1 mode=${2:-0644} content tmp
  content=$(cat)
  if [[ -r $path ]] && [[ "$(cat "$path")" == "$content" ]]; then
    log "  unchanged: $path"
    return 0
  fi
  log "+ write $path (mode $mode):"
  printf '%s\n' "$content" | sed 's/^/    | /'
  if dry; then return 0; fi
  mkdir -p "$(dirname "$path")"
  tmp=$(mktemp "$path.XXXXXX")
  printf '%s\n' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$path"
}

# apply_manifest WHAT <<'EOF' ... EOF: kubectl apply of a manifest given on stdin (idempotent by nature).
apply_manifest() {
  local what=$1 manifest
  manifest=$(cat)
  log "+ kubectl apply -f - ($what):"
  printf '%s\n' "$manifest" | sed 's/^/    | /'
  if dry; then return 0; fi
  printf '%s\n' "$manifest" | kubectl apply -f -
}

# wait_for WHAT TIMEOUT_S CHECK ARGS...: poll CHECK every 5 s until it succeeds; fail with WHAT after TIMEOUT_S.
wait_for() {
  local what=$1 timeout_s=$2 start
  shift 2
  log "+ wait up to ${timeout_s} s until $what: $(quote_args "$@")"
  if dry; then return 0; fi
  start=$(date +%s)
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) - start >= timeout_s)); then
      die "timed out after ${timeout_s} s waiting until $what (docs/troubleshooting.md)"
    fi
    sleep 5
  done
  log "  ok after $(($(date +%s) - start)) s: $what"
}

# confirm QUESTION: go on only on an explicit yes; --yes answers for the user; without a terminal, refuse.
confirm() {
  if [[ $ASSUME_YES == 1 ]]; then
    log "confirmed by --yes: $1"
    return 0
  fi
  if dry; then
    log "would ask: $1 [y/N] (--yes answers it)"
    return 0
  fi
  if [[ ! -t 0 ]]; then die "not confirmed, nothing changed: $1 (no terminal to ask on: pass --yes)"; fi
  local answer
  read -r -p "$1 [y/N] " answer
  [[ $answer =~ ^[Yy]([Ee][Ss])?$ ]] || die "not confirmed, nothing changed"
}

require_root() {
  if dry; then return 0; fi
  [[ $(id -u) == 0 ]] || die "run as root (sudo $0 ...), or look first with --dry-run"
}

require_cmds() {
  local cmd missing=()
  if dry; then return 0; fi
  for cmd in "$@"; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
  ((${#missing[@]} == 0)) || die "missing programs: ${missing[*]}"
}

# The value of a flag that takes one: flag_value "$@" with $1 the flag.
flag_value() {
  [[ $# -ge 2 && -n $2 && $2 != --* ]] || die "$1 needs a value"
  printf '%s' "$2"
}

# usage: the script's header comment (line 2 up to the first line that is not a comment).
usage() {
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# start_log: from here on, stdout and stderr also go to LOG_FILE. Default when run for real (and DEFAULT_LOG=1):
# LOG_DIR/<script>-<UTC>.log, LOG_DIR being /var/log/gawm for root, else ~/.local/state/gawm. In dry-run only with
# --log-file: dry-run writes nothing else.
start_log() {
  if [[ -z $LOG_FILE && ${DEFAULT_LOG:-1} == 1 ]] && ! dry; then
    if [[ $(id -u) != 0 ]]; then LOG_DIR=${XDG_STATE_HOME:-$HOME/.local/state}/gawm; fi
    LOG_FILE=$LOG_DIR/$GAWM_SCRIPT-$(date -u +%Y%m%dT%H%M%SZ).log
  fi
  if [[ -n $LOG_FILE ]]; then
    mkdir -p "$(dirname "$LOG_FILE")"
    exec > >(tee -a "$LOG_FILE") 2>&1
    log "log file: $LOG_FILE"
  fi
  log "$GAWM_SCRIPT on $(hostname) as $(id -un)$(dry && printf ' (dry run: nothing is changed)')"
}

is_ipv4() {
  local IFS=. part parts
  [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
  read -r -a parts <<<"$1"
  for part in "${parts[@]}"; do ((10#$part <= 255)) || return 1; done
}

is_cidr() { [[ $1 == */* ]] && is_ipv4 "${1%/*}" && [[ ${1#*/} =~ ^[0-9]{1,2}$ ]] && ((${1#*/} <= 32)); }
is_minor_version() { [[ $1 =~ ^[0-9]+\.[0-9]+$ ]]; }

# The IPv4 address of the interface that holds the default route: how this node is reached. Never hard-coded.
detect_node_ip() {
  local dev
  dev=$(ip -4 route show default 2>/dev/null |
    awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
  [[ -n $dev ]] || return 1
  ip -4 -o addr show dev "$dev" scope global 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }' | grep .
}

# resolve_node_ip: NODE_IP as given, else detected; in dry-run a placeholder when this machine has no default route.
resolve_node_ip() {
  if [[ -n ${NODE_IP:-} ]]; then
    is_ipv4 "$NODE_IP" || die "--node-ip $NODE_IP is not an IPv4 address"
    return 0
  fi
  if NODE_IP=$(detect_node_ip); then
    log "node IP $NODE_IP (detected from the default route; --node-ip sets it)"
  elif dry; then
    NODE_IP='<node-ip: from the default route at run time>'
  else
    die "cannot detect the node IP (no default route with an IPv4 address): pass --node-ip"
  fi
}

swap_is_off() { [[ $(awk 'NR > 1' /proc/swaps | wc -l) == 0 ]]; }
FSTAB_SWAP='^\s*[^#[:space:]]\S*\s+\S+\s+swap\s'
fstab_swap_free() { ! grep -Eq "$FSTAB_SWAP" /etc/fstab; }
modules_loaded() { grep -q '^overlay ' /proc/modules && grep -q '^br_netfilter ' /proc/modules; }
sysctls_set() {
  [[ $(cat /proc/sys/net/ipv4/ip_forward) == 1 ]] &&
    [[ $(cat /proc/sys/net/bridge/bridge-nf-call-iptables) == 1 ]] &&
    [[ $(cat /proc/sys/net/bridge/bridge-nf-call-ip6tables) == 1 ]]
}
unit_masked() { [[ $(systemctl is-enabled "$1" 2>/dev/null) == masked ]]; }

# Kernel modules and sysctls Kubernetes networking needs, loaded now and at every boot.
ensure_kernel_settings() {
  write_file "$MODULES_FILE" <<'EOF'
# gawm: kernel modules for Kubernetes (CRI-O overlay storage, bridged pod traffic through iptables)
overlay
br_netfilter
EOF
  already "overlay and br_netfilter are loaded" modules_loaded || {
    run modprobe overlay
    run modprobe br_netfilter
  }
  write_file "$SYSCTL_FILE" <<'EOF'
# gawm: sysctls for Kubernetes networking (pod traffic is forwarded and seen by iptables)
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
EOF
  already "the sysctls are in effect" sysctls_set || run sysctl --system
}

# Swap off now and after reboot: kubelet refuses to start with swap on (its default failSwapOn).
ensure_swap_off() {
  already "no swap is active" swap_is_off || run swapoff -a
  # Commented, never deleted, with a marker: cleanup-cluster.sh --restore-swap puts them back.
  already "/etc/fstab has no active swap entry" fstab_swap_free ||
    run sed -i.gawm-bak -E "s|($FSTAB_SWAP.*)\$|$SWAP_MARK\\1|" /etc/fstab
  # systemd also activates swap it discovers (GPT swap partitions, swap units): masking swap.target stops all of it.
  already "swap.target is masked" unit_masked swap.target || run systemctl mask swap.target
}
