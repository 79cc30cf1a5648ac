# One command sets up and runs: `make test` (tests), `make demo` (main job, once the CLI exists).
# On a CPU machine torch comes from the local CPU build; override TORCH_SPEC on GPU machines.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.calibrant-installed
PYTEST_WORKERS ?= 2

.PHONY: setup test lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	# netcal is a test reference only; its declared deps pull torchvision, so install it bare.
	$(PY) -m pip install --quiet --no-deps "netcal==1.4.0"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
