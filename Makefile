# The README's two commands:  make chat  (set up, then chat)   and   make test  (set up, then test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= dream
ARGS ?=

.PHONY: setup chat test clean-exports

# torch goes in first, pinned to the CPU wheel: a looser spec pulled in by another package would
# fetch a multi-GB CUDA build. The stamp file makes re-runs instant until setup.cfg changes.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[export,test]'
	touch $@

setup: $(VENV)/.installed

chat: setup
	$(BIN)/chatbot-llm chat --model $(MODEL) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q

clean-exports:
	rm -rf onnx_models
