# Everything runs from a project-local virtualenv so a fresh machine needs only Python 3.11.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint typecheck unit integration bench chaos clean

$(STAMP): pyproject.toml devtools/pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -e ./devtools
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/portrait demo

lint: $(STAMP)
	$(BIN)/ruff check stream devtools tests
	$(BIN)/ruff format --check stream devtools tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy stream devtools/portrait_dev

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

test: lint typecheck
	$(BIN)/pytest -q -ra --durations=15

# Long failure injection (minutes): 20 SIGKILLs across 2 workers, a Valkey kill -9 and a broker
# restart during a 100k-event replay on Apache Kafka; prints the report in docs/reliability.md.
chaos: $(STAMP)
	$(BIN)/pytest -q -s -o addopts="" -o timeout=2400 tests/chaos

bench: $(STAMP)
	$(BIN)/pip install -q -e './devtools[bench]'
	$(BIN)/portrait bench

clean:
	rm -rf $(VENV) .portrait .mypy_cache .ruff_cache .pytest_cache
