# The two commands a new machine needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint install install-django6 clean

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "== installing the hash-pinned requirements into $(VENV) (about 30 s on a fresh machine)"
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar off --require-hashes -r requirements.lock
	@echo "== installing chatimg itself (editable: the chatimg-client command)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

## The Django 6 line: Django 6.x on Python 3.12+ in its own venv, from its own
## hash-pinned lock (the same pins as requirements.lock but Django). `make test`
## builds it; scripts/python-for-django6 says which Python it uses, or why none.
VENV6 := .venv-django6
STAMP6 := $(VENV6)/.installed
PYTHON_DJANGO6 ?= $(shell scripts/python-for-django6)

$(STAMP6): requirements-django6.lock pyproject.toml
	@test -n "$(PYTHON_DJANGO6)" || { echo "no Python >= 3.12 for $(VENV6)"; exit 1; }
	@test -x $(VENV6)/bin/python || { echo "== creating $(VENV6) with $(PYTHON_DJANGO6)"; $(PYTHON_DJANGO6) -m venv $(VENV6); }
	@echo "== installing the hash-pinned requirements-django6.lock into $(VENV6) (about 30 s on a fresh machine)"
	$(VENV6)/bin/python -m pip install --disable-pip-version-check --progress-bar off --require-hashes -r requirements-django6.lock
	@echo "== installing chatimg itself into $(VENV6) (editable)"
	$(VENV6)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $(STAMP6)

install-django6: $(STAMP6)

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
	rm -rf $(VENV) $(VENV6) test-results
