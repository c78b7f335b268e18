# QFLARE — two commands set everything up on a fresh machine:
#   make demo   runs the main job (embedded defaults)
#   make test   runs the whole test suite (ruff, mypy --strict, import-linter, pytest)
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck contracts pytest bench settings-doc clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[fl,dev,server]'
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

# The benchmark points of docs/benchmarks.md (JSON under docs/bench/).
bench: $(STAMP)
	mkdir -p docs/bench
	$(BIN)/qflare bench secagg --clients 100 --dim 100000 --dropout 0.3 --drop-stage R3 --k 31 --t 16 --corrupt 0 --repeat 5 --json --output docs/bench/server_n100_after_masked.json >/dev/null
	$(BIN)/qflare bench secagg --clients 100 --dim 100000 --dropout 0.3 --drop-stage R3 --repeat 5 --json --output docs/bench/server_n100_after_masked_finder.json >/dev/null
	$(BIN)/qflare bench secagg --clients 100 --dim 100000 --dropout 0.3 --drop-stage R2 --k 31 --t 16 --corrupt 0 --repeat 5 --json --output docs/bench/server_n100_before_masked.json >/dev/null
	$(BIN)/qflare bench secagg --clients 100 --dim 100000 --dropout 0.3 --drop-stage R2 --repeat 5 --json --output docs/bench/server_n100_before_masked_finder.json >/dev/null
	$(BIN)/qflare bench secagg --clients 20 --dim 1000000 --k 11 --t 6 --corrupt 0 --repeat 5 --json --output docs/bench/client_n20_d1m.json >/dev/null
	$(BIN)/qflare bench secagg --clients 20 --dim 1000000 --k 11 --t 7 --repeat 5 --json --output docs/bench/client_n20_d1m_t7.json >/dev/null
	$(BIN)/qflare bench secagg --clients 100 --dim 100000 --k 15 --t 8 --corrupt 0 --repeat 5 --json --output docs/bench/round_n100_k15.json >/dev/null
	$(BIN)/qflare bench secagg --clients 100 --dim 100000 --k 15 --t 11 --repeat 5 --json --output docs/bench/round_n100_k15_t11.json >/dev/null
	$(BIN)/qflare bench secagg --clients 1000 --dim 100000 --dropout 0.1 --drop-stage R2 --json --output docs/bench/n1000.json >/dev/null

# README's table of server settings, generated from ServerSettings (tests/cli checks it is current).
settings-doc: $(STAMP)
	$(BIN)/python -c 'from qflare.cli.settings_doc import update_readme; update_readme("README.md")'

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
