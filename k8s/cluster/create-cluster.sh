#!/usr/bin/env bash
# Create a single-node Kubernetes cluster with an NVIDIA GPU on Ubuntu 24.04, the way the seed study ran gawm:
# kernel settings, swap off, CRI-O with the NVIDIA container runtime, kubeadm/kubelet/kubectl pinned, kubeadm init
# (control-plane taint removed), Calico VXLAN, the `nvidia` RuntimeClass, the NVIDIA device plugin (optionally
# time-sliced), the gawm monitoring overlay, then the GPU health check. Every step is skipped when already done.
#
#   sudo k8s/cluster/create-cluster.sh                     # the seed study's cluster, node IP from the default route
#   sudo k8s/cluster/create-cluster.sh --gpu-replicas 10   # time-slicing: each GPU advertised as 10 nvidia.com/gpu
#   k8s/cluster/create-cluster.sh --dry-run                # print the plan; changes nothing, needs no root or network
#
# Flags (they set the settings below; so does the environment, e.g. K8S_VERSION=1.33 GPU_REPLICAS=10):
#   --k8s-version X.Y          kubeadm/kubelet/kubectl minor version, held by apt-mark      (default 1.34)
#   --k8s-patch X.Y.Z          pin an exact patch release                                  (default: newest of X.Y)
#   --crio-version X.Y         CRI-O minor version                                         (default 1.31)
#   --crio-repo URL            CRI-O apt repository (default pkgs.k8s.io addons; see docs/troubleshooting.md)
#   --pod-cidr CIDR            pod network, kubeadm and Calico                             (default 10.244.0.0/16)
#   --service-cidr CIDR        service network                                             (default 10.96.0.0/12)
#   --node-ip IP               address the API server advertises      (default: the default route's, at run time)
#   --calico-version vX.Y.Z    Calico (tigera-operator manifest)                           (default v3.31.3)
#   --device-plugin-version V  NVIDIA device plugin Helm chart, with GPU feature discovery (default 0.16.2)
#   --gpu-replicas N           time-slicing: N virtual GPUs per GPU; 0 or 1 = no sharing   (default 0)
#   --helm-version vX.Y.Z      Helm, installed into /usr/local/bin when missing            (default v3.17.3)
#   --timeout S                longest wait for any one thing to become ready, seconds     (default 300)
#   --install-driver           install the recommended NVIDIA driver (ubuntu-drivers) when none is loaded, then stop
#   --monitoring-dir DIR       gawm monitoring kustomization (default k8s/overlays/monitoring, else k8s/monitoring)
#   --no-monitoring            skip the gawm monitoring stack
#   --no-health-check          skip gpu-health-check.sh at the end
#   --dry-run                  print every step and file, change nothing
#   --log-file PATH            log here too (default /var/log/gawm/create-cluster-<UTC>.log; none in dry-run)
#   -h, --help                 this text
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
# shellcheck source=lib.sh
source "$SCRIPT_DIR/lib.sh"

# ---- settings (flags and environment override these) ----
K8S_VERSION=${K8S_VERSION:-1.34}
K8S_PATCH=${K8S_PATCH:-}
CRIO_VERSION=${CRIO_VERSION:-1.31}
CRIO_REPO=${CRIO_REPO:-}
POD_CIDR=${POD_CIDR:-10.244.0.0/16}
SERVICE_CIDR=${SERVICE_CIDR:-10.96.0.0/12}
NODE_IP=${NODE_IP:-}
CALICO_VERSION=${CALICO_VERSION:-v3.31.3}
DEVICE_PLUGIN_VERSION=${DEVICE_PLUGIN_VERSION:-0.16.2}
GPU_REPLICAS=${GPU_REPLICAS:-0}
HELM_VERSION=${HELM_VERSION:-v3.17.3}
TIMEOUT_S=${TIMEOUT_S:-300}
INSTALL_DRIVER=${INSTALL_DRIVER:-0}
MONITORING=${MONITORING:-1}
MONITORING_DIR=${MONITORING_DIR:-}
HEALTH_CHECK=${HEALTH_CHECK:-1}

KEYRINGS=/etc/apt/keyrings
KUBEADM_CONFIG=/etc/kubernetes/gawm-kubeadm.yaml
DEVICE_PLUGIN_CONFIG=/etc/gawm/nvidia-device-plugin.yaml
DEVICE_PLUGIN_NAMESPACE=nvidia-device-plugin
export KUBECONFIG=/etc/kubernetes/admin.conf

