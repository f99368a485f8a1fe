# Two set-up commands on a fresh machine: `make demo` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint typecheck bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU wheel of torch lies on disk; install the pin first so nothing pulls a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/geounet demo -o demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  # the quick loop: unit-level modules only (see tests/conftest.py)
	$(BIN)/python -m pytest -q -m "not slow" -x

lint: $(STAMP)
	$(BIN)/ruff check geounet tests benchmarks

# mypy with the settings in pyproject.toml ([tool.mypy]: the geounet package).
typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo_output
