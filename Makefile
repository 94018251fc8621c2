# pcl: magnitude pruning vs contrastive learning. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= auto
# the presets (pcl.presets.PRESETS, in its order; a test keeps the two equal): PROFILE is one of them or auto
PRESETS := paper cpu smoke extended smoke-extended
DATA ?= $(or $(PCL_DATA),data)
RUNS ?= runs
# where the training notebooks' runs train: local | submitit-local | slurm (README: SLURM section)
EXECUTOR ?= local
SLURM_PARTITION ?=
SLURM_GPUS ?= 1
SLURM_TIME ?=
SLURM_ARRAY_PARALLELISM ?=
SLURM_LOG_DIR ?=
SLURM_EXTRA ?=
# seconds before a run lease nobody refreshed may be taken over (default 1800; README: SLURM section)
STALE_AFTER ?=
# torch/torchvision: the one pinned pair; a range in pyproject.toml keeps pip from fetching another
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: help setup lint test test-fast test-cluster reproduce figures check-study bench gpu-check lab clean clean-runs

# `make help` prints the `## ` comment on each target's line: give every new target one
help: ## list every target and what it does
	@grep -hE '^[a-zA-Z][a-zA-Z0-9_-]*:([^=].*)?## ' $(MAKEFILE_LIST) | \
	  awk -F ':.*## ' '{printf "make %-11s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# nbstripout as a git filter for the source notebooks only (.gitattributes: notebooks/*.ipynb);
# the executed copies in notebooks/executed/ keep their outputs
setup: $(VENV)/.installed ## create .venv, install pcl with its test extras and the nbstripout filter
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean "$(CURDIR)/$(VENV)/bin/nbstripout"; \
	  git config filter.nbstripout.smudge cat; \
	  git config filter.nbstripout.required true; \
	  git config diff.ipynb.textconv "$(CURDIR)/$(VENV)/bin/nbstripout -t"; fi

lint: setup ## ruff: lint and import order of pcl, tests and benchmarks (config in pyproject.toml)
	$(VENV)/bin/ruff check pcl tests benchmarks

test: setup lint ## lint, then the whole test suite, notebook chain included (smoke + SimCLR, synthetic data)
	$(PY) -m pytest -q

test-fast: setup ## the test suite without the slow notebook chain
	$(PY) -m pytest -q -m "not slow"

# root only (a scratch machine or container): apt-installs slurm-wlm and munge when missing, runs
# munged/slurmctld/slurmd from cluster/slurm.conf.in, stops them at the end; elsewhere it fails
test-cluster: setup ## one-node SLURM here (root; apt), then the tests marked cluster via sbatch/scontrol
	cluster/run.sh $(PY) -q

# PROFILE=auto: paper when a CUDA GPU answers nvidia-smi, else cpu; said on the first line
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(PROFILE),auto)
  RESOLVED := $(if $(GPU),paper,cpu)
  WHY := $(if $(GPU),a CUDA GPU is present (nvidia-smi),no CUDA GPU found (nvidia-smi)); set PROFILE=smoke|cpu|paper|extended|smoke-extended to choose
else
  RESOLVED := $(PROFILE)
  WHY := PROFILE=$(PROFILE) given
endif

reproduce: ## run every notebook with papermill: PROFILE=smoke|cpu|paper|extended|smoke-extended (default: paper on a GPU, else cpu), DATA=<CIFAR-10 root>
	@$(if $(and $(filter 1,$(words $(RESOLVED))),$(filter $(RESOLVED),$(PRESETS))),true,\
	  echo "[reproduce] unknown profile '$(PROFILE)'; allowed: auto $(PRESETS)" >&2; exit 2)
	@echo "[reproduce] profile '$(RESOLVED)': $(WHY)"
	@$(MAKE) --no-print-directory setup
	PCL_DATA=$(DATA) $(PY) -m pcl.reproduce --profile $(RESOLVED) --data $(DATA) --runs $(RUNS) $(if $(ONLY),--only $(ONLY)) \
	  --executor $(EXECUTOR) $(if $(SLURM_PARTITION),--slurm-partition '$(SLURM_PARTITION)') \
	  $(if $(SLURM_GPUS),--slurm-gpus $(SLURM_GPUS)) $(if $(SLURM_TIME),--slurm-time '$(SLURM_TIME)') \
	  $(if $(SLURM_ARRAY_PARALLELISM),--slurm-array-parallelism $(SLURM_ARRAY_PARALLELISM)) \
	  $(if $(SLURM_LOG_DIR),--slurm-log-dir '$(SLURM_LOG_DIR)') $(if $(SLURM_EXTRA),--slurm-extra '$(SLURM_EXTRA)') \
	  $(if $(STALE_AFTER),--stale-after $(STALE_AFTER))

