#!/usr/bin/env bash
# GPU health check: one PASS/FAIL line per check, exit 1 when any check fails (WARN lines do not fail).
#
# On the host: the NVIDIA kernel driver is loaded, nvidia-smi sees the GPUs, the NVIDIA container toolkit is installed,
# the container runtime (CRI-O or containerd) has an `nvidia` runtime, cgroup v2 (PSI metrics need it: WARN only).
# In the cluster (python -m gawm_lib.health, the same checks as the library call): nodes advertise nvidia.com/gpu, the
# `nvidia` RuntimeClass exists, a test pod runs nvidia-smi on a GPU, the DCGM exporter answers on /metrics.
#
#   k8s/cluster/gpu-health-check.sh                        # both parts, kubeconfig from KUBECONFIG or ~/.kube/config
#   k8s/cluster/gpu-health-check.sh --cluster-only --no-pod   # from a laptop: no host checks, no test pod
#   k8s/cluster/gpu-health-check.sh --dry-run              # list the checks and commands, run nothing
#
# Flags:
#   --host-only | --cluster-only   run one part
#   --kubeconfig PATH              cluster credentials                        (default: KUBECONFIG, else ~/.kube/config)
#   --namespace NS                 namespace of the test pod (made and removed when missing)  (default gawm-health)
#   --no-pod                       do not start the GPU test pod
#   --no-runtime-class             GPU pods use the default runtime (NVIDIA's there): no RuntimeClass nvidia needed
#   --image IMAGE                  test pod image                 (default: gawm_lib.health's, a CUDA base image)
#   --timeout S                    longest wait for the test pod, seconds                      (default 180)
#   --dry-run                      print the checks, run nothing
#   --log-file PATH                log here too (default: none; this script changes nothing)
#   -h, --help                     this text
# Environment: GAWM_PYTHON, the Python that has gawm installed (default: the repository's .venv, else python3).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

# ---- settings (flags and environment override these) ----
HOST=1
CLUSTER=1
KUBECONFIG_PATH=${KUBECONFIG_PATH:-}
NAMESPACE=${NAMESPACE:-gawm-health}
RUN_POD=1
RUNTIME_CLASS=1
IMAGE=${IMAGE:-}
TIMEOUT_S=${TIMEOUT_S:-180}
GAWM_PYTHON=${GAWM_PYTHON:-}