while (($#)); do
  case $1 in
    --k8s-version) K8S_VERSION=$(flag_value "$@"); shift ;;
    --k8s-patch) K8S_PATCH=$(flag_value "$@"); shift ;;
    --crio-version) CRIO_VERSION=$(flag_value "$@"); shift ;;
    --crio-repo) CRIO_REPO=$(flag_value "$@"); shift ;;
    --pod-cidr) POD_CIDR=$(flag_value "$@"); shift ;;
    --service-cidr) SERVICE_CIDR=$(flag_value "$@"); shift ;;
    --node-ip) NODE_IP=$(flag_value "$@"); shift ;;
    --calico-version) CALICO_VERSION=$(flag_value "$@"); shift ;;
    --device-plugin-version) DEVICE_PLUGIN_VERSION=$(flag_value "$@"); shift ;;
    --gpu-replicas) GPU_REPLICAS=$(flag_value "$@"); shift ;;
    --helm-version) HELM_VERSION=$(flag_value "$@"); shift ;;
    --timeout) TIMEOUT_S=$(flag_value "$@"); shift ;;
    --install-driver) INSTALL_DRIVER=1 ;;
    --monitoring-dir) MONITORING_DIR=$(flag_value "$@"); shift ;;
    --no-monitoring) MONITORING=0 ;;
    --no-health-check) HEALTH_CHECK=0 ;;
    --dry-run) DRY_RUN=1 ;;
    --log-file) LOG_FILE=$(flag_value "$@"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (--help lists the flags)" ;;
  esac
  shift
done

is_minor_version "$K8S_VERSION" || die "--k8s-version $K8S_VERSION: expected MAJOR.MINOR, e.g. 1.34"
is_minor_version "$CRIO_VERSION" || die "--crio-version $CRIO_VERSION: expected MAJOR.MINOR, e.g. 1.31"
[[ -z $K8S_PATCH || $K8S_PATCH == "$K8S_VERSION".* ]] || die "--k8s-patch $K8S_PATCH is not a $K8S_VERSION release"
is_cidr "$POD_CIDR" || die "--pod-cidr $POD_CIDR is not an IPv4 CIDR"
is_cidr "$SERVICE_CIDR" || die "--service-cidr $SERVICE_CIDR is not an IPv4 CIDR"
[[ $GPU_REPLICAS =~ ^[0-9]+$ ]] || die "--gpu-replicas $GPU_REPLICAS: expected a whole number"
[[ $TIMEOUT_S =~ ^[1-9][0-9]*$ ]] || die "--timeout $TIMEOUT_S: expected seconds"
CRIO_REPO=${CRIO_REPO:-https://pkgs.k8s.io/addons:/cri-o:/stable:/v$CRIO_VERSION/deb/}
K8S_REPO=https://pkgs.k8s.io/core:/stable:/v$K8S_VERSION/deb/
NVIDIA_REPO=https://nvidia.github.io/libnvidia-container
CALICO_URL=https://raw.githubusercontent.com/projectcalico/calico/$CALICO_VERSION/manifests
if [[ -z $MONITORING_DIR ]]; then
  MONITORING_DIR=$REPO_ROOT/k8s/overlays/monitoring
  if [[ ! -d $MONITORING_DIR && -d $REPO_ROOT/k8s/monitoring ]]; then MONITORING_DIR=$REPO_ROOT/k8s/monitoring; fi
fi

start_log
resolve_node_ip
log "settings: Kubernetes $K8S_VERSION${K8S_PATCH:+ ($K8S_PATCH)}, CRI-O $CRIO_VERSION, pods $POD_CIDR," \
  "services $SERVICE_CIDR, node IP $NODE_IP, Calico $CALICO_VERSION, device plugin $DEVICE_PLUGIN_VERSION," \
  "GPU replicas $GPU_REPLICAS, monitoring $([[ $MONITORING == 1 ]] && echo "$MONITORING_DIR" || echo off)"

# ---- checks used as idempotency guards (read-only) ----
# Output is captured before it is matched: with pipefail, `cmd | grep -q` can fail when grep stops reading early.
driver_loaded() { [[ -r /proc/driver/nvidia/version ]] && nvidia-smi -L; }
packages_installed() {
  dpkg-query -W -f='${Status}\n' "$@" 2>/dev/null | grep -c 'install ok installed' | grep -qx "$#"
}
kube_tools_at_version() {
  packages_installed kubelet kubeadm kubectl cri-o nvidia-container-toolkit &&
    if [[ -n $K8S_PATCH ]]; then [[ $(kubeadm version -o short) == "v$K8S_PATCH" ]]; else
      [[ $(kubeadm version -o short) == "v$K8S_VERSION".* ]]
    fi
}
crio_has_nvidia_runtime() { grep -rqs 'crio.runtime.runtimes.nvidia' /etc/crio/crio.conf /etc/crio/crio.conf.d/; }
cluster_initialised() { [[ -f /etc/kubernetes/admin.conf ]]; }
no_control_plane_taint() {
  local keys
  keys=$(kubectl get nodes -o jsonpath='{.items[*].spec.taints[*].key}') && [[ $keys != *control-plane* ]]
}
gpus_advertised() {
  local counts
  counts=$(kubectl get nodes -o jsonpath='{.items[*].status.allocatable.nvidia\.com/gpu}') && [[ $counts =~ [1-9] ]]
}
helm_at_version() {
  local version
  version=$(helm version --short) && [[ $version == "$HELM_VERSION"* ]]
}

# ---- steps ----
step "preflight: Ubuntu 24.04, root, NVIDIA driver"
require_root
if [[ -r /etc/os-release ]] && ! grep -qx 'VERSION_ID="24.04"' /etc/os-release; then
  os_name=$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)
  warn "written for Ubuntu 24.04; this is $os_name: going on"
fi
if [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) != cgroup2fs ]]; then
  warn "cgroup v1: PSI metrics (pressure stall) need cgroup v2 (docs/troubleshooting.md)"