# the analysis notebooks only, on the stored runs
figures: ## re-run only the analysis notebooks (04-09) on the stored runs
	@$(MAKE) --no-print-directory reproduce ONLY=04,05,06,07,08,09

# retrains the sample in pcl.check_study.SAMPLE into a temporary store (README: Reproducibility
# promise); WORKERS: worker processes, one torch thread each (default: one per core, at most 4)
WORKERS ?=
check-study: ## retrain 4 runs of the committed study results/<PROFILE> and compare: bit for bit on its machine, else within seed noise
	@$(if $(and $(filter 1,$(words $(RESOLVED))),$(filter $(RESOLVED),$(PRESETS))),true,\
	  echo "[check-study] unknown profile '$(PROFILE)'; allowed: auto $(PRESETS)" >&2; exit 2)
	@$(MAKE) --no-print-directory setup
	PCL_DATA=$(DATA) $(PY) -m pcl.check_study --preset $(RESOLVED) --data $(DATA) $(if $(WORKERS),--workers $(WORKERS))

# faiss-cpu (the `bench` extra) is the k-NN reference only: installed here, not by setup
bench: setup ## training (bf16, fp32), exact k-NN vs faiss/sklearn, eval batch sizes: pcl vs baselines
	@$(PY) -c 'import faiss' 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/bench.py

# a $(PYTHON) whose PyTorch sees CUDA (a GPU node's own, often offline) is used as it is, installing
# nothing; otherwise .venv (make setup). The first line says which. GPU_CHECK_ARGS: e.g. --budget 300
GPU_CHECK_ARGS ?=
gpu-check: ## all CUDA work in <= 8 min: cuda tests, timings, results/gpu/<device>.json, GPU-hours
	@if $(PYTHON) -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then \
	  echo "[gpu-check] using $(PYTHON) and its own PyTorch (CUDA available): installing nothing"; \
	  $(PYTHON) benchmarks/gpu_check.py --data '$(DATA)' $(GPU_CHECK_ARGS); \
	else \
	  echo "[gpu-check] $(PYTHON) has no PyTorch that sees CUDA: using $(VENV) (make setup)"; \
	  $(MAKE) --no-print-directory setup && $(PY) benchmarks/gpu_check.py --data '$(DATA)' $(GPU_CHECK_ARGS); \
	fi

# JupyterLab refuses to start as root (containers, Colab-style machines) unless given --allow-root
LAB_UID ?= $(shell id -u)
lab: setup ## open JupyterLab on notebooks/ (with --allow-root only when run as root)
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(LAB_UID)),--allow-root )notebooks/

clean: ## remove caches and temporary files (never trained runs)
	rm -rf .pytest_cache **/__pycache__ pcl/__pycache__ tests/__pycache__ *.egg-info

clean-runs: ## DELETE the run store RUNS=<dir> (default runs/: all trained models); refuses any other folder
	@test -x $(PY) || { echo "clean-runs: $(PY) is missing: run make setup first (it checks RUNS with pcl)" >&2; exit 2; }
	@$(PY) -m pcl.clean_runs --is-store '$(RUNS)' || \
	  { echo "clean-runs: refusing to delete RUNS='$(RUNS)' (not a run store: no .pcl-store marker, or more than method/<run hash>/ folders)" >&2; exit 2; }
	@if [ -L '$(RUNS)' ]; then echo "removing the link $(RUNS) (the runs it points to are kept)"; \
	  else echo "deleting every trained run in $(RUNS)/"; fi; rm -rf -- '$(RUNS)'
