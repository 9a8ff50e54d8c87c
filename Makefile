# The two commands of the README's Quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck pytest bench screenshots postgres-binaries redis-binaries chromium clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Runtime install: the package and the example app.
$(VENV)/.demo-installed: pyproject.toml examples/gauges/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e . -e examples/gauges
	touch $@

# Test install: the same plus the test tools.
$(VENV)/.test-installed: pyproject.toml examples/gauges/pyproject.toml examples/chat/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test]" -e examples/gauges -e examples/chat
	touch $@ $(VENV)/.demo-installed

## Run the stream gages example end to end on the embedded SQLite default.
demo: $(VENV)/.demo-installed
	$(BIN)/storekeeper demo

## Lint, type-check and run the whole suite against real PostgreSQL and SQLite.
## With no STOREKEEPER_TEST_POSTGRES_URL, the suite starts a throwaway PostgreSQL cluster.
test: $(VENV)/.test-installed postgres-binaries redis-binaries chromium lint typecheck pytest

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/lint-imports

typecheck: $(VENV)/.test-installed
	$(BIN)/mypy

pytest: $(VENV)/.test-installed
	$(BIN)/pytest $(PYTEST_ARGS)

# A fresh Debian machine may lack PostgreSQL's server binaries: install them when we can.
postgres-binaries:
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	   || [ -n "$$STOREKEEPER_TEST_POSTGRES_URL" ]; then :; \
	 elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	   echo "installing PostgreSQL server binaries (apt-get install postgresql)"; \
	   DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	 else \
	   echo "PostgreSQL server binaries (initdb) not found: install PostgreSQL, or set" \
	        "STOREKEEPER_TEST_POSTGRES_URL to a server the tests may use" >&2; exit 2; \
	 fi

# The Celery tests start their own Redis (the broker); install redis-server when we can.
redis-binaries:
	@if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then :; \
	 elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	   echo "installing Redis (apt-get install redis-server)"; \
	   DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	 else \
	   echo "redis-server not found: install Redis (Debian: apt-get install redis-server)" >&2; \
	   exit 2; \
	 fi

# The admin page's browser tests drive Debian's Chromium through Playwright (never a browser
# Playwright downloads): install the chromium package when we can.
chromium:
	@if [ -x /usr/bin/chromium ]; then :; \
	 elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	   echo "installing Chromium (apt-get install chromium)"; \
	   DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	   DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	 else \
	   echo "/usr/bin/chromium not found: install Chromium (Debian: apt-get install chromium)" >&2; \
	   exit 2; \
	 fi

## The README's pictures of the admin page (docs/admin-*.png), made by its browser tests.
screenshots: $(VENV)/.test-installed postgres-binaries chromium
	STOREKEEPER_SCREENSHOTS=docs $(BIN)/pytest tests/test_admin_browser.py

## Benchmarks (see bench/); QUICK=1 for the short runs.
$(VENV)/.bench-installed: pyproject.toml | $(VENV)/.test-installed
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[test,bench]" -e examples/gauges
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python bench/sessions.py $(if $(QUICK),--quick,)
	$(BIN)/python bench/testing.py $(if $(QUICK),--quick,)
	$(BIN)/python bench/fanout.py $(if $(QUICK),--quick,)
	$(BIN)/python bench/provision.py $(if $(QUICK),--quick,)
	$(BIN)/python bench/web.py $(if $(QUICK),--quick,)
	$(BIN)/python bench/backup.py $(if $(QUICK),--quick,)
	$(BIN)/python bench/drivers.py $(if $(QUICK),--quick,)
	$(BIN)/python bench/admin.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache .import_linter_cache .grimp_cache
