# Two commands do all set-up on a fresh machine:
#   make demo   the whole lifecycle on the embedded data (offline)
#   make test   the whole test suite (lint, import rules and type check included)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned so pip takes the build that matches this release; on a machine with a local
# CPU wheel it is used as is. llama.cpp builds only the library (no examples, tools or server).
TORCH_SPEC ?= torch==2.13.0
export CMAKE_ARGS ?= -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DGGML_NATIVE=OFF

STAMP := $(VENV)/.installed

.PHONY: setup demo test lint importlint typecheck wheelcheck bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/workbench demo

test: lint importlint typecheck
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check workbench plugins tests benchmarks

# The layering of docs/architecture.md, as contracts in .importlinter (every plugin included).
importlint: setup
	$(PY) .ci/lint-imports

# mypy over workbench/ and plugins/ (configured in pyproject.toml; cache in .mypy_cache).
typecheck: setup
	$(VENV)/bin/mypy

# A non-editable install (wheel into a fresh venv) runs the demo data outside the repository.
wheelcheck: setup
	.ci/wheel-check $(PY)

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache
