"""The command line starts with what the command uses: an HTTP client, the git modules, jsonschema or tenacity
only when the command needs them (P1 and P2 count tether's start against `tar xzf`, docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from controller.manifests import validation
from tests import support

HTTP = {"http.client", "ssl", "email.parser"}
GIT = {f"controller.artifacts.{name}" for name in ("git_source", "git_runner", "git_mirror", "git_archive",
                                                    "git_verify")}
# What a command that validates no document and downloads nothing has no use for.
DEFERRED = HTTP | GIT | {"jsonschema", "tenacity"}

# Runs the real command line in this interpreter and writes the names of the modules loaded by its end.
RUN = """
import atexit, json, sys
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(sorted(sys.modules))))
from controller.cli import main
sys.exit(main.main(sys.argv[2:]))
"""


def loaded(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run `tether ARGS` in a subprocess: its outcome and every module it had loaded when it exited."""
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    done = subprocess.run([sys.executable, "-c", RUN, str(out), *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env=env)
    return done, set(json.loads(out.read_text()))


def file_manifest(node: support.Node, tmp_path: Path) -> None:
    artifact = tmp_path / "site-v1.tar.gz"
    artifact.write_bytes(support.tar_bytes(support.site("site v1")))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": artifact.as_uri()}))


def test_importing_the_command_line_loads_no_http_client_git_module_jsonschema_or_tenacity(tmp_path: Path) -> None:
    done, modules = loaded(tmp_path, "schema", "application")
    assert done.returncode == 0, done.stderr
    assert "controller.cli.main" in modules
    assert sorted(modules & DEFERRED) == []


def test_a_reconcile_from_a_file_url_loads_no_http_client_or_git_module(node: support.Node, tmp_path: Path) -> None:
    file_manifest(node, tmp_path)
    done, modules = loaded(tmp_path, "reconcile", "--manifests", str(node.manifests), "--state-dir", str(node.state))
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")
    assert sorted(modules & (HTTP | GIT | {"jsonschema"})) == []  # a valid manifest: quick_check's yes
    assert "tenacity" in modules  # what the pass does use is loaded, on first use


def test_an_invalid_manifest_loads_jsonschema_for_its_messages(node: support.Node, tmp_path: Path) -> None:
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1\n",
                                                               source={"url": "file:///nowhere.tar.gz"}))
    done, modules = loaded(tmp_path, "validate", "--manifests", str(node.manifests), "--state-dir", str(node.state))
    assert done.returncode == 2 and "(at /spec/deployment)" in done.stdout, done.stdout + done.stderr
    assert "jsonschema" in modules


def test_a_reconcile_from_an_http_url_loads_the_http_client_when_it_downloads(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    url = http.serve("/site/v1.tar.gz", support.tar_bytes(support.site("site v1")))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": url}))
    done, modules = loaded(tmp_path, "reconcile", "--manifests", str(node.manifests), "--state-dir", str(node.state))
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")
    assert {"http.client", "tenacity"} <= modules and sorted(modules & GIT) == []


# The console command as installed (controller.cli.main:run), with a handler that the usual exit would run.
EXITS = """
import atexit, sys
atexit.register(lambda: print("interpreter teardown"))
from controller.cli import main
sys.argv[1:] = sys.argv[2:]
main.run()
"""


def test_the_command_exits_without_the_interpreters_teardown_and_loses_no_output(
        node: support.Node, tmp_path: Path) -> None:
    def tether(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_") and k != "PYTHONUNBUFFERED"}
        return subprocess.run([sys.executable, "-c", EXITS, "tether", *args], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env=env)

    schema = tether("schema", "application")  # block-buffered into the pipe: lost if not flushed before the exit
    assert schema.returncode == 0, schema.stderr
    assert schema.stdout == validation.schema_text("application")
    assert "interpreter teardown" not in schema.stdout

    (node.manifests / "bad.yaml").write_text("apiVersion: tether/v1\nkind: Application\nmetadata: {name: bad}\n")
    bad = tether("validate", "--manifests", str(node.manifests), "--state-dir", str(node.state))
    assert bad.returncode == 2 and "spec" in bad.stdout + bad.stderr

    file_manifest(node, tmp_path)
    (node.manifests / "bad.yaml").unlink()
    done = tether("reconcile", "--manifests", str(node.manifests), "--state-dir", str(node.state))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "interpreter teardown" not in done.stdout
    assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")
