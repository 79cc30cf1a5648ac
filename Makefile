# One command sets up and runs: `make test` (tests), `make demo` (the main job).
# On a CPU machine torch comes from the local CPU build; override TORCH_SPEC on GPU machines.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.calibrant-installed
PYTEST_WORKERS ?= 2

CALIBRANT_DATA ?= $(abspath ../shared/data)
export CALIBRANT_DATA
DEMO_OUT ?= runs/demo

.PHONY: setup test lint format demo clean

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
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/lint-imports --no-cache

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks examples
	$(VENV)/bin/ruff format src tests benchmarks examples

test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS)

# Main job: train CE and CRaC on ACDC in a regime where CE is over-confident (acdc_demo_ce: 12
# training patients, 30 epochs, the last checkpoint), then print the comparison with its reading.
# The demo's folders are scratch: a new demo replaces the last one (--overwrite).
demo: $(STAMP)
	$(VENV)/bin/calibrant train acdc_demo_ce --out $(DEMO_OUT)/ce --device cpu --overwrite
	$(VENV)/bin/calibrant train acdc_demo_crac --out $(DEMO_OUT)/crac --device cpu --overwrite
	$(VENV)/bin/calibrant compare $(DEMO_OUT)/ce $(DEMO_OUT)/crac --out $(DEMO_OUT)/comparison.md
	@echo "reports: $(DEMO_OUT)/ce/report.md $(DEMO_OUT)/crac/report.md; figures in */figures/"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
