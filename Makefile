# The README's two commands:  make chat  (set up, then chat)   and   make test  (set up, then test);
# make serve  (set up, then serve the OpenAI API and the chat page).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= dream
ARGS ?=

.PHONY: setup setup-gpu chat serve test clean-exports
.PRECIOUS: checkpoints/%/config.json

# torch goes in first, pinned to the CPU wheel: a looser spec pulled in by another package would
# fetch a multi-GB CUDA build. The stamp file makes re-runs instant until setup.cfg changes.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[export,train,bench,serve,ray,test]'
	touch $@

setup: $(VENV)/.installed

# For --device cuda: onnxruntime-gpu in place of onnxruntime (both provide the onnxruntime module), with
# the CUDA runtime and cuDNN as pip packages (its cuda and cudnn extras): only the NVIDIA driver is needed.
setup-gpu: setup
	$(BIN)/python -m pip uninstall --quiet -y onnxruntime onnxruntime-gpu
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps 'onnxruntime-gpu>=1.21'
	$(BIN)/python -m pip install --quiet 'onnxruntime-gpu[cuda,cudnn]>=1.21'
	$(BIN)/python -c "import onnxruntime as o; print('onnxruntime providers:', o.get_available_providers())"

# MODEL=checkpoints/<shape> (gpt2-124m or tiny) is made on first use: a random-weights GPT-2 of that
# shape, to try the pipeline before you have a fine-tuned checkpoint of your own.
chat: setup $(if $(filter checkpoints/%,$(MODEL)),$(MODEL)/config.json)
	$(BIN)/chatbot-llm chat --model $(MODEL) $(ARGS)

# The OpenAI-compatible server and its chat page on http://127.0.0.1:8000/ (ARGS="--port 9000 ..." for more).
serve: setup
	$(BIN)/chatbot-llm serve --model $(MODEL) $(ARGS)

checkpoints/%/config.json: | setup
	$(BIN)/python benchmarks/make_random_checkpoint.py checkpoints/$* --shape $*

test: setup
	$(BIN)/python -m pytest -q

clean-exports:
	rm -rf onnx_models
