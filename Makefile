# Two entry points: `make run` trains the flagship experiment, `make test` runs the test suite.
# Each creates the virtual environment in .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/fnn run digits

# The suite runs in TEST_WORKERS processes (pytest-xdist): most tests wait on XLA compiling,
# which uses one core, so a second worker keeps the second core busy.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m ruff check fnn experiments tests benchmarks
	$(PY) -m pytest -n $(TEST_WORKERS)

bench: $(STAMP)
	$(PY) -m benchmarks.suite

# The documentation site, offline, into site/ (strict: a warning is an error).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(PY) -m ruff check fnn experiments tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache site