while (($#)); do
  case $1 in
    --host-only) CLUSTER=0 ;;
    --cluster-only) HOST=0 ;;
    --kubeconfig) KUBECONFIG_PATH=$(flag_value "$@"); shift ;;
    --namespace) NAMESPACE=$(flag_value "$@"); shift ;;
    --no-pod) RUN_POD=0 ;;
    --no-runtime-class) RUNTIME_CLASS=0 ;;
    --image) IMAGE=$(flag_value "$@"); shift ;;
    --timeout) TIMEOUT_S=$(flag_value "$@"); shift ;;
    --dry-run) DRY_RUN=1 ;;
    --log-file) LOG_FILE=$(flag_value "$@"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (--help lists the flags)" ;;
  esac
  shift
done
[[ $HOST == 1 || $CLUSTER == 1 ]] || die "--host-only and --cluster-only exclude each other"
[[ $TIMEOUT_S =~ ^[1-9][0-9]*$ ]] || die "--timeout $TIMEOUT_S: expected seconds"

DEFAULT_LOG=0 # read-only: a log file only when asked for
start_log
FAILED=0

# result STATUS NAME DETAIL: one line a check, the same layout as python -m gawm_lib.health.
result() {
  printf '%-4s  %-26s %s\n' "$1" "$2" "$3"
  if [[ $1 == FAIL ]]; then FAILED=$((FAILED + 1)); fi
}

# check NAME FUNCTION: FUNCTION prints the detail and succeeds (PASS) or fails (FAIL); a dry run shows its plan only.
check() {
  local name=$1 fn=$2 detail
  if dry; then
    log "would check $name: ${PLAN[$fn]}"
    return 0
  fi
  if detail=$("$fn" 2>&1); then result PASS "$name" "$detail"; else result FAIL "$name" "$detail"; fi
}

declare -A PLAN=(
  [check_driver]="/proc/driver/nvidia/version is readable (the kernel module is loaded)"
  [check_smi]="nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader"
  [check_toolkit]="nvidia-ctk --version, and nvidia-container-runtime on PATH"
)
PLAN[check_runtime]="a [crio.runtime.runtimes.nvidia] table under /etc/crio (CRI-O) or an nvidia runtime in \
/etc/containerd/config.toml (containerd), and that runtime's service is active"

check_driver() {
  if [[ ! -r /proc/driver/nvidia/version ]]; then
    echo "no NVIDIA kernel module loaded (/proc/driver/nvidia/version is missing): install a driver" \
      "(sudo ubuntu-drivers install) and reboot; after a kernel update, reinstall or rebuild it (DKMS)"
    return 1
  fi
  head -n1 /proc/driver/nvidia/version | tr -s ' \t' ' ' | sed 's/ $//'
}

check_smi() {
  local out
  command -v nvidia-smi >/dev/null || { echo "nvidia-smi is not on PATH: it comes with the driver"; return 1; }
  if ! out=$(nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader 2>&1); then
    echo "nvidia-smi fails: $out"
    return 1
  fi
  [[ -n $out ]] || { echo "nvidia-smi lists no GPU"; return 1; }
  printf '%s GPU(s): %s' "$(wc -l <<<"$out")" "$(paste -sd ';' <<<"$out")"
}

check_toolkit() {
  command -v nvidia-ctk >/dev/null || { echo "nvidia-ctk missing: install nvidia-container-toolkit"; return 1; }
  command -v nvidia-container-runtime >/dev/null ||
    { echo "nvidia-container-runtime is not on PATH: reinstall nvidia-container-toolkit"; return 1; }
  local version
  version=$(nvidia-ctk --version 2>&1) || { echo "nvidia-ctk --version fails: $version"; return 1; }
  echo "${version%%$'\n'*}"
}

check_runtime() {
  local service
  if grep -rqs 'crio.runtime.runtimes.nvidia' /etc/crio/crio.conf /etc/crio/crio.conf.d/; then
    service=crio
  elif grep -qsE 'runtimes\.("nvidia"|nvidia)\]' /etc/containerd/config.toml; then
    service=containerd
  else
    echo "neither CRI-O (/etc/crio) nor containerd (/etc/containerd/config.toml) has an nvidia runtime:" \
      "sudo nvidia-ctk runtime configure --runtime=crio (or containerd), then restart the runtime"
    return 1
  fi
  if ! systemctl is-active --quiet "$service" 2>/dev/null; then
    echo "$service has an nvidia runtime but is not running: sudo systemctl enable --now $service"
    return 1
  fi
  echo "$service has an nvidia runtime and is running"
}

if [[ $HOST == 1 ]]; then
  log "host checks"
  check "NVIDIA driver" check_driver
  check "nvidia-smi" check_smi
  check "NVIDIA container toolkit" check_toolkit
  check "container runtime" check_runtime
  if dry; then
    log "would check cgroup v2: stat -fc %T /sys/fs/cgroup is cgroup2fs (WARN only)"
  elif [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]]; then
    result PASS "cgroup v2" "unified hierarchy: PSI (pressure stall) metrics available"
  else
    result WARN "cgroup v2" \
      "cgroup v1: no PSI metrics (boot with systemd.unified_cgroup_hierarchy=1; docs/troubleshooting.md)"
  fi
fi

if [[ $CLUSTER == 1 ]]; then
  log "cluster checks"
  if [[ -z $GAWM_PYTHON ]]; then
    if [[ -x $REPO_ROOT/.venv/bin/python ]]; then GAWM_PYTHON=$REPO_ROOT/.venv/bin/python; else GAWM_PYTHON=python3; fi
  fi
  args=()
  if [[ -n $KUBECONFIG_PATH ]]; then args+=(--kubeconfig "$KUBECONFIG_PATH"); fi
  if [[ $RUN_POD == 0 ]]; then args+=(--no-pod); fi
  if [[ $RUNTIME_CLASS == 0 ]]; then args+=(--no-runtime-class); fi
  if [[ -n $IMAGE ]]; then args+=(--image "$IMAGE"); fi
  args+=(--namespace "$NAMESPACE" --timeout "$TIMEOUT_S")
  export PYTHONPATH=$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}
  if dry; then
    log "would check: nodes advertise nvidia.com/gpu;$( ((RUNTIME_CLASS)) && echo " RuntimeClass nvidia exists;")" \
      "$( ((RUN_POD)) && echo "a test pod in $NAMESPACE runs nvidia-smi on one GPU;" || echo "no test pod;")" \
      "the DCGM exporter answers on /metrics"
    log "+ $(quote_args "$GAWM_PYTHON" -m gawm_lib.health "${args[@]}")"
  elif ! "$GAWM_PYTHON" -c 'import gawm_lib.health' 2>/dev/null; then
    result FAIL "cluster checks" "$GAWM_PYTHON cannot import gawm_lib.health: run make env (or set GAWM_PYTHON)"
  else
    "$GAWM_PYTHON" -m gawm_lib.health "${args[@]}" || FAILED=$((FAILED + 1))
  fi
fi

if dry; then
  log "dry run: nothing checked"
  exit 0
fi
if ((FAILED)); then
  log "GPU health: FAILED ($FAILED); docs/troubleshooting.md says what each failure means"
  exit 1
fi
log "GPU health: all checks passed"
