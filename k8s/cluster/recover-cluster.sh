#!/usr/bin/env bash
# Bring the single-node cluster made by create-cluster.sh back after a reboot: swap off again, kernel settings, CRI-O
# and kubelet running, the API server ready, Calico (the CNI) healthy, pods the reboot left Failed or Unknown removed
# so their controllers replace them, the device plugin advertising the GPUs again, then the GPU health check.
# Safe to run at any time: each step is skipped when already fine.
#
#   sudo k8s/cluster/recover-cluster.sh
#   k8s/cluster/recover-cluster.sh --dry-run      # print the plan; changes nothing, needs no root or network
#
# Flags (they set the settings below; so does the environment, e.g. TIMEOUT_S=600):
#   --timeout S            longest wait for any one thing to become ready, seconds     (default 300)
#   --keep-failed-pods     leave pods in phase Failed/Unknown (e.g. evicted ones) in place
#   --no-health-check      skip gpu-health-check.sh at the end
#   --dry-run              print every step, change nothing
#   --log-file PATH        log here too (default /var/log/gawm/recover-cluster-<UTC>.log; none in dry-run)
#   -h, --help             this text
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

# ---- settings (flags and environment override these) ----
TIMEOUT_S=${TIMEOUT_S:-300}
KEEP_FAILED_PODS=${KEEP_FAILED_PODS:-0}
HEALTH_CHECK=${HEALTH_CHECK:-1}
CALICO_NAMESPACE=calico-system
DEVICE_PLUGIN_NAMESPACE=nvidia-device-plugin
export KUBECONFIG=/etc/kubernetes/admin.conf

while (($#)); do
  case $1 in
    --timeout) TIMEOUT_S=$(flag_value "$@"); shift ;;
    --keep-failed-pods) KEEP_FAILED_PODS=1 ;;
    --no-health-check) HEALTH_CHECK=0 ;;
    --dry-run) DRY_RUN=1 ;;
    --log-file) LOG_FILE=$(flag_value "$@"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (--help lists the flags)" ;;
  esac
  shift
done
[[ $TIMEOUT_S =~ ^[1-9][0-9]*$ ]] || die "--timeout $TIMEOUT_S: expected seconds"

start_log

# ---- checks used as idempotency guards (read-only) ----
calico_healthy() {
  compgen -G '/etc/cni/net.d/*calico*' &&
    kubectl -n "$CALICO_NAMESPACE" rollout status daemonset/calico-node --timeout=30s
}
node_ready() { kubectl wait --for=condition=Ready --timeout=30s nodes --all; }
no_leftover_pods() {
  [[ -z $(kubectl get pods -A --no-headers --field-selector=status.phase=Failed -o name) ]] &&
    [[ -z $(kubectl get pods -A --no-headers --field-selector=status.phase=Unknown -o name) ]]
}
gpus_advertised() {
  local counts
  counts=$(kubectl get nodes -o jsonpath='{.items[*].status.allocatable.nvidia\.com/gpu}') && [[ $counts =~ [1-9] ]]
}

# ---- steps ----
step "preflight"
require_root
require_cmds kubeadm kubectl crictl systemctl
[[ -f $KUBECONFIG ]] || dry || die "$KUBECONFIG is missing: this node has no cluster (create-cluster.sh makes one)"

step "swap off (kubelet does not start with swap on), kernel modules and sysctls"
ensure_swap_off
ensure_kernel_settings

step "CRI-O and kubelet running"
already "crio is active" systemctl is-active --quiet crio || run systemctl enable --now crio
wait_for "CRI-O answers on its socket" "$TIMEOUT_S" crictl --runtime-endpoint "$CRIO_SOCKET" info
# kubelet gave up (or was started before swap went off): a restart makes it register again.
already "kubelet is active" systemctl is-active --quiet kubelet || run systemctl restart kubelet
run systemctl enable crio kubelet

step "API server"
wait_for "the API server is ready" "$TIMEOUT_S" kubectl get --raw=/readyz

step "CNI: Calico"
if ! already "calico-node is rolled out and its CNI config exists" calico_healthy; then
  # calico-node writes /etc/cni/net.d/10-calico.conflist and the vxlan.calico device when it starts.
  run kubectl -n "$CALICO_NAMESPACE" rollout restart daemonset/calico-node
  run kubectl -n "$CALICO_NAMESPACE" rollout status daemonset/calico-node --timeout="${TIMEOUT_S}s"
fi
wait_for "the node is Ready" "$TIMEOUT_S" node_ready

step "pods the reboot left behind (phase Failed or Unknown, e.g. evicted)"
if [[ $KEEP_FAILED_PODS == 1 ]]; then
  log "  kept (--keep-failed-pods)"
elif ! already "no pod is Failed or Unknown" no_leftover_pods; then
  # Their Deployments/DaemonSets recreate them; evicted pods otherwise pile up (docs/troubleshooting.md).
  run kubectl delete pods -A --field-selector=status.phase=Failed --wait=false
  run kubectl delete pods -A --field-selector=status.phase=Unknown --wait=false
fi

step "NVIDIA device plugin: GPUs advertised"
if ! already "the node advertises nvidia.com/gpu" gpus_advertised; then
  # The plugin registers with kubelet through a socket; after a kubelet restart it must register again.
  run kubectl -n "$DEVICE_PLUGIN_NAMESPACE" rollout restart daemonset -l app.kubernetes.io/name=nvidia-device-plugin
  wait_for "the node advertises nvidia.com/gpu" "$TIMEOUT_S" gpus_advertised
fi

step "GPU health check"
if [[ $HEALTH_CHECK == 1 ]]; then
  run "$SCRIPT_DIR/gpu-health-check.sh" --kubeconfig "$KUBECONFIG" --timeout "$TIMEOUT_S"
else
  log "  skipped (--no-health-check)"
fi
log "done: the cluster is back (kubectl get nodes,pods -A)"
