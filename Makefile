# Two entry points: `make serve` runs the service on embedded defaults, `make test` runs the whole suite.
# Both create .venv on first use and reinstall only when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

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

serve: $(VENV)/.installed-serve
	$(BIN)/acceld serve

# pytest exits 5 when it collected nothing: the suite is missing or fully deselected, which is a failure.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	@rc=0; $(BIN)/pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: nothing was tested" >&2; fi; \
	exit $$rc
