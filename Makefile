# The interface of the project: `make demo`, `make test`, `make bench`, `make lint`, `make proto`,
# `make chaos`, and `make dev` for an interpreted install to debug with. Every target sets up what it
# needs itself (a virtualenv in .venv).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# setup.py's COMPILED (the modules mypyc compiles), read by Python: a change to their contents needs a rebuild.
HOT_PATH := $(shell $(PYTHON) -c 'import ast; print(*next(ast.literal_eval(n.value) for n in ast.parse(open("setup.py").read()).body if isinstance(n, ast.Assign) and [getattr(t, "id", "") for t in n.targets] == ["COMPILED"]))')
COMPILED := $(HOT_PATH:%=coordinator/%.py)
# What a compiled install leaves behind: the sources staged for mypyc (tests/conftest.py compares them
# with coordinator/), the extension modules, mypyc's runtime library and the editable tree. If any is
# gone (rm -rf build, make clean of a part), the install is redone whatever the stamp says.
EXT_SUFFIX := $(shell $(if $(wildcard $(PY)),$(PY),$(PYTHON)) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
BUILT := $(HOT_PATH:%=build/mypyc-src/parcelo/coordinator/%.py) $(HOT_PATH:%=coordinator/%$(EXT_SUFFIX))
EDITABLE := $(wildcard build/__editable__.parcelo-*/parcelo/__init__.py)
MISSING := $(strip $(filter-out $(wildcard $(BUILT)),$(BUILT)) \
	$(if $(wildcard *__mypyc.*.so),,the-mypyc-runtime-library) $(if $(EDITABLE),,the-editable-tree))
# The stamps change when dependencies, the module list or (compiled install) a compiled module change:
# strict editable installs link files, so new modules (and dashboard files) need a reinstall, and
# compiled ones a recompile.
# Only one stamp exists at a time: it says which install .venv holds.
MODULES := find worker_sdk coordinator -name "*.py" -o -path "coordinator/dashboard/*" | sort
STAMP := $(VENV)/.installed-compiled-$(shell (cat pyproject.toml setup.py $(COMPILED); $(MODULES)) | cksum | cut -d" " -f1)
DEV_STAMP := $(VENV)/.installed-dev-$(shell (cat pyproject.toml setup.py; $(MODULES)) | cksum | cut -d" " -f1)
# The second install compiles the hot-path modules against the packages the first one installed.
COMPILE := PARCELO_COMPILE=1 $(PY) -m pip install -q --no-build-isolation --no-deps -e . --config-settings editable_mode=strict
PYTEST_ARGS ?=
# buf (npm @bufbuild/buf, pinned by tools/buf/package-lock.json) lints proto/ and checks it against the
# committed image of the released contract.
BUF := tools/buf/node_modules/.bin/buf

.PHONY: all install dev demo test lint toolchains proto proto-baseline bench chaos wheel clean FORCE

all: test

# An interpreted editable install of parcelo with every extra; both installs start with it.
# Strict editable mode links the mapped folders (worker_sdk -> parcelo, coordinator -> parcelo.coordinator)
# into one tree, which plain tools (mypy, pytest, coverage) can follow.
define interpreted_install
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77"
	@rm -rf build/__editable__.* build/mypyc-src coordinator/*.so *__mypyc.*.so
	$(PY) -m pip install -q -e ".[coordinator,dev]" --config-settings editable_mode=strict
endef

$(STAMP): pyproject.toml setup.py $(COMPILED) $(if $(MISSING),FORCE)
	@$(if $(MISSING),echo "build outputs missing ($(MISSING)): installing again",true)
	$(interpreted_install)
	@rm -rf build/__editable__.*
	$(COMPILE)
	@rm -f $(VENV)/.installed-*
	@touch $@

$(DEV_STAMP): pyproject.toml setup.py $(if $(EDITABLE),,FORCE)
	$(interpreted_install)
	@rm -f $(VENV)/.installed-*
	@touch $@

# The compiled build: what make test, demo and bench run.
install: $(STAMP)

# Interpreted (nothing compiled), for breakpoints in and coverage of the hot path. make test, lint,
# demo, bench and install go back to the compiled build by themselves.
dev: $(DEV_STAMP)
	@echo "parcelo installed interpreted in $(VENV): run tests with $(PY) -m pytest; make test compiles again"

# A binary wheel with the hot path compiled, for `pip install` on machines of the same platform and
# Python without a compiler or mypy (docs/operations.md, "Installing"): dist/parcelo-*-cp3XX-*.whl.
# It builds against the packages of .venv (mypy, setuptools), as make install does.
WHEEL_DIR ?= dist
wheel: $(STAMP)
	@rm -f $(WHEEL_DIR)/parcelo-*.whl
	PARCELO_COMPILE=1 $(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(WHEEL_DIR) .
	@ls $(WHEEL_DIR)/parcelo-*.whl

demo: $(STAMP)
	$(PY) deploy/demo.py

$(BUF): tools/buf/package.json tools/buf/package-lock.json
	cd tools/buf && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

lint: $(STAMP) $(BUF)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy build/__editable__.parcelo-*/parcelo tests deploy bench setup.py
	$(BUF) lint
	$(BUF) breaking --against proto/baseline.binpb

# The toolchains of the cross-language tests (Go and protoc) and the dashboard's browser test
# (Chromium), from Debian (apt-get when missing, as root). The Node worker's locked packages are
# installed by the tests' session fixture (npm ci).
toolchains:
	bash scripts/install-go-toolchain.sh
	bash scripts/install-chromium.sh

test: lint toolchains
	PARCELO_EXPECT_COMPILED=1 $(PY) -m pytest $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) proto/generate.py

# A deliberate, released change of the contract: the current proto/ becomes the baseline that
# `buf breaking` compares against (see docs/protocol.md, "Changing the contract").
proto-baseline: $(BUF)
	$(BUF) build -o proto/baseline.binpb

bench: $(STAMP)
	# The bench extra's packages only: reinstalling parcelo itself would drop the compiled modules.
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]))' \
		| $(PY) -m pip install -q -r /dev/stdin
	$(PY) bench/run.py

# Parcelo under faults (tests/chaos.py): kill -9 of workers and of the coordinator during a 100,000-leaf
# job, 1,000 streams for a minute, a full disk (as root). Several minutes, so not part of make test (CI).
chaos: $(STAMP)
	$(PY) -m tests.chaos

clean:
	rm -rf $(VENV) build dist *.egg-info coordinator/*.so *__mypyc.*.so .parcelo .bench .pytest_cache .mypy_cache .ruff_cache tools/buf/node_modules
