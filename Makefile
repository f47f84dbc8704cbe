# Two entry points for a fresh clone: `make run` (set up, train the default experiment)
# and `make test` (set up, run the whole test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_INDEX ?=
PYTEST_ARGS ?=
# one pytest worker per core and one more, at most 5 (each holds its own torch, one thread each):
# a worker waiting on a test's own processes (a CLI run, DDP) leaves a core idle, which the extra
# one fills (on 2 cores: 3 workers, 4:54 against 5:39 for 2; 4 workers gained nothing)
WORKERS ?= $(shell $(PYTHON) -c 'import os; print(min((os.cpu_count() or 1) + 1, 5))')
PARALLEL := -n $(WORKERS) --dist worksteal
# the slowest tests of every run, so that drift in the suite's time shows in CI's log
DURATIONS := --durations=20
TORCH_INDEX_FLAG := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)

.PHONY: setup run test test-fast lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/torch-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_INDEX_FLAG) -r requirements/torch-cpu.txt
	$(BIN)/python -m pip install --quiet -c requirements/torch-cpu.txt -e '.[dev]'
	touch $@

run: setup
	$(BIN)/klexp $(ARGS)

test: setup
	$(BIN)/python -m pytest $(PARALLEL) $(DURATIONS) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest $(PARALLEL) $(DURATIONS) -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs multirun
