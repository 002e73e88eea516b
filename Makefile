# Two entry points for newcomers: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
SANDBOX ?= /tmp/tether-demo

.PHONY: demo test lint unit venv clean bench

$(BIN)/tether: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/tether

demo: venv
	$(BIN)/python examples/demo.py --sandbox $(SANDBOX)

lint: venv
	$(BIN)/ruff check controller tests examples
	$(BIN)/mypy controller

unit: venv
	$(BIN)/pytest -q tests

test: lint unit

bench: venv
	$(BIN)/python tests/benchmarks/deploy_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
