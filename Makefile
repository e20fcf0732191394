# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "== installing the hash-pinned requirements into $(VENV) (about 30 s on a fresh machine)"
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar off --require-hashes -r requirements.lock
	@echo "== installing chatimg itself (editable: the chatimg-client command)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

## Serve the app on http://127.0.0.1:8000 with embedded defaults (SQLite,
## in-memory channel layer, local media/, the built-in offline model).
run: $(STAMP)
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py recover_turns
	$(BIN)/python manage.py ensure_demo_user
	$(BIN)/python manage.py runserver 127.0.0.1:8000

## Lint, then the whole suite: SQLite + in-memory layer, the browser tests,
## and again on PostgreSQL + Redis when they are reachable.
test: $(STAMP)
	./scripts/test

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) test-results
