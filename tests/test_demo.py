"""The demo (`make demo`, `make demo-daemon`) runs end to end: real artifacts, a real HTTP server, the real
command line and the real daemon; its sandbox manifests are the example files with only the needed lines changed."""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests import support

EXAMPLES = support.REPO / "examples"


def example_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sandbox_manifests = example_module("sandbox_manifests")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    removed, added = [], []
    for line in difflib.ndiff(before.splitlines(), after.splitlines()):
        if line.startswith("- "):
            removed.append(line[2:])
        elif line.startswith("+ "):
            added.append(line[2:])
    return removed, added


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("demo")
    run = subprocess.run([sys.executable, str(EXAMPLES / "demo.py"), "--sandbox", str(root)],
                         capture_output=True, text=True, timeout=300, env=clean_env(), cwd=root)
    assert run.returncode == 0, run.stdout + run.stderr
    return root, run


def test_the_demo_deploys_v1_then_leaves_every_application_on_v2(
        demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = demo_run
    for name in ("site", "shop", "acme"):
        app = root / "apps" / name
        assert os.readlink(app / "current") == str(app / "v2")
    served = (root / "apps" / "site" / "current" / "index.html").read_text()
    assert served == (EXAMPLES / "artifacts" / "site" / "v2" / "index.html").read_text()
    acme = root / "apps" / "acme"
    assert os.readlink(acme / "v2" / "db" / "production.sqlite3") == str(acme / "persistent-data" / "db" / "production.sqlite3")
    migrations = (acme / "persistent-data" / "db" / "production.sqlite3").read_text().splitlines()
    assert [line.split()[1] for line in migrations] == ["v1", "v2"]
    assert (acme / "persistent-data" / "tmp" / "restart.txt").exists()


def test_the_sandbox_manifests_keep_every_comment_and_line_of_the_examples_but_the_ones_the_sandbox_needs(
        demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, _ = demo_run
    examples = sorted((EXAMPLES / "manifests").glob("*.yaml"))
    assert {file.name for file in examples} == {file.name for file in (root / "manifests").glob("*.yaml")}
    for example in examples:
        original, copied = example.read_text(), (root / "manifests" / example.name).read_text()
        header, body = copied.split("\n", 1)
        assert header.startswith("# Copied by examples/demo.py from examples/manifests/" + example.name)
        removed, added = changed_lines(original, body)
        keys = {line.split(":", 1)[0].strip() for line in removed}
        assert keys <= {"path", "deployment", "url", "user", "group", "userMapping", "groupMapping", "JOB-TOKEN"}, \
            (example.name, removed)
        comments = [line for line in original.splitlines() if line.strip().startswith("#")]
        assert [line for line in comments if line not in body.splitlines()] == []
        assert "'" not in "".join(line for line in added if "hooks" in line)  # hooks stay block scalars, unquoted
        document = yaml.safe_load(body)
        assert yaml.safe_load(original).get("spec", {}).get("hooks") == document.get("spec", {}).get("hooks")
        if document["kind"] == "Application":
            assert document["spec"]["deployment"] == "v2"
            assert document["spec"]["path"] == str(root / "apps" / document["metadata"]["name"])
        else:
            assert removed == added == []


@pytest.mark.parametrize("example", sorted((EXAMPLES / "manifests").glob("*.yaml")), ids=lambda p: p.name)
def test_adapting_an_example_parses_to_the_sandbox_document_and_a_deployment_change_is_one_line(
        example: Path, tmp_path: Path) -> None:
    text = example.read_text()
    adapted = sandbox_manifests.adapt(text, tmp_path, "http://127.0.0.1:1", "v1")

    assert yaml.safe_load(adapted) == sandbox_manifests.sandboxed(yaml.safe_load(text), tmp_path, "http://127.0.0.1:1", "v1")
    assert len(adapted.splitlines()) == len(text.splitlines())
    if yaml.safe_load(text)["kind"] == "Application":
        bumped = sandbox_manifests.with_deployment(adapted, "v7")
        assert changed_lines(adapted, bumped) == (["  deployment: v1"], ["  deployment: v7"])


@pytest.mark.parametrize("spec_text", [
    # block-style mappings, a comment after the value, keys inside a hook's script that look like the ones edited
    "spec:\n  path: /opt/x  # where it lives\n  deployment: v1\n  userMapping:\n    deploy: deploy\n    web: www-data\n"
    "  source:\n    url: https://a.example/x/{deployment}.tar.gz\n  user: deploy\n  hooks:\n    afterActivate: |\n"
    "      path: not a key\n      deployment: nor this\n",
    # quoted values and keys in another order
    "spec:\n  source:\n    url: \"https://a.example/x/{deployment}.tgz\"\n  deployment: 'v1'\n  path: \"/opt/x\"\n",
])
def test_line_edits_work_on_other_layouts_and_leave_hook_scripts_alone(spec_text: str, tmp_path: Path) -> None:
    text = "apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: x\n" + spec_text
    adapted = sandbox_manifests.adapt(text, tmp_path, "http://127.0.0.1:1", "v1")
    bumped = sandbox_manifests.with_deployment(adapted, "v2")

    document = yaml.safe_load(bumped)
    assert document["spec"]["deployment"] == "v2"
    assert document["spec"]["path"] == str(tmp_path / "apps" / "x")
    assert document == sandbox_manifests.sandboxed(yaml.safe_load(text), tmp_path, "http://127.0.0.1:1", "v2")
    assert "      path: not a key" in bumped or "afterActivate" not in text


def test_an_example_the_line_edits_cannot_adapt_is_refused_with_what_to_do(tmp_path: Path) -> None:
    text = ("apiVersion: tether/v1\nkind: Application\nmetadata: {name: x}\n"
            "spec: {path: /opt/x, deployment: v1, source: {url: 'https://a.example/{deployment}'}}\n")
    with pytest.raises(sandbox_manifests.AdaptError, match="on a line of its own"):
        sandbox_manifests.adapt(text, tmp_path, "http://127.0.0.1:1", "v1")


def test_the_demo_ends_with_commands_that_work_on_its_sandbox(
        demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    root, run = demo_run
    tail = run.stdout[run.stdout.index("To keep using the sandbox"):]
    commands = [line.strip() for line in tail.splitlines() if line.startswith("    ")]
    direct = next(c for c in commands if " status --manifests " in c)
    export = next(c for c in commands if c.startswith("export "))
    assert f"--manifests {root / 'manifests'}" in direct and f"--state-dir {root / 'state'}" in direct
    tether = [sys.executable, "-m", "controller"]

    listed = subprocess.run([*tether, *shlex.split(direct)[1:]], capture_output=True, text=True, env=clean_env(),
                            timeout=60)
    variables = dict(item.split("=", 1) for item in shlex.split(export)[1:])
    by_env = subprocess.run([*tether, "status"], capture_output=True, text=True, env={**clean_env(), **variables},
                            timeout=60)

    assert listed.returncode == by_env.returncode == 0, listed.stderr + by_env.stderr
    assert set(variables) == {"TETHER_MANIFESTS", "TETHER_STATE_DIR"}
    for name in ("site", "shop", "acme"):
        assert re.search(rf"^{name}\b.*\bv2\b", listed.stdout, re.M), listed.stdout
    assert listed.stdout == by_env.stdout


@pytest.mark.parametrize(("applications", "kinds", "wording"), [
    (0, 0, "0 applications and 0 kinds"), (1, 0, "1 application and 0 kinds"),
    (1, 1, "1 application and 1 kind"), (3, 2, "3 applications and 2 kinds"),
])
def test_validate_counts_applications_and_kinds_in_good_english(
        applications: int, kinds: int, wording: str, tmp_path: Path) -> None:
    for n in range(applications):
        support.write_manifest(tmp_path, support.application(f"app{n}", f"/srv/app{n}"))
    for n in range(kinds):
        support.write_manifest(tmp_path, {"apiVersion": "tether/v1", "kind": "ApplicationKind",
                                          "metadata": {"name": f"kind{n}"}, "spec": {}}, f"kind{n}.yaml")

    run = subprocess.run([sys.executable, "-m", "controller", "validate", str(tmp_path)], capture_output=True,
                         text=True, env=clean_env(), timeout=60)

    assert (run.returncode, run.stdout.strip()) == (0, f"{wording} are valid."), run.stderr


# ---------------------------------------------------------------- make demo-daemon


class Lines:
    """The demo's stdout, read by a thread, so that a test can wait for a line with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        import threading
        self.lines: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self.thread.start()

    def wait_for(self, predicate: Callable[[str], bool], process: subprocess.Popen[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((line for line in list(self.lines) if predicate(line)), None)
            if found is not None:
                return found
            assert process.poll() is None, "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError("no such line within the deadline:\n" + "".join(self.lines))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended; only its parent's wait is missing
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def demo_daemon(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines, Path]]:
    root = tmp_path / "sandbox"
    log = (tmp_path / "daemon.log").open("w")
    process = subprocess.Popen([sys.executable, str(EXAMPLES / "demo_daemon.py"), "--sandbox", str(root)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                               env=clean_env(), cwd=tmp_path)
    try:
        yield process, Lines(process), root
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def status(root: Path) -> list[dict[str, Any]]:
    run = subprocess.run([sys.executable, "-m", "controller", "status", "--json", "--manifests", str(root / "manifests"),
                          "--state-dir", str(root / "state")], capture_output=True, text=True, env=clean_env(),
                         timeout=60)
    documents: list[dict[str, Any]] = json.loads(run.stdout)
    return documents


def test_demo_daemon_deploys_an_edited_manifest_serves_metrics_and_stops_both_on_ctrl_c(
        demo_daemon: tuple[subprocess.Popen[str], Lines, Path]) -> None:
    process, lines, root = demo_daemon
    ready = lines.wait_for(lambda line: line.startswith("Ready:"), process, timeout=180)
    pid = int(re.search(r"tether run \(pid (\d+)\)", ready).group(1))  # type: ignore[union-attr]
    port = int(re.search(r"http://127\.0\.0\.1:(\d+)/metrics", ready).group(1))  # type: ignore[union-attr]
    artifacts = re.search(r"artifacts at (http://127\.0\.0\.1:\d+)", ready).group(1)  # type: ignore[union-attr]
    assert alive(pid)
    manifest = root / "manifests" / "site.yaml"
    before = manifest.read_text()

    manifest.write_text(sandbox_manifests.with_deployment(before, "v2"))
    deadline = time.monotonic() + 60
    while not any(d["application"] == "site" and d.get("current") == "v2" for d in status(root)):
        assert time.monotonic() < deadline, json.dumps(status(root), indent=1)
        time.sleep(0.2)
    scraped = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True,
                             timeout=30)
    assert 'tether_' in scraped.stdout and 'name="site"' in scraped.stdout

    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)

    assert process.returncode == 0, "".join(lines.lines)
    lines.thread.join(timeout=10)
    assert not alive(pid)
    assert any("stopped with exit code 0" in line for line in lines.lines), "".join(lines.lines)
    for url in (f"http://127.0.0.1:{port}/metrics", f"{artifacts}/site/v1.tar.gz"):
        refused = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "5", url], timeout=30)
        assert refused.returncode == 7, url  # curl: could not connect
    assert os.readlink(root / "apps" / "site" / "current") == str(root / "apps" / "site" / "v2")
