# Two commands do all the set-up on a machine with Python 3.11+:
#   make run    create .venv, install, start the embedded PostgreSQL, migrate, load the demo, serve the API
#   make test   the same bootstrap, then lint, types and the whole test suite
# Set INTERACTION_STORE_DATABASE_URL to use a PostgreSQL server of your own instead.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CLI    := $(BIN)/interaction-store

.PHONY: run test lint typecheck pytest schemas bench clean help

help:
	@echo "make run      serve the API and projections on 127.0.0.1:8000, embedded PostgreSQL, demo data"
	@echo "make test     lint, type-check and run the whole test suite"
	@echo "make schemas  regenerate schemas/ from the event models"
	@echo "make bench    run the benchmarks (bench/append.py, bench/projections.py, bench/api.py, bench/email_import.py, bench/audit_verify.py, bench/privacy.py, bench/prepare.py)"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; set PYTHON=python3.x")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	$(CLI) serve --demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# In parallel, each worker starts an embedded server of its own. A server given by URL (or
# a container) is shared, where a test's read right after a commit can stop short while
# another test's transaction ends (README, read_all): there the tests run one at a time.
PYTEST_WORKERS ?= $(if $(INTERACTION_STORE_TEST_DATABASE_URL)$(INTERACTION_STORE_TEST_DOCKER),0,auto)

pytest: $(STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --maxprocesses 4

schemas: $(STAMP)
	$(BIN)/python -m interaction_store.schemas

bench: $(STAMP)
	$(BIN)/python bench/append.py
	$(BIN)/python bench/projections.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/email_import.py
	$(BIN)/python bench/audit_verify.py
	$(BIN)/python bench/privacy.py
	$(BIN)/python bench/prepare.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
