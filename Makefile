# Every target sets up what it needs on a fresh machine by itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench clean setup servers

# Re-install whenever the declared dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

setup: $(STAMP)

# Tests run real servers (started by fixtures on free loopback ports); install
# the Debian packages that provide them when they are missing.
SERVER_PACKAGES := redis-server memcached
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
servers:
	@command -v redis-server >/dev/null && command -v memcached >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(SERVER_PACKAGES); }

run: $(STAMP)
	$(BIN)/buttress serve --demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) servers
	$(BIN)/pytest -q

# ruff, then mypy --strict, then pytest, in that order.
test: lint typecheck pytest

bench: $(STAMP) servers
	$(BIN)/python benchmarks/resilience.py
	$(BIN)/python benchmarks/cache_memory.py
	$(BIN)/python benchmarks/cache_redis.py
	$(BIN)/python benchmarks/tasks.py
	$(BIN)/python benchmarks/service.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
