#!/usr/bin/env bash
# Former name of k8s/testenv/build-kubernetes.sh (which now also builds the kubelet, kube-proxy, kubectl and the node's
# images, with the reflect2 fix); kept so that older commands and notes still work.
exec bash "$(dirname "${BASH_SOURCE[0]}")/build-kubernetes.sh" "$@"
