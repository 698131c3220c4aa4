# The two commands of the README:  `make demo` (the main job)  and  `make test` (the test suite).
# Each does its own set-up on a fresh clone: a .venv with torch 2.13.0 installed first (a plain torch
# requirement would pull a multi-GB CUDA build), then this package, then MovieLens-100K's wheel.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ptmrec-installed
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

.PHONY: install demo test test-fast test-all clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps recbole==1.2.1
	$(PY) -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), f'torch {v} != 2.13.0'"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ptmrec pipeline --config configs/demo-ml100k.yaml

# CI's tier (`.ci/run`): everything but the `slower` tier (~14 min of fault injection, two nodes, the layer
# cache's interrupted build, bundled encoders' prompts), which `make test-all` adds.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slower"

test-all: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf runs data wandb .pytest_cache
