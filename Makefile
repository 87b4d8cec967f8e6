# The two commands a fresh clone needs: `make demo` and `make test`.
# Everything a new machine lacks is installed here: the venv (pip) and, for the status-page
# browser test, Debian's chromium (apt).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit browser-deps postgres bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the headless status-page test; skipped quietly where apt is unavailable.
browser-deps:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium"; \
	  else echo "note: chromium not installed and apt unavailable"; fi; \
	fi

# PostgreSQL runs on every machine here; start it if it was stopped.
postgres:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || \
	  (command -v pg_ctlcluster >/dev/null && pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start) || true

lint: $(STAMP)
	$(BIN)/ruff check ltvsync tests bench
	$(BIN)/ruff format --check ltvsync tests bench

typecheck: $(STAMP)
	$(BIN)/mypy ltvsync

unit: $(STAMP) postgres browser-deps
	$(BIN)/pytest -q

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/ltvsync demo

bench: $(STAMP) postgres
	$(BIN)/python bench/store_upsert.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
