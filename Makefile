# Two entry points: `make serve` runs the service on embedded defaults (SERVE_ARGS="--port N" etc.
# are passed on), `make test` runs the whole suite (PYTEST_ARGS are passed to pytest).
# Both create .venv on first use and reinstall only when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED := ../shared
ESGZ := .cache/bin/esgz

.PHONY: serve test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(VENV)/.installed-serve $@

# Ctrl-C or SIGTERM stops the service gracefully, after which it re-raises the signal. It runs as a
# background job so that the shell prints no "Terminated" notice; the shell's no-op trap outlives the
# signal and waits for the service to finish; 130/143 count as a clean stop, so make reports nothing.
serve: SHELL := /bin/bash
serve: $(VENV)/.installed-serve
	@trap : INT TERM; $(BIN)/acceld serve $(SERVE_ARGS) & pid=$$!; \
	while wait $$pid; rc=$$?; kill -0 $$pid 2>/dev/null; do :; done; \
	if [ $$rc -eq 130 ] || [ $$rc -eq 143 ]; then exit 0; fi; exit $$rc

# The Go eStargz verifier the tests check against (Debian packages only, no downloads).
$(ESGZ):
	$(SHARED)/tools/esgz/build.sh $@

# pytest exits 5 when it collected nothing: the suite is missing or fully deselected, which is a failure.
test: $(VENV)/.installed-test $(ESGZ)
	$(BIN)/ruff check .
	$(BIN)/mypy
	@rc=0; $(BIN)/pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: nothing was tested" >&2; fi; \
	exit $$rc
