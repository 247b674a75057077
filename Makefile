# jobgate — every entry point a developer or CI needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PY_SOURCES := operator localcluster tests $(wildcard bench)

.PHONY: help venv binaries cluster cluster-down test unit lint crds lock demo bench image clean

help:
	@echo "make demo         run jobgate on a local control plane and watch it gate Jobs"
	@echo "make test         run lint, unit and integration tests (builds the control plane on first use)"
	@echo "make cluster      start the local control plane in the background (.cluster/kubeconfig)"
	@echo "make cluster-down stop it"
	@echo "make crds         regenerate the CRDs (crds/ and the chart's files/crds/) from the pydantic models"
	@echo "make bench        run the benchmarks and write bench/results/"
	@echo "make unit         the unit tests alone: no cluster, no built binary"
	@echo "make lint         ruff, mypy and hadolint"
	@echo "make binaries     build the control plane's binaries into ~/.cache/jobgate (once)"
	@echo "make venv         the virtualenv in .venv with jobgate and its test tools"
	@echo "make clean        remove .venv, .cluster and the tools' caches"
	@echo "make image        build the operator image (Docker, else buildah) and write build/image/*.tar"
	@echo "make lock         re-pin the image's Python packages (requirements*.lock) from pyproject.toml"

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

# Four workers, each with its own local control plane: most of a cluster test waits on kwok and the
# API server (a run with two used 40 % of the two CPUs). Measured here on 2 CPUs: 11 min 30 s with two,
# 9 min 31 s with three, 7 min 37 s with four (load average 6), the fault suite passing under each.
TEST_WORKERS ?= 4

test: lint binaries
	$(PY) -m pytest -q -n $(TEST_WORKERS)

demo: binaries
	$(PY) -m localcluster.demo

crds: $(STAMP)
	$(PY) -m jobgate._build.crd > charts/jobgate/files/crds/concurrencypolicies.jobgate.dev.yaml
	$(PY) -m jobgate._build.crd --cluster > charts/jobgate/files/crds/clusterconcurrencypolicies.jobgate.dev.yaml
	mkdir -p crds && cp charts/jobgate/files/crds/*.jobgate.dev.yaml crds/
	$(PY) -m jobgate._build.crd --update-readme

# The image installs only these pins, hash-checked. Existing pins are kept unless the project's
# requirements exclude them; `make lock LOCK_ARGS=--upgrade` moves everything to the newest release.
LOCK_ARGS ?=
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --generate-hashes \
	--allow-unsafe --strip-extras --annotation-style=line --no-emit-find-links $(LOCK_ARGS)

lock: $(STAMP)
	$(PY) -m pip install -q 'pip-tools>=7.4'
	$(PIP_COMPILE) --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) --all-build-deps --only-build-deps --output-file requirements-build.lock pyproject.toml

# Runs every scenario at its default size and rewrites bench/results/ (about 10 minutes here, plus
# Kueue side by side); then the refill scenario once more at a tenth of the size, where the control
# plane is not saturated. Kueue is built from its Go module first (minutes, once).
bench: binaries
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m localcluster.build --extra kueue
	$(PY) -m bench
	$(PY) -m bench refill --set refill.jobs=200 --set refill.keys=20 --out bench/results/light-load

# Docker where its engine answers, else buildah (storage in ~/.cache/jobgate/containers) on a Debian
# base made by debootstrap; an unchanged image is reused. Writes an OCI archive and a docker-archive.
image: $(STAMP)
	$(PY) -m localcluster.image

clean:
	rm -rf $(VENV) .cluster .mypy_cache .ruff_cache .pytest_cache build/image
