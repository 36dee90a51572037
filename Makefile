# The interface of the project: `make demo`, `make test`, `make bench`, `make lint`, `make proto`.
# Every target sets up what it needs itself (a virtualenv in .venv).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Modules compiled with mypyc, from setup.py's COMPILED: a change to their contents needs a rebuild.
COMPILED := $(patsubst %,coordinator/%.py,$(shell sed -n 's/^COMPILED = (\(.*\))/\1/p' setup.py | tr -d '",'))
# The stamp changes when dependencies, the module list or a compiled module change: strict editable installs
# link files, so new modules need a reinstall, and compiled ones a recompile.
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml setup.py $(COMPILED); find worker_sdk coordinator -name "*.py" | sort) | cksum | cut -d" " -f1)
# The second install compiles the hot-path modules against the packages the first one installed.
COMPILE := PARCELO_COMPILE=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e . --config-settings editable_mode=strict
PYTEST_ARGS ?=

.PHONY: all install demo test lint proto bench clean

all: test

$(STAMP): pyproject.toml setup.py $(COMPILED)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	# strict editable mode links the mapped folders (worker_sdk -> parcelo, coordinator -> parcelo.coordinator)
	# into one tree, which plain tools (mypy, pytest) can follow.
	@rm -rf build/__editable__.* coordinator/*.so *__mypyc.*.so
	$(PY) -m pip install -q -e ".[coordinator,dev]" --config-settings editable_mode=strict
	@rm -rf build/__editable__.*
	$(COMPILE)
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) deploy/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy build/__editable__.parcelo-*/parcelo tests deploy bench setup.py

test: lint
	PARCELO_EXPECT_COMPILED=1 $(PY) -m pytest $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) proto/generate.py

bench: $(STAMP)
	# The bench extra's packages only: reinstalling parcelo itself would drop the compiled modules.
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]))' \
		| $(PY) -m pip install -q -r /dev/stdin
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info coordinator/*.so *__mypyc.*.so .parcelo .bench .pytest_cache .mypy_cache .ruff_cache
