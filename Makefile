# The interface of the project: `make demo`, `make test`, `make bench`, `make lint`, `make proto`.
# Every target sets up what it needs itself (a virtualenv in .venv).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp changes when dependencies or the module list change: strict editable installs link files, so new modules need a reinstall.
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; find worker_sdk coordinator -name "*.py" | sort) | cksum | cut -d" " -f1)
PYTEST_ARGS ?=

.PHONY: all install demo test lint proto bench clean

all: test

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# strict editable mode links the mapped folders (worker_sdk -> parcelo, coordinator -> parcelo.coordinator)
	# into one tree, which plain tools (mypy, pytest) can follow.
	$(PY) -m pip install -q -e ".[coordinator,dev]" --config-settings editable_mode=strict
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) deploy/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy build/__editable__.parcelo-*/parcelo tests deploy bench

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) proto/generate.py

bench: $(STAMP)
	$(PY) -m pip install -q -e ".[coordinator,dev,bench]" --config-settings editable_mode=strict
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .parcelo .bench .pytest_cache .mypy_cache .ruff_cache
