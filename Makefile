# Two commands on a fresh machine: `make demo` (the main job, `nonnormal compare` on digits)
# and `make test` (the test suite).
# Each sets up .venv on first use; torch 2.13.0 (CPU) is installed first so that pip never
# pulls a multi-GB CUDA build through the `torch>=2.2` requirement.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-slow lint clean

$(BIN)/nonnormal: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,data,diffusers,bench,tensorboard]'
	touch $@

setup: $(BIN)/nonnormal

demo: setup
	$(BIN)/nonnormal compare

test: setup
	$(BIN)/python -m pytest -n 2  # both cores: one OpenMP thread per worker (tests/conftest.py)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # the layers in pyproject.toml's [tool.importlinter]

test-slow: setup
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) runs .pytest_cache