fi
if ! already "an NVIDIA driver is loaded and nvidia-smi sees the GPUs" driver_loaded; then
  if [[ $INSTALL_DRIVER == 1 ]]; then
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y ubuntu-drivers-common
    run ubuntu-drivers install --gpgpu
    if ! dry; then die "driver installed: reboot, then run this script again"; fi
  elif dry; then
    log "  (at run time: otherwise stops here and says how to install a driver; --install-driver installs one)"
  else
    die "no NVIDIA driver loaded (nvidia-smi fails): install one (sudo ubuntu-drivers install, or --install-driver)" \
      "and reboot"
  fi
fi

step "base packages"
BASE_PACKAGES=(apt-transport-https ca-certificates curl gpg socat conntrack runc jq)
already "installed: ${BASE_PACKAGES[*]}" packages_installed "${BASE_PACKAGES[@]}" || {
  run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${BASE_PACKAGES[@]}"
}

step "kernel modules and sysctls"
ensure_kernel_settings

step "swap off, and kept off after reboot"
ensure_swap_off

step "apt repositories: Kubernetes $K8S_VERSION, CRI-O $CRIO_VERSION, NVIDIA container toolkit"
run install -d -m 0755 "$KEYRINGS"
add_key() { # name url
  already "$KEYRINGS/$1.gpg exists" test -s "$KEYRINGS/$1.gpg" ||
    run_sh "curl -fsSL '$2' | gpg --batch --yes --dearmor -o '$KEYRINGS/$1.gpg'"
}
add_key gawm-kubernetes "${K8S_REPO}Release.key"
add_key gawm-cri-o "${CRIO_REPO}Release.key"
add_key gawm-nvidia-container-toolkit "$NVIDIA_REPO/gpgkey"
write_file /etc/apt/sources.list.d/gawm-kubernetes.list <<EOF
deb [signed-by=$KEYRINGS/gawm-kubernetes.gpg] $K8S_REPO /
EOF
write_file /etc/apt/sources.list.d/gawm-cri-o.list <<EOF
deb [signed-by=$KEYRINGS/gawm-cri-o.gpg] $CRIO_REPO /
EOF
# $(ARCH) is apt's own variable, written as is.
write_file /etc/apt/sources.list.d/gawm-nvidia-container-toolkit.list <<EOF
deb [signed-by=$KEYRINGS/gawm-nvidia-container-toolkit.gpg] $NVIDIA_REPO/stable/deb/\$(ARCH) /
EOF

