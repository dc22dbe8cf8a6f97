# fullyopen: `make train` runs the default open model end to end; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/tiny-lm.yaml
ARGS ?=

# Offline by default, every cache inside the checkout.
export HF_HUB_OFFLINE ?= 1
export HF_HOME := $(CURDIR)/.cache/huggingface
export HF_DATASETS_CACHE := $(CURDIR)/.cache/huggingface/datasets
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/torchinductor
export WANDB_DIR := $(CURDIR)/.cache/wandb
export WANDB_MODE ?= disabled
export DVC_NO_ANALYTICS := 1
export DVC_SITE_CACHE_DIR := $(CURDIR)/.cache/dvc-site
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install train test lint lock clean-runs

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

train: install
	$(PY) -m training.train --config $(CONFIG) $(ARGS)

test: install
	$(VENV)/bin/ruff check provenance training tests bench
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check provenance training tests bench

# Rewrite the lock from the current venv (after changing pyproject.toml).
lock: install
	{ echo "# Exact environment of a run: installed by 'make install' (torch first, by exact pin)."; \
	  echo "# Regenerate with: make lock"; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v -E "^(pip|fullyopen)==" | sed 's/+cpu$$//'; } > requirements.lock

clean-runs:
	rm -rf runs
