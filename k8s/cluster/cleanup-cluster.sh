#!/usr/bin/env bash
# Tear down the single-node cluster made by create-cluster.sh: kubeadm reset (removes the control plane, etcd data and
# kubelet state), then the CNI state kubeadm leaves behind (Calico's CNI config and data, its network devices, the
# Kubernetes and Calico iptables chains), and the kubeconfig copied for the user (kept as a backup). Asks first unless
# --yes. Optionally also removes the packages and apt repositories, and turns swap back on. Each step is skipped when
# there is nothing to remove, so it can be run again.
#
#   sudo k8s/cluster/cleanup-cluster.sh                    # asks, then resets the node
#   sudo k8s/cluster/cleanup-cluster.sh --yes --purge --restore-swap
#   k8s/cluster/cleanup-cluster.sh --dry-run               # print the plan; changes nothing, needs no root
#
# Flags (they set the settings below; so does the environment, e.g. PURGE=1):
#   --yes              do not ask for confirmation
#   --purge            also purge kubeadm/kubelet/kubectl/cri-o, the gawm apt repositories and keys, and the kernel
#                      module and sysctl files create-cluster.sh wrote (the NVIDIA driver and container toolkit stay)
#   --restore-swap     put back the swap entries create-cluster.sh commented out, unmask swap.target, swapon -a
#   --dry-run          print every step, change nothing
#   --log-file PATH    log here too (default /var/log/gawm/cleanup-cluster-<UTC>.log; none in dry-run)
#   -h, --help         this text
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

# ---- settings (flags and environment override these) ----
PURGE=${PURGE:-0}
RESTORE_SWAP=${RESTORE_SWAP:-0}
CNI_STATE=(/var/lib/cni /var/lib/calico /var/run/calico /var/log/calico /etc/cni/net.d/10-calico.conflist
  /etc/cni/net.d/calico-kubeconfig /etc/cni/net.d/calico-tls)
CNI_DEVICE_PATTERN='^(cali[0-9a-f]+|vxlan\.calico)$'
IPTABLES_PATTERN='KUBE-|cali-|cali:'

while (($#)); do
  case $1 in
    --yes | -y) ASSUME_YES=1 ;;
    --purge) PURGE=1 ;;
    --restore-swap) RESTORE_SWAP=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --log-file) LOG_FILE=$(flag_value "$@"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (--help lists the flags)" ;;
  esac
  shift
done

start_log
what="reset the Kubernetes node on $(hostname) (all its pods and cluster data are deleted) and remove its CNI state"
if [[ $PURGE == 1 ]]; then what+=", purge the Kubernetes and CRI-O packages"; fi
if [[ $RESTORE_SWAP == 1 ]]; then what+=", turn swap back on"; fi
confirm "This will $what. Go on?"

# ---- checks used as idempotency guards (read-only) ----
no_cluster_state() {
  [[ ! -e /etc/kubernetes/admin.conf && ! -d /etc/kubernetes/manifests && ! -d /var/lib/etcd/member ]]
}
no_cni_state() {
  local path
  for path in "${CNI_STATE[@]}"; do [[ ! -e $path ]] || return 1; done
}
cni_devices() {
  local links
  links=$(ip -o link show) || return 1
  awk -F': ' '{ sub(/@.*/, "", $2); print $2 }' <<<"$links" | grep -E "$CNI_DEVICE_PATTERN"
}
no_cni_devices() { ! cni_devices; }
# Output is captured before it is matched: with pipefail, `cmd | grep -q` can fail when grep stops reading early.
no_kube_iptables() {
  local tool rules
  for tool in iptables ip6tables; do
    command -v "$tool-save" >/dev/null || continue
    rules=$("$tool-save") || return 1
    ! grep -Eq "$IPTABLES_PATTERN" <<<"$rules" || return 1
  done
}
packages_absent() {
  local states
  states=$(dpkg-query -W -f='${Status}\n' kubeadm kubelet kubectl cri-o 2>/dev/null || true)
  [[ $states != *"ok installed"* ]]
}
unit_not_masked() { ! unit_masked "$1"; }
no_commented_swap() { ! grep -q "^$SWAP_MARK" /etc/fstab; }
KUBE_USER=${SUDO_USER:-$(id -un)}
KUBE_HOME=$(getent passwd "$KUBE_USER" | cut -d: -f6)

# ---- steps ----
step "preflight"
require_root

step "kubeadm reset"
if ! already "no cluster state is left (/etc/kubernetes, /var/lib/etcd)" no_cluster_state; then
  require_cmds kubeadm
  run kubeadm reset --force --cri-socket "$CRIO_SOCKET"
fi

step "CNI state: Calico's files, network devices, iptables chains"
already "no CNI files are left" no_cni_state || run rm -rf "${CNI_STATE[@]}"
if dry; then
  log "  (at run time: for each device matching $CNI_DEVICE_PATTERN)"
  run ip link delete '<device>'
elif ! already "no Calico network device is left" no_cni_devices; then
  for device in $(cni_devices); do run ip link delete "$device"; done
fi
# Only the rules that Kubernetes (KUBE-*) and Calico (cali-*, "cali:" comments) made; other firewall rules stay.
if ! already "no Kubernetes or Calico iptables rules are left" no_kube_iptables; then
  for tool in iptables ip6tables; do
    run_sh "$tool-save | grep -Ev '$IPTABLES_PATTERN' | $tool-restore"
  done
fi

step "kubeconfig of $KUBE_USER"
if [[ -f $KUBE_HOME/.kube/config ]] || dry; then
  run mv "$KUBE_HOME/.kube/config" "$KUBE_HOME/.kube/config.before-cleanup-$(date -u +%Y%m%dT%H%M%SZ)"
else
  log "  nothing to do: $KUBE_HOME/.kube/config does not exist"
fi

step "packages, apt repositories and host settings"
if [[ $PURGE == 1 ]]; then
  if ! already "kubeadm, kubelet, kubectl and cri-o are not installed" packages_absent; then
    run apt-mark unhold kubelet kubeadm kubectl cri-o
    run env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq kubeadm kubelet kubectl cri-o
  fi
  run rm -f /etc/apt/sources.list.d/gawm-kubernetes.list /etc/apt/sources.list.d/gawm-cri-o.list \
    /etc/apt/sources.list.d/gawm-nvidia-container-toolkit.list /etc/apt/keyrings/gawm-kubernetes.gpg \
    /etc/apt/keyrings/gawm-cri-o.gpg /etc/apt/keyrings/gawm-nvidia-container-toolkit.gpg
  run rm -rf /etc/kubernetes /var/lib/kubelet /var/lib/etcd /etc/gawm "$MODULES_FILE" "$SYSCTL_FILE"
else
  log "  kept (--purge removes them)"
fi

step "swap"
if [[ $RESTORE_SWAP == 1 ]]; then
  already "/etc/fstab has no swap entry commented out by gawm" no_commented_swap ||
    run sed -i.gawm-bak "s|^$SWAP_MARK||" /etc/fstab
  already "swap.target is not masked" unit_not_masked swap.target ||
    run systemctl unmask swap.target
  run swapon -a
else
  log "  left off (--restore-swap turns it back on)"
fi
log "done: the node is reset; create-cluster.sh makes a new cluster"