step "CRI-O, kubelet, kubeadm, kubectl (held at $K8S_VERSION), NVIDIA container toolkit"
if ! already "installed, kubeadm at ${K8S_PATCH:-$K8S_VERSION}" kube_tools_at_version; then
  kube_pin=${K8S_PATCH:+=$K8S_PATCH-*}
  run apt-mark unhold kubelet kubeadm kubectl cri-o
  run env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cri-o "kubelet$kube_pin" "kubeadm$kube_pin" \
    "kubectl$kube_pin" nvidia-container-toolkit
  run apt-mark hold kubelet kubeadm kubectl cri-o
fi

step "CRI-O with the NVIDIA container runtime (runtime handler 'nvidia')"
if ! already "CRI-O has an nvidia runtime" crio_has_nvidia_runtime; then
  # Writes a drop-in under /etc/crio/crio.conf.d/ adding runtime 'nvidia'; runc stays the default for other pods.
  run nvidia-ctk runtime configure --runtime=crio
  run systemctl restart crio
fi
already "crio is enabled and running" systemctl is-active --quiet crio || run systemctl enable --now crio
run systemctl enable kubelet
wait_for "CRI-O answers on its socket" "$TIMEOUT_S" crictl --runtime-endpoint "$CRIO_SOCKET" info

step "kubeadm init: single node, control-plane taint removed"
if dry; then kube_version="v${K8S_PATCH:-$K8S_VERSION.<patch of the installed kubeadm>}"; else
  kube_version=$(kubeadm version -o short)
fi
write_file "$KUBEADM_CONFIG" 0600 <<EOF
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: "$NODE_IP"
  bindPort: 6443
nodeRegistration:
  criSocket: $CRIO_SOCKET
  kubeletExtraArgs:
    - name: node-ip
      value: "$NODE_IP"
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $kube_version
networking:
  podSubnet: $POD_CIDR
  serviceSubnet: $SERVICE_CIDR
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: systemd
EOF
if ! already "the cluster is initialised ($KUBECONFIG exists)" cluster_initialised; then
  run kubeadm config images pull --config "$KUBEADM_CONFIG"
  run kubeadm init --config "$KUBEADM_CONFIG"
fi
# kubectl for the user who ran sudo (root otherwise).
KUBE_USER=${SUDO_USER:-$(id -un)}
KUBE_HOME=$(getent passwd "$KUBE_USER" | cut -d: -f6)
USER_KUBECONFIG=$KUBE_HOME/.kube/config
if ! already "$USER_KUBECONFIG is this cluster's" cmp -s "$KUBECONFIG" "$USER_KUBECONFIG"; then
  if dry; then
    log "  (at run time: an existing $USER_KUBECONFIG is kept first as $USER_KUBECONFIG.before-gawm-<UTC time>)"
  elif [[ -f $USER_KUBECONFIG ]]; then
    run cp -p "$USER_KUBECONFIG" "$USER_KUBECONFIG.before-gawm-$(date -u +%Y%m%dT%H%M%SZ)"
  fi
  run install -d -m 0700 -o "$KUBE_USER" "$KUBE_HOME/.kube"
  run install -m 0600 -o "$KUBE_USER" "$KUBECONFIG" "$USER_KUBECONFIG"
fi
wait_for "the API server is ready" "$TIMEOUT_S" kubectl get --raw=/readyz
already "the node has no control-plane taint" no_control_plane_taint ||
  run kubectl taint nodes --all node-role.kubernetes.io/control-plane:NoSchedule-

step "Calico $CALICO_VERSION, VXLAN, pods on $POD_CIDR"
# Server-side apply: the operator's CRDs are too large for client-side apply's annotation; re-applying is a no-op.
# Newer Calico releases publish the CRDs apart from the operator, in operator-crds.yaml.
if dry; then
  log "  (at run time: only when Calico $CALICO_VERSION publishes operator-crds.yaml)"
  run kubectl apply --server-side --force-conflicts -f "$CALICO_URL/operator-crds.yaml"
elif curl -fsSLI -o /dev/null "$CALICO_URL/operator-crds.yaml"; then
  run kubectl apply --server-side --force-conflicts -f "$CALICO_URL/operator-crds.yaml"
fi
run kubectl apply --server-side --force-conflicts -f "$CALICO_URL/tigera-operator.yaml"
# Some releases have the operator create its CRDs when it starts: wait for them to exist, then to be established.
wait_for "the Calico operator's CRDs are established" "$TIMEOUT_S" \
  kubectl wait --for=condition=Established --timeout=10s crd/installations.operator.tigera.io
