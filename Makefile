# lmmops: `make run` runs the whole pipeline on the embedded default, `make test` runs the test suite.
# Both create .venv in the repo root when it is missing and (re)install when pyproject.toml changes.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch is installed before the rest so that pip takes the CPU wheel on machines without a GPU;
# a machine that already has a torch (e.g. a CUDA build) keeps it. Override: make TORCH_SPEC=...
TORCH_SPEC ?= torch==2.13.0

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# telemetry off, caches inside the repo, offline (lmmops.env sets the same for its own processes)
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export DVC_IGNORE_UPDATER := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.cache/dvc-site
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export PREFECT_HOME := $(CURDIR)/.prefect
export HF_HOME := $(CURDIR)/.cache/huggingface
export XDG_CACHE_HOME := $(CURDIR)/.cache
export SQLITE_TMPDIR ?= /tmp
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run test test-fast lint bench ui setup clean-results help

help:
	@echo "make run    set up .venv, run the pipeline (dvc repro) on the embedded default, print the report"
	@echo "make test   set up .venv, run the whole test suite (slow integration tests included)"
	@echo "make lint   ruff check"
	@echo "make bench  run the benchmarks in benchmarks/ (each prints a table)"
	@echo "make ui     MLflow UI for this project on http://127.0.0.1:5000"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install --quiet --no-compile --upgrade pip
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet --no-compile "$(TORCH_SPEC)"
	@$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	@# pip byte-compiles one file after another (~80 s here); compileall on every core does the same in ~40 s.
	@# A file that does not compile (a package's deliberately broken test fixture) is skipped, as pip does.
	@$(PY) -m compileall -q -j 0 "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
		> /dev/null 2>&1 || true
	@touch $(STAMP)

run: $(STAMP)
	@echo "== lmmops: data/ (restore from DVC or generate)"
	@lmmops ensure-data
	@echo "== dvc repro: every stage in dvc.yaml (unchanged stages are skipped)"
	@dvc repro
	@echo "== lmmops report"
	@lmmops report

test: $(STAMP)
	@$(PY) -m pytest

test-fast: $(STAMP)
	@$(PY) -m pytest -m "not slow"

lint: $(STAMP)
	@$(VENV)/bin/ruff check .

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b; done

ui: $(STAMP)
	@lmmops ui

clean-results:
	rm -rf mlflow/mlflow.db mlflow/artifacts .prefect
