# The two commands: `make demo` (the main job) and `make test` (the fast test suite:
# every test but those marked slow, which start processes, Ray or a notebook kernel;
# `make test-slow` runs those, `make test-all` everything). All create .venv on first
# use and reinstall when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-all datasets lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev,device,ray,operators,lora]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pacsim bench benchmarks/suites/quick.toml --out runs/quick --jobs 2 --report

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest

datasets: $(STAMP)
	$(BIN)/pacsim datasets --out datasets/built

lint: $(STAMP)
	$(BIN)/ruff check pacsim tests benchmarks

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
