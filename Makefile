# ServicePro Billing. `make run` and `make test` do all their own set-up (see README).
SHELL := /bin/bash
PY := .venv/bin/python
export FLASK_APP := app:create_app

.PHONY: run test setup setup-test bench chaos

setup:
	@scripts/setup.sh run

setup-test:
	@scripts/setup.sh test

run: setup
	@scripts/run.sh

test: setup-test
	@$(PY) -m pytest $(PYTEST_ARGS)

bench: setup-test
	@$(PY) -m bench $(BENCH_ARGS)

chaos: setup-test
	@$(PY) -m chaos $(CHAOS_ARGS)
