# make test  — create/install the environment and run the test suite
# make demo  — create/install the environment and run the main job end to end on this CPU
#
# A virtual environment is created in .venv unless one is active. PyTorch: the CPU build is installed
# when torch is missing (`pip install torch==2.13.0` resolves to a CPU wheel on texocr's dev machines;
# elsewhere pass e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu").
# GPU users install their CUDA build of torch first; it is kept.

PYTHON ?= python3
ifdef VIRTUAL_ENV
VENV := $(VIRTUAL_ENV)
else
VENV := .venv
endif
BIN := $(VENV)/bin
comma := ,
EXTRAS ?= render,serve,dev
STAMP := $(VENV)/.texocr-installed-$(subst $(comma),-,$(EXTRAS))
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=

.PHONY: install test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: install
	$(BIN)/python -m texocr.demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
