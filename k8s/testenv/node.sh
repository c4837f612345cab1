#!/usr/bin/env bash
# A local single-node Kubernetes cluster with a real kubelet (k8s/testenv/node.py does the work; this is its shell
# entry point, for `make cluster-up` and people who expect a script):
#
#   k8s/testenv/node.sh up       # start it, wait until the node is Ready, print the kubeconfig path (as root)
#   k8s/testenv/node.sh status   # exit 0 when it runs and the node is Ready
#   k8s/testenv/node.sh down     # stop it and restore the host as it was before up (a no-op without a node)
#
# State (kubeconfig, logs): ${GAWM_NODE_DIR:-/var/lib/gawm-node}. Binaries and images: `make test-prereqs`.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case ${1:-} in
  up|down|status|check) ;;
  -h|--help|"") sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "node.sh: unknown command ${1} (up, down, status, check)" >&2; exit 2 ;;
esac
exec "${GAWM_SYSTEM_PYTHON:-python3}" "$here/node.py" "$@"
