# Two entry points for newcomers: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
SANDBOX ?= /tmp/tether-demo

.PHONY: docs demo test lint unit venv clean bench test-debian12 integrations system-packages

$(BIN)/tether: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/tether

demo: venv
	$(BIN)/python examples/demo.py --sandbox $(SANDBOX)

lint: venv
	$(BIN)/ruff check controller tests examples packaging
	$(BIN)/mypy controller

unit: venv
	$(BIN)/pytest -q tests --ignore=tests/integrations

# The packaging checks run the real tools: systemd-analyze, dpkg-buildpackage and apt-get,
# puppet, ansible-playbook, promtool and prometheus. They need root and Debian 12.
integrations: venv system-packages
	$(BIN)/pytest -q tests/integrations

# Debian packages the tests use. As root on Debian, the missing ones are installed;
# otherwise the command that installs them is printed.
DEBIAN_PACKAGES = make tar gzip curl git dpkg openssl prometheus systemd puppet build-essential debhelper dh-python \
	pybuild-plugin-pyproject python3-all python3-setuptools
system-packages:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "Installing Debian packages:" $$missing; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
	    echo "The tests need these Debian 12 packages: sudo apt-get install --no-install-recommends" $$missing; \
	    exit 1; \
	fi

# The library versions Debian 12 ships, which the .deb depends on.
DEBIAN12 = PyYAML==6.0.1 jsonschema==4.10.3 tenacity==8.2.1 watchdog==2.2.1 prometheus-client==0.16.0 zstandard==0.19.0
$(VENV)-debian12/bin/pytest: pyproject.toml
	$(PYTHON) -m venv $(VENV)-debian12
	$(VENV)-debian12/bin/pip install --quiet $(DEBIAN12) pytest hypothesis 'setuptools>=70.1'
	$(VENV)-debian12/bin/pip install --quiet --no-deps -e .
	touch $@

# The second run checks tether against Debian 12's library versions. The files it leaves out exercise the
# standard library, the kernel and real daemons rather than those libraries, and already ran in `unit`.
DEBIAN12_SKIP = --ignore=tests/integrations --ignore=tests/test_fleet.py --ignore=tests/test_hostile_archives.py \
	--ignore=tests/test_hostile_persistent_data.py --ignore=tests/test_hostile_review.py
test-debian12: $(VENV)-debian12/bin/pytest
	$(VENV)-debian12/bin/pytest -q -p no:cacheprovider tests $(DEBIAN12_SKIP)

test: system-packages lint unit test-debian12 integrations

# docs/manifests.md is generated from the JSON Schemas; tests/test_reference.py keeps it current.
docs: venv
	$(BIN)/python -m controller.manifests.reference > docs/manifests.md

bench: venv
	$(BIN)/python tests/benchmarks/deploy_speed.py

clean:
	rm -rf $(VENV) $(VENV)-debian12 build *.egg-info
