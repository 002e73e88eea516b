"""docs/fleet.md cannot rot: every manifest in it passes the real `tether validate`, every node file the real
`tether node`, every rollout plan it prints is what `tether rollout plan` prints for its manifest and fleet,
the bucket one-liner prints what it says, and the Ansible play uses only options the module documents."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests import support

DOC = support.REPO / "docs" / "fleet.md"
MODULE = (support.REPO / "packaging" / "ansible" / "ansible_collections" / "tether" / "node" / "plugins" / "modules"
          / "tether_application.py")


def blocks(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"^```(\w+)\n(.*?)^```", DOC.read_text(), re.S | re.M)
            if lang == language]


def documents() -> list[Any]:
    return [yaml.safe_load(body) for body in blocks("yaml")]


def manifests() -> list[str]:
    return [body for body in blocks("yaml") if isinstance(yaml.safe_load(body), dict)
            and yaml.safe_load(body).get("kind") in ("Application", "ApplicationKind")]


def is_fleet(document: Any) -> bool:
    return isinstance(document, list) and all(isinstance(n, dict) and set(n) == {"name", "labels"} for n in document)


def is_play(document: Any) -> bool:
    return isinstance(document, list) and all(isinstance(p, dict) and "hosts" in p for p in document)


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    target = directory / name
    target.write_text(text)
    target.chmod(0o644)
    return target


def test_every_yaml_block_of_the_fleet_doc_is_a_manifest_a_node_file_a_fleet_or_a_play() -> None:
    found = documents()
    unknown = [d for d in found if not (isinstance(d, dict) and d.get("kind") in ("Application", "Node"))
               and not is_fleet(d) and not is_play(d)]
    assert unknown == []
    assert len(manifests()) >= 4
    assert sum(isinstance(d, dict) and d.get("kind") == "Node" for d in found) >= 2


def test_every_manifest_of_the_fleet_doc_passes_the_real_tether_validate(node: support.Node) -> None:
    for index, text in enumerate(manifests()):
        manifest = write(node.root / f"m{index}", "acme.yaml", text)

        run = node.tether("validate", "--insecure-manifests", str(manifest))

        assert run.returncode == 0, (text, run.stdout, run.stderr)
        assert "1 application and 0 kinds are valid." in run.stdout


def test_every_node_file_of_the_fleet_doc_is_read_by_the_real_tether_node(node: support.Node) -> None:
    files = [body for body in blocks("yaml") if isinstance(yaml.safe_load(body), dict)
             and yaml.safe_load(body).get("kind") == "Node"]
    assert files
    for index, text in enumerate(files):
        path = write(node.root / f"etc{index}", "node.yaml", text)

        run = node.tether("node", "--insecure-manifests", "--node-config", str(path))

        assert run.returncode == 0, (text, run.stdout, run.stderr)
        expected = yaml.safe_load(text)["metadata"]
        assert f"Name:   {expected['name']}" in run.stdout, run.stdout
        labels = ", ".join(f"{k}={v}" for k, v in sorted(expected["labels"].items()))
        assert f"Labels: {labels}" in run.stdout, run.stdout


def test_every_rollout_plan_the_fleet_doc_shows_is_what_tether_rollout_plan_prints(node: support.Node) -> None:
    fleets = [body for body in blocks("yaml") if is_fleet(yaml.safe_load(body))]
    plans = [body for body in blocks("text") if "TAKES" in body]
    assert fleets and plans
    nodes = write(node.root / "fleet", "nodes.yaml", fleets[0])
    printed = []
    for index, text in enumerate(manifests()):
        if "rollout" not in yaml.safe_load(text)["spec"]:
            continue
        manifest = write(node.root / f"r{index}", "acme.yaml", text)
        run = node.tether("rollout", "plan", "--insecure-manifests", str(manifest), "--nodes", str(nodes))
        assert run.returncode == 0, run.stderr
        printed.append(run.stdout)
    for plan in plans:
        assert plan in printed, (plan, printed)


def test_the_bucket_one_liner_of_the_fleet_doc_prints_the_bucket_it_claims() -> None:
    lines = [block.splitlines() for block in blocks("sh") if block.startswith("python3 -c")]
    assert lines
    for command, claim, *_ in lines:
        program = re.fullmatch(r"python3 -c '(.*)'", command)
        assert program, command
        run = subprocess.run([sys.executable, "-c", program.group(1)], capture_output=True, text=True, check=True)
        assert claim == f"# {run.stdout.strip()}"


def documented_options() -> dict[str, Any]:
    tree = ast.parse(MODULE.read_text())
    text = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "DOCUMENTATION" for t in node.targets)
                and isinstance(node.value, ast.Constant))
    options: dict[str, Any] = yaml.safe_load(text)["options"]
    return options


def names(options: dict[str, Any]) -> set[str]:
    return {alias for name, option in options.items() for alias in [name, *option.get("aliases", [])]}


def test_the_ansible_play_of_the_fleet_doc_uses_only_options_the_module_documents() -> None:
    plays = [d for d in documents() if is_play(d)]
    assert plays
    options = documented_options()
    tasks = [task["tether.node.tether_application"] for play in plays for p in play for task in p["tasks"]
             if "tether.node.tether_application" in task]
    assert tasks
    for arguments in tasks:
        assert set(arguments) <= names(options), set(arguments) - names(options)
        assert set(arguments.get("source", {})) <= names(options["source"]["suboptions"])
        assert arguments.get("wait") is True
    assert all(p["serial"] == [1, "100%"] for play in plays for p in play)
