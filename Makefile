# The two commands a newcomer needs: `make demo` and `make test`.
# Both install into .venv first; the stamp makes reruns skip the install.

VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp

.PHONY: install demo test lint format down clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/wtm up
	$(BIN)/wtm demo

test: install lint
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Every benchmark side by side in one run (Celery and matplotlib from the bench extra);
# writes benchmarks/results.md, coldstart.md, throughput.md/png and workloads.md/png.
bench: install
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python benchmarks/pipelines.py
	$(BIN)/python benchmarks/coldstart.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/workloads.py

down: install
	$(BIN)/wtm down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
