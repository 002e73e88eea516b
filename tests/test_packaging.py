"""The installed package (not the source tree) ships the schemas and the `tether` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import support


def test_a_non_editable_install_prints_the_schemas_from_the_package(tmp_path: Path) -> None:
    target = tmp_path / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(support.REPO)], check=True, capture_output=True, cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target)}

    where = subprocess.run([sys.executable, "-c", "import controller; print(controller.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    printed = subprocess.run([str(target / "bin" / "tether"), "schema", "application"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, check=True)

    assert where.stdout.startswith(str(target)), "the test imported the source tree, not the installed copy"
    schema = json.loads(printed.stdout)
    assert schema["title"] == "tether Application"
    assert (target / "controller" / "schemas" / "kind.json").is_file()
    node = subprocess.run([str(target / "bin" / "tether"), "schema", "node"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert json.loads(node.stdout)["title"] == "tether Node"
    layers = {path.parent.name for path in (support.REPO / "controller").glob("*/__init__.py")}
    assert layers <= {path.parent.name for path in (target / "controller").glob("*/__init__.py")}, "pyproject.toml"


def test_the_schema_command_prints_valid_json_schemas(node: support.Node) -> None:
    for which in ("application", "kind", "node"):
        run = node.tether("schema", which)
        assert run.returncode == 0
        assert json.loads(run.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
