# One command for every check: `make check`. CI runs the same target.
PY ?= python
.PHONY: check lint typecheck test smoke format

check: lint typecheck test smoke

lint:
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

typecheck:
	$(PY) -m mypy

test:
	$(PY) -m pytest

smoke:
	$(PY) -m vaultkit demo > /dev/null
	$(PY) -m vaultkit bench --quick > /dev/null

format:
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
