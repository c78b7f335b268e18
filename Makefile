# QFLARE — two commands set everything up on a fresh machine:
#   make demo   runs the main job (embedded defaults)
#   make test   runs the whole test suite (ruff, mypy --strict, import-linter, pytest)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck contracts pytest bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[fl,dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/qflare demo

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

contracts: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck contracts pytest

bench: $(STAMP)
	$(BIN)/qflare bench secagg --json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
