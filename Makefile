# gawm: the two commands are `make demo` and `make test`; each sets up everything it needs first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gawm-installed
TEST_DATA ?= build/test-data
PYTEST_ARGS ?=

.PHONY: demo test env sysdeps test-sysdeps lab runs clean-test-data

demo: env  ## all three workloads on the CPU, a short load sweep each, figures in data/figures/
	$(BIN)/gawm demo

test: env test-sysdeps clean-test-data  ## the whole suite: unit, integration (real servers, Prometheus, notebooks), nbval
	GAWM_RAW_DIR=$(abspath $(TEST_DATA))/raw GAWM_FIGURES_DIR=$(abspath $(TEST_DATA))/figures \
	  $(BIN)/python -m pytest tests notebooks --nbval-lax -p no:cacheprovider $(PYTEST_ARGS); \
	  status=$$?; if [ $$status -eq 5 ]; then echo "pytest collected no tests: that is a failure" >&2; exit 1; fi; \
	  exit $$status

env: sysdeps $(STAMP)

sysdeps:
	$(PYTHON) -m gawm_lib.sysdeps --install

test-sysdeps:
	$(PYTHON) -m gawm_lib.sysdeps --install --tests

# torch and torchvision are pinned to the pair that imports together here; pip takes them from a local wheel store
# where the machine has one (see README: Install).
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
