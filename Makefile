# The commands a person types. Everything runs from the project's own venv (.venv), created from
# requirements-lock.txt, against the local stack of real services on 127.0.0.1 (state in .local/).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
export PYTHONPATH := $(CURDIR)/plugins:$(CURDIR)
# Bytecode caches keep DAG parsing and every Airflow command fast; some machines turn them off.
unexport PYTHONDONTWRITEBYTECODE
STACK := $(BIN)/python -m devstack
WITH_ENV := set -a && . .local/env.sh && set +a &&

.PHONY: help system-deps venv lock lint format typecheck test test-scheduler demo airflow bench bench-scale stack-up stack-down stack-status clean

help:
	@echo "make demo      load DreamSeed demo data, run every DAG once, print the before/after report"
	@echo "make test      ruff and mypy, then pytest against the real local stack"
	@echo "make airflow   the Airflow UI on http://localhost:8080 (LIFECYCLE_AIRFLOW_PORT) over the local stack (EXECUTOR=celery: Redis + a Celery worker)"
	@echo "make bench     side-by-side benchmarks (results in benchmarks/results/)"
	@echo "make bench-scale   how cost grows with size (0.5M, 2M, 8M rows; long)"
	@echo "make stack-up | stack-down | stack-status   the local PostgreSQL, S3 and Slack sink"
	@echo "make lock      re-lock requirements-lock.txt from requirements-dev.in"

# Debian packages from packages-dev.txt that are not installed yet (needs root, as on CI).
system-deps:
	@missing=$$(grep -v '^#' packages-dev.txt | xargs -r -n1 sh -c 'dpkg -s "$$0" >/dev/null 2>&1 || echo "$$0"'); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root or install them: $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(BIN)/.installed: requirements-lock.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements-lock.txt
	touch $@

venv: system-deps $(BIN)/.installed

lock: venv
	$(BIN)/uv pip compile --quiet --no-header --python-version 3.11 requirements-dev.in -o requirements-lock.txt

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: venv
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# Only the on-call scenario against real Airflow services, LocalExecutor and CeleryExecutor (part of make test).
test-scheduler: venv
	$(BIN)/pytest tests/scheduler $(PYTEST_ARGS)

stack-up: venv
	$(STACK) up

stack-down: venv
	$(STACK) down

stack-status: venv
	$(STACK) status

demo: stack-up
	$(WITH_ENV) $(BIN)/python -m include.dreamseed.demo

# The api-server, scheduler, dag-processor and triggerer (what `airflow standalone` starts), on
# 127.0.0.1; EXECUTOR=celery adds Debian's redis-server as broker and a Celery worker.
EXECUTOR ?= local
airflow: stack-up
	PATH="$(CURDIR)/$(BIN):$$PATH" $(STACK) airflow --executor $(EXECUTOR)

bench: stack-up
	$(WITH_ENV) $(BIN)/python -m benchmarks $(BENCH_ARGS)

# Opt-in, long: the batched delete and partition retention at 0.5M, 2M and 8M rows.
bench-scale: stack-up
	$(WITH_ENV) $(BIN)/python -m benchmarks.scale $(BENCH_ARGS)

clean: stack-down
	rm -rf .local
