# jobgate — every entry point a developer or CI needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PY_SOURCES := operator localcluster tests $(wildcard bench)

.PHONY: help venv binaries cluster cluster-down test unit lint crds demo bench clean

help:
	@echo "make demo         run jobgate on a local control plane and watch it gate Jobs"
	@echo "make test         run lint, unit and integration tests (builds the control plane on first use)"
	@echo "make cluster      start the local control plane in the background (.cluster/kubeconfig)"
	@echo "make cluster-down stop it"
	@echo "make crds         regenerate crds/ from the pydantic models"
	@echo "make bench        run the benchmarks and write bench/results/"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

venv: $(STAMP)

binaries: $(STAMP)
	$(PY) -m localcluster.build

cluster: binaries
	$(PY) -m localcluster up --dir .cluster

cluster-down: $(STAMP)
	$(PY) -m localcluster down --dir .cluster

lint: $(STAMP)
	$(VENV)/bin/ruff check $(PY_SOURCES)
	$(VENV)/bin/ruff format --check $(PY_SOURCES)
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

unit: $(STAMP)
	$(PY) -m pytest -q -m "not cluster and not binaries"

# Two workers, each with its own local control plane: most of a cluster test is waiting on kwok.
TEST_WORKERS ?= 2

test: lint binaries
	$(PY) -m pytest -q -n $(TEST_WORKERS)

demo: binaries
	$(PY) -m localcluster.demo

crds: $(STAMP)
	$(PY) -m jobgate._build.crd > crds/concurrencypolicies.jobgate.dev.yaml
	$(PY) -m jobgate._build.crd --update-readme

# Runs every scenario at its default size and rewrites bench/results/ (about 10 minutes here, plus
# Kueue side by side); then the refill scenario once more at a tenth of the size, where the control
# plane is not saturated. Kueue is built from its Go module first (minutes, once).
bench: binaries
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m localcluster.build --extra kueue
	$(PY) -m bench
	$(PY) -m bench refill --set refill.jobs=200 --set refill.keys=20 --out bench/results/light-load

clean:
	rm -rf $(VENV) .cluster .mypy_cache .ruff_cache .pytest_cache