# The pool's CIDR cannot be changed after the fact: it must equal kubeadm's podSubnet from the start.
apply_manifest "Calico installation" <<EOF
apiVersion: operator.tigera.io/v1
kind: Installation
metadata:
  name: default
spec:
  calicoNetwork:
    ipPools:
      - name: default-ipv4-ippool
        cidr: $POD_CIDR
        blockSize: 26
        encapsulation: VXLAN
        natOutgoing: Enabled
        nodeSelector: all()
---
apiVersion: operator.tigera.io/v1
kind: APIServer
metadata:
  name: default
spec: {}
EOF
wait_for "Calico is available" "$TIMEOUT_S" kubectl wait --for=condition=Available --timeout=5s tigerastatus/calico
run kubectl wait --for=condition=Ready --timeout="${TIMEOUT_S}s" nodes --all

step "RuntimeClass nvidia"
apply_manifest "RuntimeClass nvidia" <<'EOF'
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: nvidia
handler: nvidia
EOF

sharing="no time-slicing"
if ((GPU_REPLICAS > 1)); then sharing="time-sliced, $GPU_REPLICAS nvidia.com/gpu per GPU"; fi
step "NVIDIA device plugin $DEVICE_PLUGIN_VERSION ($sharing)"
if ! already "helm $HELM_VERSION is installed" helm_at_version; then
  arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
  tarball=helm-$HELM_VERSION-linux-$arch.tar.gz
  # The release tarball, checked against its published SHA-256, into /usr/local/bin.
  run_sh "cd \"\$(mktemp -d)\" && curl -fsSLO https://get.helm.sh/$tarball \
&& curl -fsSL https://get.helm.sh/$tarball.sha256sum | sha256sum -c - \
&& tar -xzf $tarball && install -m 0755 linux-$arch/helm /usr/local/bin/helm"
fi
if ((GPU_REPLICAS > 1)); then
  write_file "$DEVICE_PLUGIN_CONFIG" <<EOF
version: v1
flags:
  migStrategy: none
sharing:
  timeSlicing:
    renameByDefault: false
    failRequestsGreaterThanOne: true
    resources:
      - name: nvidia.com/gpu
        replicas: $GPU_REPLICAS
EOF
else
  write_file "$DEVICE_PLUGIN_CONFIG" <<'EOF'
version: v1
flags:
  migStrategy: none
EOF
fi
run helm repo add nvdp https://nvidia.github.io/k8s-device-plugin --force-update
# GPU feature discovery labels the node (nvidia.com/gpu.present, .product, .replicas): the DCGM exporter of the
# monitoring stack runs on nodes with nvidia.com/gpu.present=true, and gawm records the labels with each run.
run helm upgrade --install nvdp nvdp/nvidia-device-plugin --version "$DEVICE_PLUGIN_VERSION" \
  --namespace "$DEVICE_PLUGIN_NAMESPACE" --create-namespace --set runtimeClassName=nvidia --set gfd.enabled=true \
  --set-file config.map.default="$DEVICE_PLUGIN_CONFIG" --set config.default=default --wait --timeout "${TIMEOUT_S}s"
wait_for "the node advertises nvidia.com/gpu" "$TIMEOUT_S" gpus_advertised

step "gawm monitoring (Prometheus, DCGM exporter, kube-state-metrics, node-exporter)"
if [[ $MONITORING == 1 ]]; then
  if [[ -d $MONITORING_DIR ]] || dry; then
    run kubectl apply -k "$MONITORING_DIR"
  else
    warn "$MONITORING_DIR is missing in this checkout: skipped (apply it later with kubectl apply -k)"
  fi
else
  log "  skipped (--no-monitoring)"
fi

step "GPU health check"
if [[ $HEALTH_CHECK == 1 ]]; then
  run "$SCRIPT_DIR/gpu-health-check.sh" --kubeconfig "$KUBECONFIG" --timeout "$TIMEOUT_S"
else
  log "  skipped (--no-health-check)"
fi

log "done: single-node cluster on $NODE_IP; kubectl for $KUBE_USER in $USER_KUBECONFIG." \
  "Next: docs/setup-guide.md (first experiment)"
