# The two README commands: `make demo` and `make test`. Both bootstrap .venv on first use.
SHELL := /bin/bash
IN_ENV := scripts/in-env

.PHONY: all bootstrap test test-fast demo lint clean

all: test

bootstrap:
	@scripts/bootstrap

## make test: bootstrap if needed, then pytest over test/ (slow end-to-end tests included).
test: bootstrap
	@$(IN_ENV) python -m pytest test $(PYTEST_ARGS)

## make test-fast: the same without the tests marked slow.
test-fast: bootstrap
	@$(IN_ENV) python -m pytest test -m "not slow" $(PYTEST_ARGS)

## make demo: the main job on the embedded default (simulated rig, closed loop, real ROS 2 nodes).
demo: bootstrap
	@$(IN_ENV) demo $(DEMO_ARGS)

lint: bootstrap
	@$(IN_ENV) ruff check .

clean:
	rm -rf .venv build install log .env.sh .pytest_cache .ruff_cache demo_output
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
