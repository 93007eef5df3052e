# Two entry points: `make demo` (the main job) and `make test`. Both set up a fresh machine first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# where torch comes from: pip's configured index by default; PyPI's Linux wheel brings CUDA packages, so on a
# CPU machine use PyTorch's CPU index: make TORCH_INDEX=https://download.pytorch.org/whl/cpu demo
TORCH_INDEX ?=
EXTRAS ?= dev,training,kernels,serving,export

.PHONY: setup demo test lint
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned requirement would pull several GB of CUDA packages
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo: setup
	$(BIN)/rfkp demo

lint: setup
	$(BIN)/ruff check rfkp trainer tests benchmarks

test: setup lint
	$(BIN)/python -m pytest -q --durations=10
