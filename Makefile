# Two entry points for newcomers: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
SANDBOX ?= /tmp/tether-demo

.PHONY: demo test lint unit venv clean bench test-debian12

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

# The library versions Debian 12 ships, which the .deb depends on.
DEBIAN12 = PyYAML==6.0.1 jsonschema==4.10.3 tenacity==8.2.1 watchdog==2.2.1 prometheus-client==0.16.0 zstandard==0.19.0
$(VENV)-debian12/bin/pytest: pyproject.toml
	$(PYTHON) -m venv $(VENV)-debian12
	$(VENV)-debian12/bin/pip install --quiet $(DEBIAN12) pytest hypothesis 'setuptools>=70.1'
	$(VENV)-debian12/bin/pip install --quiet --no-deps -e .
	touch $@

test-debian12: $(VENV)-debian12/bin/pytest
	$(VENV)-debian12/bin/pytest -q -p no:cacheprovider tests

test: lint unit test-debian12

bench: venv
	$(BIN)/python tests/benchmarks/deploy_speed.py

clean:
	rm -rf $(VENV) $(VENV)-debian12 build *.egg-info
