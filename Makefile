# Two entry points for newcomers: `make demo` (no root) and `make test` (root, Debian 12).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
SANDBOX ?= /tmp/tether-demo
# Each CI stage prints its start time and how long it took (.ci/stage).
STAGE = bash .ci/stage

.PHONY: docs demo demo-daemon test lint unit venv demo-venv python-check clean bench test-debian12 integrations \
	system-packages

python-check:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	    echo "tether needs Python >= 3.11; '$(PYTHON)' is" \
	        "$$($(PYTHON) -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo 'not a Python that runs')." \
	        "Name another with make PYTHON=python3.11."; exit 1; }

# `make demo` installs tether and its runtime dependencies only; `make venv` (lint and tests) adds the test
# extra (pytest, hypothesis, mypy, ruff, ansible-core...). Both use $(VENV); a stamp file says what is in it.
$(VENV)/.demo-installed: pyproject.toml | python-check
	@test -x $(BIN)/pip || { echo "Setting up $(VENV) ($(PYTHON) -m venv $(VENV))..."; $(PYTHON) -m venv --clear $(VENV); }
	@echo "Setting up $(VENV) (pip install -e .: tether, PyYAML, jsonschema, tenacity, watchdog, prometheus-client)..."
	@$(BIN)/pip install --quiet --disable-pip-version-check -e .
	@touch $@

$(VENV)/.test-installed: pyproject.toml | python-check
	@test -x $(BIN)/pip || { echo "Setting up $(VENV) ($(PYTHON) -m venv $(VENV))..."; $(PYTHON) -m venv --clear $(VENV); }
	@echo "Setting up $(VENV) (pip install -e '.[test]': tether, pytest, hypothesis, mypy, ruff, ansible-core...)..."
	@$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@ $(VENV)/.demo-installed

venv: $(VENV)/.test-installed
demo-venv: $(VENV)/.demo-installed

# An editable install leaves tether's modules uncompiled, and where PYTHONDONTWRITEBYTECODE is set (as on some CI
# machines) every `tether` command would compile them again: 70 ms of a 150 ms deploy of a tiny artifact, and a
# sixth of the time of the tests that run the command. Compiled here, they are read even then; a module edited
# later is compiled in memory until the next make. pip compiles a non-editable install itself, the .deb's
# postinst too (dh_python3). It only saves time: a file it cannot write (a __pycache__ that root made in this
# checkout) is left as it is, silently.
BYTECODE = $(BIN)/python -m compileall -qq -j 0 controller || true

demo: demo-venv
	@$(BYTECODE)
	$(BIN)/python examples/demo.py --sandbox $(SANDBOX)

# The same sandbox with an artifact server and `tether run` in the foreground; Ctrl-C stops both.
demo-daemon: demo-venv
	@$(BYTECODE)
	$(BIN)/python examples/demo_daemon.py --sandbox $(SANDBOX)

lint: venv
	$(BIN)/ruff check controller tests examples packaging
	$(BIN)/mypy controller

unit: venv
	@$(BYTECODE)
	$(BIN)/pytest -q -p no:cacheprovider --durations=15 tests --ignore=tests/integrations

# The packaging checks run the real tools: systemd-analyze, dpkg-buildpackage and apt-get,
# puppet, ansible-playbook, promtool and prometheus. They need root and Debian 12.
integrations: venv system-packages
	@$(BYTECODE)
	$(BIN)/pytest -q tests/integrations

# Debian packages the tests use. As root on Debian, the missing ones are installed;
# otherwise the command that installs them is printed.
DEBIAN_PACKAGES = make tar gzip curl git dpkg openssl prometheus systemd puppet build-essential debhelper dh-python \
	pybuild-plugin-pyproject python3-all python3-setuptools gpg openssh-client
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
DEBIAN12 = PyYAML==6.0.1 jsonschema==4.10.3 tenacity==8.2.1 watchdog==2.2.1 prometheus-client==0.16.0 zstandard==0.19.0 \
	bcrypt==3.2.2
$(VENV)-debian12/bin/pytest: pyproject.toml
	$(PYTHON) -m venv $(VENV)-debian12
	$(VENV)-debian12/bin/pip install --quiet $(DEBIAN12) pytest hypothesis 'setuptools>=70.1'
	$(VENV)-debian12/bin/pip install --quiet --no-deps -e .
	touch $@

# The second run checks tether against Debian 12's library versions, so it runs the files whose subject is what
# those libraries do (the rest exercise the standard library, the kernel and tether's own code, and ran in `unit`):
#   PyYAML and jsonschema: manifests, the node file, rollouts and health checks loaded, validated and refused
#     (test_bad_manifests, test_hostile_hooks_and_manifests, test_rollout_manifests, test_node, test_health,
#     test_fleet_doc: the documented manifests validate; test_packaging: the installed schemas load);
#   prometheus-client: the metrics and their scrape output (test_metrics, test_metrics_cache: the cached exposition
#     byte for byte the library's, test_prometheus, test_rollout_gate);
#   bcrypt: the web config's basic auth (test_web_endpoint);
#   watchdog: the daemon's watching, its queue and retries (test_daemon);
#   tenacity and zstandard: download retries, redirects and zstd archives (test_bad_artifacts, test_hostile_fetching).
# A new test file that exercises one of these libraries belongs in this list.
DEBIAN12_TESTS = tests/test_bad_manifests.py tests/test_hostile_hooks_and_manifests.py tests/test_rollout_manifests.py \
	tests/test_node.py tests/test_health.py tests/test_fleet_doc.py tests/test_packaging.py \
	tests/test_metrics.py tests/test_prometheus.py tests/test_rollout_gate.py tests/test_daemon.py \
	tests/test_bad_artifacts.py tests/test_hostile_fetching.py tests/test_metrics_cache.py tests/test_web_endpoint.py \
	tests/test_gzip_readers.py tests/test_validated_cache.py tests/test_watching.py
test-debian12: $(VENV)-debian12/bin/pytest
	@$(VENV)-debian12/bin/python -m compileall -qq -j 0 controller || true
	$(VENV)-debian12/bin/pytest -q -p no:cacheprovider --durations=15 $(DEBIAN12_TESTS)

# Stage by stage, each with its start time and duration.
test:
	@$(STAGE) system-packages $(MAKE) --no-print-directory system-packages
	@$(STAGE) venv $(MAKE) --no-print-directory venv
	@$(STAGE) lint $(MAKE) --no-print-directory lint
	@$(STAGE) unit $(MAKE) --no-print-directory unit
	@$(STAGE) test-debian12 $(MAKE) --no-print-directory test-debian12
	@$(STAGE) integrations $(MAKE) --no-print-directory integrations

# docs/manifests.md is generated from the JSON Schemas; tests/test_reference.py keeps it current.
docs: venv
	$(BIN)/python -m controller.manifests.reference > docs/manifests.md

bench: venv
	@$(BYTECODE)
	$(BIN)/python tests/benchmarks/deploy_speed.py

clean:
	rm -rf $(VENV) $(VENV)-debian12 build *.egg-info
