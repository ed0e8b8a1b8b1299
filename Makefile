# The two README commands: `make demo` and `make test`. Both bootstrap .venv on first use.
SHELL := /bin/bash
IN_ENV := scripts/in-env

.PHONY: all bootstrap bootstrap-jazzy test test-fast test-jazzy demo lint clean

all: test

bootstrap:
	@scripts/bootstrap

## make test: bootstrap if needed, then pytest over test/ (slow end-to-end tests included).
test: bootstrap
	@$(IN_ENV) python -m pytest test $(PYTEST_ARGS)

## make test-fast: the same without the tests marked slow.
test-fast: bootstrap
	@$(IN_ENV) python -m pytest test -m "not slow" $(PYTEST_ARGS)

bootstrap-jazzy:
	@scripts/bootstrap jazzy

## make test-jazzy: the ROS-facing tests (marker `ros`, set by test/conftest.py) again on ROS 2 Jazzy:
## .venv-jazzy (Jazzy wheels; torch & co. shared from .venv), install-jazzy/, the same test files.
test-jazzy: bootstrap-jazzy
	@$(IN_ENV) --distro jazzy python -m pytest test -m ros $(PYTEST_ARGS)

## make demo: the main job on the embedded default (simulated rig, closed loop, real ROS 2 nodes).
demo: bootstrap
	@$(IN_ENV) demo $(DEMO_ARGS)

lint: bootstrap
	@$(IN_ENV) ruff check .

clean:
	rm -rf .venv build install log .env.sh .pytest_cache .ruff_cache demo_output
	rm -rf .venv-jazzy build-jazzy install-jazzy .env-jazzy.sh
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
