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

.PHONY: install train test test-slow lint lock clean-runs

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

train: install
	$(PY) -m training.train --config $(CONFIG) $(ARGS)

# the README's training figures, from a fresh run of the default config (minutes; states the CPU)
.PHONY: figures
figures: install
	$(PY) bench/readme_figures.py --write-readme

# Test files run in parallel, one worker a core (at most 4): a file's tests stay in one worker, so its
# module fixtures are built once. `make test PYTEST_ARGS=-n0` runs them in one process.
PYTEST_ARGS ?=
test: install
	$(VENV)/bin/ruff check provenance training tests bench
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadfile $(PYTEST_ARGS)

# The long checks (torchrun, HF Trainer, DVC repro: over a minute each on 2 cores).
test-slow: install
	$(PY) -m pytest -q -m slow -n auto --maxprocesses=4 --dist loadfile $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check provenance training tests bench

# Rewrite the lock from the current venv (after changing pyproject.toml).
lock: install
	{ echo "# Exact environment of a run: installed by 'make install' (torch first, by exact pin)."; \
	  echo "# Regenerate with: make lock"; \
	  $(PY) -m pip freeze --all --exclude-editable | grep -v -E "^(pip|fullyopen)==" | sed 's/+cpu$$//'; } > requirements.lock

clean-runs:
	rm -rf runs

# Release the newest run (latest started_at in $(RUNS_DIR)/*/run.json): model card, data cards, SLSA provenance,
# openness record, report, signature. The key lives outside the repository and is made on first use.
RELEASE_KEY_DIR ?= $(HOME)/.config/fullyopen
RELEASE_KEY ?= $(RELEASE_KEY_DIR)/release-key.pem
RELEASE_ARGS ?=
RUNS_DIR ?= runs
.PHONY: release
release: install
	@test -f "$(RELEASE_KEY)" || $(PY) -m provenance.cli keygen -o "$(dir $(RELEASE_KEY))"
	@run=$$($(PY) -c 'import json, pathlib; r = sorted((json.loads(p.read_text()).get("started_at") or "", str(p.parent)) for p in pathlib.Path("$(RUNS_DIR)").glob("*/run.json")); print(r[-1][1] if r else "")'); \
	if [ -z "$$run" ]; then echo "make release: no run in $(RUNS_DIR)/ (run 'make train' first)" >&2; exit 2; fi; \
	echo "releasing $$run"; \
	$(PY) -m provenance.cli release "$$run" --key "$(RELEASE_KEY)" $(RELEASE_ARGS)

# Reproduce the latest `make train` run (the newest folder in runs/: run ids sort by time) and check it
# step by step; REPRODUCE_ARGS passes options, e.g. REPRODUCE_ARGS="--steps 50" or "--from-step 400".
.PHONY: reproduce
reproduce: install
	@last=$$(ls -d runs/*/ 2>/dev/null | sort | tail -1); \
	if [ -z "$$last" ]; then echo "no run in runs/: run 'make train' first" >&2; exit 2; fi; \
	$(PY) -m provenance.cli reproduce "$${last%/}" $(REPRODUCE_ARGS)

# The default model as a graph of runs: data steps, two training stages, a merge; then prov lineage,
# prov audit --lineage and prov release --lineage (docs/lineage.md). Sizes: PIPELINE_STEPS1, PIPELINE_STEPS2, ...
.PHONY: pipeline
pipeline: install
	PY=$(PY) RELEASE_KEY="$(RELEASE_KEY)" bash training/pipeline.sh
