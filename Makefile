# Two commands: `make demo` runs petvault end to end on the embedded stand-ins,
# `make test` runs the test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstall only when the package metadata changes.
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/petvault demo $(DEMO_ARGS)

test: $(STAMP)
	.ci/ensure-redis
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check service device_sim certs tests benchmarks
	$(BIN)/mypy service device_sim certs

bench: $(STAMP)
	$(BIN)/python benchmarks/rate_limit_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
