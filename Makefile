# Two entry points: `make run` trains the flagship experiment, `make test` runs the test suite.
# Each creates the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fnn run digits

test: $(STAMP)
	$(PY) -m ruff check fnn experiments tests benchmarks
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m benchmarks.train_step

lint: $(STAMP)
	$(PY) -m ruff check fnn experiments tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
