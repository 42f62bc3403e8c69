# One command for every check: `make check`. CI runs the same target.
PY ?= python
.PHONY: check lint typecheck test smoke format site

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

# The documentation site (needs `pip install -e . --group docs`); CI also opens every page in
# headless Chromium (.ci/render_check.py).
site:
	$(PY) -m mkdocs build --strict
