# pcl: magnitude pruning vs contrastive learning. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROFILE ?= auto
DATA ?= $(or $(PCL_DATA),data)
RUNS ?= runs
# torch/torchvision: the one pinned pair; a range in pyproject.toml keeps pip from fetching another
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: help setup test test-fast reproduce figures bench lab clean clean-runs

help:
	@echo "make setup       create $(VENV), install pcl with its test extras and the nbstripout filter"
	@echo "make test        the whole test suite, notebook chain included (smoke preset, synthetic data)"
	@echo "make reproduce   run every notebook with papermill: PROFILE=smoke|cpu|paper (default: paper on a GPU, else cpu), DATA=<CIFAR-10 root>"
	@echo "make figures     re-run only the analysis notebooks (04-09) on the stored runs"
	@echo "make bench       training throughput and k-NN speed, pcl vs baselines"
	@echo "make lab         open JupyterLab on notebooks/"
	@echo "make clean       remove caches and temporary files (never trained runs)"
	@echo "make clean-runs  DELETE the run store $(RUNS)/ (all trained models)"

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# nbstripout as a git filter for the source notebooks only (.gitattributes: notebooks/*.ipynb);
# the executed copies in notebooks/executed/ keep their outputs
setup: $(VENV)/.installed
	@if git rev-parse --git-dir >/dev/null 2>&1; then \
	  git config filter.nbstripout.clean "$(CURDIR)/$(VENV)/bin/nbstripout"; \
	  git config filter.nbstripout.smudge cat; \
	  git config filter.nbstripout.required true; \
	  git config diff.ipynb.textconv "$(CURDIR)/$(VENV)/bin/nbstripout -t"; fi

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# PROFILE=auto: paper when a CUDA GPU answers nvidia-smi, else cpu; said on the first line
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(PROFILE),auto)
  RESOLVED := $(if $(GPU),paper,cpu)
  WHY := $(if $(GPU),a CUDA GPU is present (nvidia-smi),no CUDA GPU found (nvidia-smi)); set PROFILE=smoke|cpu|paper to choose
else
  RESOLVED := $(PROFILE)
  WHY := PROFILE=$(PROFILE) given
endif

reproduce:
	@echo "[reproduce] profile '$(RESOLVED)': $(WHY)"
	@$(MAKE) --no-print-directory setup
	PCL_DATA=$(DATA) $(PY) -m pcl.reproduce --profile $(RESOLVED) --data $(DATA) --runs $(RUNS) $(if $(ONLY),--only $(ONLY))

# the analysis notebooks only, on the stored runs
figures:
	@$(MAKE) --no-print-directory reproduce ONLY=04,05,06,07,08,09

bench: setup
	$(PY) benchmarks/bench.py

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf .pytest_cache **/__pycache__ pcl/__pycache__ tests/__pycache__ *.egg-info

clean-runs:
	@echo "deleting every trained run in $(RUNS)/"; rm -rf $(RUNS)
