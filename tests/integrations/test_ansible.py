"""packaging/ansible: the tether.node collection's module `tether_application`, run by the real
`ansible-playbook` (connection local, the collection found through ANSIBLE_COLLECTIONS_PATH) against
real files, the real `tether validate`, and a real `tether run` daemon fetching from a real HTTP server.

Each playbook registers every task's result and ends with a task that writes them to a JSON file, so the
tests read what the module returned; the PLAY RECAP gives the changed and failed counts.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import support

COLLECTIONS = support.REPO / "packaging" / "ansible"
MODULE_FILE = COLLECTIONS / "ansible_collections" / "tether" / "node" / "plugins" / "modules" / "tether_application.py"
FQCN = "tether.node.tether_application"
VENV_BIN = Path(sys.executable).parent
TETHER = VENV_BIN / "tether"
SECRET = "Bearer ansible-s3cret-0451"
RECAP = re.compile(r"^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)"
                   r"\s+rescued=(\d+)\s+ignored=(\d+)", re.MULTILINE)


# ---------------------------------------------------------------- running ansible-playbook


def ansible_playbook() -> Path:
    """ansible-playbook beside the Python running the tests (the venv), else on the PATH; never skipped."""
    beside = VENV_BIN / "ansible-playbook"
    found = beside if beside.is_file() else Path(shutil.which("ansible-playbook") or "/nonexistent")
    if not found.is_file():
        pytest.fail(f"ansible-playbook is not installed beside {sys.executable} nor on the PATH: "
                    "install ansible-core into the venv (it is in the test requirements)")
    return found


def tether_bin() -> str:
    assert TETHER.is_file(), f"no tether beside {sys.executable}: run `make venv`"
    return str(TETHER)


@dataclasses.dataclass
class Outcome:
    results: dict[str, dict[str, Any]]  # the registered result of each task, by its name
    recap: dict[str, int]  # the PLAY RECAP's counts: ok, changed, unreachable, failed, skipped, rescued, ignored
    output: str


def module_task(label: str, /, check_mode: bool = False, diff: bool = False, ignore_errors: bool = False,
                fqcn: str = FQCN, **args: Any) -> dict[str, Any]:
    """A task of the module (tether_application unless `fqcn` says) with options `args`, registered as `label`."""
    task: dict[str, Any] = {"name": label, fqcn: args, "register": label}
    if check_mode:
        task["check_mode"] = True
    if diff:
        task["diff"] = True
    if ignore_errors:
        task["ignore_errors"] = True
    return task


def play(tmp_path: Path, *tasks: dict[str, Any]) -> Outcome:
    """Run a playbook of `tasks` on localhost with a private Ansible home, and what it reported."""
    results = tmp_path / "ansible-results.json"
    results.unlink(missing_ok=True)
    names = [t["register"] for t in tasks]
    record = {"name": "record", "changed_when": False, "ansible.builtin.copy": {
        "dest": str(results), "content": "{{ {" + ", ".join(f"'{n}': {n}" for n in names) + "} | to_json }}"}}
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "tether_application", "hosts": "localhost", "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"},
        "tasks": [*tasks, record],
    }], sort_keys=False))
    config = tmp_path / "ansible.cfg"  # none of the user's or the system's
    config.write_text("[defaults]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "TETHER_"))}
    env.update(ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_COLLECTIONS_SCAN_SYS_PATH="false",
               ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
               ANSIBLE_REMOTE_TMP=str(tmp_path / "ansible-remote"), ANSIBLE_CONFIG=str(config),
               ANSIBLE_NOCOLOR="1", ANSIBLE_STDOUT_CALLBACK="default", ANSIBLE_RETRY_FILES_ENABLED="false")
    run = subprocess.run([str(ansible_playbook()), "-c", "local", "-i", "localhost,", str(playbook)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    output = run.stdout + run.stderr
    recap = RECAP.search(run.stdout)
    assert recap, f"no PLAY RECAP (exit code {run.returncode}):\n{output}"
    assert run.returncode == 0 and results.is_file(), f"the playbook failed (exit code {run.returncode}):\n{output}"
    counts = dict(zip(("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored"),
                      map(int, recap.groups()), strict=True))
    return Outcome(json.loads(results.read_text()), counts, output)


# ---------------------------------------------------------------- the manifests


def site_args(node: support.Node, manifests: Path, **more: Any) -> dict[str, Any]:
    """Options of the module for `site`, most of them."""
    return {
        "name": "site", "manifests_dir": str(manifests), "application": "shop", "environment": "staging",
        "path": str(node.apps / "site"), "kind": "rails", "deployment": "1.10",
        "source": {"url": "https://artifacts.example.com/{application}/{deployment}.tar.gz",
                   "headers": {"X-Token": {"fromFile": "/etc/tether/secrets/site"}, "Authorization": SECRET},
                   "sha256": "ab" * 32, "strip_components": 1, "limits": {"max_bytes": 1000000, "maxRatio": 50}},
        "user": "root", "group": "root", "user_mapping": {"app": "www-data", "deploy": "root"},
        "group_mapping": {}, "retention": 3,
        "hooks": {"after_activate": "#!/bin/sh\nset -e\necho \"$DEPLOYMENT_NAME is live\"\n",
                  "beforeDeploy": {"path": "/usr/local/bin/check-disk"}},
        "hook_timeout": 60, "persistent_data": "off", "rollback_on_failure": False, "drift": "report",
        "drift_ignore": ["log/*", "tmp/*"], "suspend": False, "labels": {"team": "web", "tier": "1"},
        "validate": True, "tether_bin": tether_bin(), **more,
    }


def expected_site(node: support.Node) -> dict[str, Any]:
    """The manifest `site_args` describes."""
    return {
        "apiVersion": "tether/v1", "kind": "Application",
        "metadata": {"name": "site", "labels": {"team": "web", "tier": "1"}},
        "spec": {
            "application": "shop", "environment": "staging", "path": str(node.apps / "site"), "kind": "rails",
            "deployment": "1.10",
            "source": {"url": "https://artifacts.example.com/{application}/{deployment}.tar.gz",
                       "headers": {"Authorization": SECRET, "X-Token": {"fromFile": "/etc/tether/secrets/site"}},
                       "sha256": "ab" * 32, "stripComponents": 1, "limits": {"maxBytes": 1000000, "maxRatio": 50}},
            "user": "root", "group": "root", "userMapping": {"app": "www-data", "deploy": "root"},
            "groupMapping": {}, "retention": {"keep": 3},
            "hooks": {"beforeDeploy": {"path": "/usr/local/bin/check-disk"},
                      "afterActivate": "#!/bin/sh\nset -e\necho \"$DEPLOYMENT_NAME is live\"\n"},
            "hookTimeoutSeconds": 60, "persistentData": "off", "rollbackOnFailure": False, "drift": "report",
            "driftIgnore": ["log/*", "tmp/*"], "suspend": False,
        },
    }


def rails_kind(directory: Path) -> None:
    support.write_manifest(directory, {"apiVersion": "tether/v1", "kind": "ApplicationKind",
                                       "metadata": {"name": "rails"}, "spec": {"hooks": {}}})


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tether_bin(), "validate", *map(str, paths)], capture_output=True, text=True, timeout=60)


def assert_tether_may_read(file: Path) -> None:
    st = file.stat()
    assert st.st_mode & 0o7777 == 0o644, oct(st.st_mode)
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (0, 0)


# ---------------------------------------------------------------- writing manifests


def test_the_module_writes_the_manifest_tether_validates_and_a_second_run_with_the_same_options_changes_nothing(
        node: support.Node, tmp_path: Path) -> None:
    manifests = tmp_path / "etc" / "manifests"
    rails_kind(manifests)  # spec.kind must name a kind: validation sees the other manifests of the directory
    file = manifests / "site.yaml"

    first = play(tmp_path, module_task("write", **site_args(node, manifests)))

    assert first.recap["changed"] == 1 and first.results["write"]["changed"] is True, first.output
    assert yaml.safe_load(file.read_text()) == expected_site(node)
    assert first.results["write"]["path"] == str(file)
    assert first.results["write"]["generation"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert first.results["write"]["validation"]["valid"] is True
    assert_tether_may_read(file)
    assert sorted(os.listdir(manifests)) == ["rails.yaml", "site.yaml"], "a temporary file was left behind"
    checked = validate(manifests)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    written, inode = file.read_bytes(), file.stat().st_ino

    second = play(tmp_path, module_task("write", **site_args(node, manifests)))

    assert second.recap["changed"] == 0 and second.results["write"]["changed"] is False, second.output
    assert file.read_bytes() == written and file.stat().st_ino == inode, "an unchanged manifest was rewritten"
    assert second.results["write"]["generation"] == first.results["write"]["generation"]


def test_check_mode_writes_nothing_diff_mode_shows_the_text_and_state_absent_removes_the_file(
        node: support.Node, tmp_path: Path) -> None:
    manifests = node.manifests
    rails_kind(manifests)
    file = manifests / "site.yaml"
    v1 = site_args(node, manifests, deployment="v1", validate=False)
    v2 = site_args(node, manifests, deployment="v2", validate=False)

    outcome = play(
        tmp_path,
        module_task("written", **v1),
        module_task("checked", check_mode=True, diff=True, **v2),
        module_task("new_checked", check_mode=True, **{**v1, "name": "other", "path": str(node.apps / "other")}),
        module_task("updated", diff=True, **v2),
        module_task("absent_checked", check_mode=True, name="site", manifests_dir=str(manifests), state="absent"),
        module_task("removed", diff=True, name="site", manifests_dir=str(manifests), state="absent"),
        module_task("removed_again", name="site", manifests_dir=str(manifests), state="absent"),
    )

    results = outcome.results
    assert [results[n]["changed"] for n in results] == [True, True, True, True, True, True, False], outcome.output
    assert outcome.recap["changed"] == 6
    # check mode: changed, and the next task still finds v1 on disk
    checked = results["checked"]["diff"][0]
    assert "deployment: v1" in checked["before"] and "deployment: v2" in checked["after"], checked
    assert checked["after"].replace("v2", "v1") == checked["before"]
    updated = results["updated"]["diff"][0]
    assert updated["before"] == checked["before"], "the check-mode task wrote the manifest"
    assert updated["after"] == checked["after"]
    assert results["updated"]["diff"][0]["before_header"] == str(file)
    # state=absent in check mode kept the file: the real removal still saw v2
    removed = results["removed"]["diff"][0]
    assert removed["before"] == updated["after"] and removed["after"] == "", removed
    assert sorted(os.listdir(manifests)) == ["rails.yaml"], "other.yaml or a temporary file was written"
    # literal header values are hidden from Ansible's output
    assert SECRET not in outcome.output and SECRET not in json.dumps(results)


def test_validation_refuses_an_invalid_manifest_without_writing_it_and_wrong_file_attributes_are_repaired(
        node: support.Node, tmp_path: Path) -> None:
    manifests = node.manifests
    support.write_manifest(manifests, support.application("shop", node.apps / "shop"))
    common: dict[str, Any] = {"manifests_dir": str(manifests), "validate": True, "tether_bin": tether_bin()}

    outcome = play(
        tmp_path,
        module_task("unknown_kind", ignore_errors=True, name="site", path=str(node.apps / "site"), kind="nosuch",
                    **common),
        module_task("overlapping", ignore_errors=True, name="site", path=str(node.apps / "shop" / "inner"),
                    **common),
        module_task("bad_name", ignore_errors=True, name="../escape", path=str(node.apps / "site"), **common),
        module_task("written", name="site", path=str(node.apps / "site"), deployment="v1", **common),
        {"name": "loosened", "register": "loosened", "ansible.builtin.file": {"path": str(manifests / "site.yaml"),
                                                                              "mode": "0664"}},
        module_task("repaired", diff=True, name="site", path=str(node.apps / "site"), deployment="v1", **common),
    )

    results = outcome.results
    assert results["unknown_kind"]["failed"] is True and "unknown kind 'nosuch'" in results["unknown_kind"]["msg"]
    assert str(manifests / "site.yaml") in results["unknown_kind"]["msg"], "the error names the temporary file"
    assert results["overlapping"]["failed"] is True and "overlaps" in results["overlapping"]["msg"]
    assert results["bad_name"]["failed"] is True and "not a valid tether application name" in results["bad_name"]["msg"]
    assert outcome.recap["failed"] == 0 and outcome.recap["ignored"] == 3, outcome.output
    assert results["written"]["changed"] is True and results["loosened"]["changed"] is True
    assert results["repaired"]["changed"] is True, "a group-writable manifest (which tether refuses) was kept"
    assert results["repaired"]["diff"][0]["before"] == {"mode": "0664"}
    assert results["repaired"]["diff"][0]["after"] == {"mode": "0644"}
    assert_tether_may_read(manifests / "site.yaml")
    assert sorted(os.listdir(manifests)) == ["shop.yaml", "site.yaml"]
    assert not (node.root / "escape.yaml").exists()


def test_rollout_and_health_check_go_to_the_manifest_with_the_schemas_key_names(
        node: support.Node, tmp_path: Path) -> None:
    rollout = {"from": "v1", "started_at": "2026-12-01T10:00:00Z",
               "waves": [{"selector": {"canary": True}}, {"percent": 50.5, "after": "10m"}, {"percent": 100, "after": "1h"}],
               "gate": {"prometheus": "http://prometheus:9090", "query": "ALERTS", "intervalSeconds": 5}}
    health = {"http": {"url": "http://127.0.0.1:8080/health", "expect_status": [200]}, "healthy_seconds": 0}
    common: dict[str, Any] = {"name": "site", "manifests_dir": str(node.manifests), "path": str(node.apps / "site"),
                              "deployment": "v2", "validate": True, "tether_bin": tether_bin()}

    outcome = play(tmp_path, module_task("written", rollout=rollout, health_check=health, **common),
                   module_task("shrinking", ignore_errors=True, health_check=health, **common,
                               rollout={**rollout, "waves": [{"percent": 50}, {"percent": 20}]}))

    spec = yaml.safe_load((node.manifests / "site.yaml").read_text())["spec"]
    assert spec["rollout"] == {"from": "v1", "startedAt": "2026-12-01T10:00:00Z",
                               "waves": [{"selector": {"canary": "true"}}, {"percent": 50.5, "after": "10m"},
                                         {"percent": 100, "after": "1h"}],
                               "gate": {"prometheus": "http://prometheus:9090", "query": "ALERTS",
                                        "intervalSeconds": 5}}, outcome.output
    assert spec["healthCheck"] == {"http": {"url": "http://127.0.0.1:8080/health", "expectStatus": [200]},
                                   "healthySeconds": 0}
    assert outcome.results["shrinking"]["failed"] is True and "percent" in outcome.results["shrinking"]["msg"]


NODE_FQCN = "tether.node.tether_node"


def test_tether_node_writes_the_node_file_tether_reads_with_check_diff_and_validation(
        node: support.Node, tmp_path: Path) -> None:
    node_file = node.root / "node.yaml"
    web: dict[str, Any] = {"fqcn": NODE_FQCN, "path": str(node_file), "name": "web-1",
                           "labels": {"zone": "eu-1", "canary": True}, "validate": True, "tether_bin": tether_bin()}

    outcome = play(tmp_path,
                   module_task("checked", check_mode=True, **web),
                   module_task("written", diff=True, **web),
                   module_task("again", **web),
                   module_task("invalid", ignore_errors=True, **{**web, "name": "Web_1"}))

    results = outcome.results
    assert [results[n]["changed"] for n in ("checked", "written", "again")] == [True, True, False], outcome.output
    assert results["written"]["diff"][0]["before"] == "" and "name: web-1" in results["written"]["diff"][0]["after"]
    assert results["invalid"]["failed"] is True and "/metadata/name" in results["invalid"]["msg"], results["invalid"]
    assert_tether_may_read(node_file)
    assert [p.name for p in node.root.glob("*node.yaml*")] == ["node.yaml"]
    shown = subprocess.run([tether_bin(), "node", "--json", "--node-config", str(node_file), "--manifests",
                            str(node.manifests)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert (json.loads(shown.stdout)["name"], json.loads(shown.stdout)["labels"]) == \
        ("web-1", {"canary": "true", "zone": "eu-1"})


@pytest.mark.parametrize("module_file", [MODULE_FILE, MODULE_FILE.with_name("tether_node.py")], ids=lambda p: p.stem)
def test_the_module_documentation_is_valid_yaml_and_describes_exactly_its_options(module_file: Path) -> None:
    tree = ast.parse(module_file.read_text())
    blocks = {target.id: str(node.value.value) for node in tree.body if isinstance(node, ast.Assign)
              for target in node.targets if isinstance(target, ast.Name)
              and target.id in ("DOCUMENTATION", "EXAMPLES", "RETURN") and isinstance(node.value, ast.Constant)}
    assert set(blocks) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}
    documentation, examples, returned = (yaml.safe_load(blocks[n]) for n in ("DOCUMENTATION", "EXAMPLES", "RETURN"))
    assert documentation["module"] == module_file.stem and isinstance(returned, dict)
    spec = importlib.util.spec_from_file_location(f"{module_file.stem}_module", module_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def compare(documented: dict[str, Any], arguments: dict[str, Any], where: str) -> None:
        assert set(documented) == set(arguments), f"{where}: documented {sorted(documented)}, accepted {sorted(arguments)}"
        for name, argument in arguments.items():
            doc = documented[name]
            assert isinstance(doc["description"], str | list), f"{where}.{name}: the description is not text"
            for line in doc["description"] if isinstance(doc["description"], list) else [doc["description"]]:
                assert isinstance(line, str), f"{where}.{name}: {line!r} is not text (a ': ' in a plain scalar?)"
            for key in ("type", "required", "default", "choices", "aliases", "elements"):
                assert doc.get(key) == argument.get(key), f"{where}.{name}: {key} {doc.get(key)!r} != {argument.get(key)!r}"
            if "options" in argument:
                compare(doc["suboptions"], argument["options"], f"{where}.{name}")

    compare(documentation["options"], module.ARGUMENT_SPEC, "options")
    accepted = set(module.ARGUMENT_SPEC) | {a for o in module.ARGUMENT_SPEC.values() for a in o.get("aliases", [])}
    fqcn = f"tether.node.{module_file.stem}"
    site = yaml.safe_load((COLLECTIONS / "examples" / "site.yml").read_text())
    uses = [task[fqcn] for task in examples] + [task[fqcn] for p in site for task in p["tasks"] if fqcn in task]
    assert len(uses) >= (5 if fqcn == FQCN else 2)
    for arguments in uses:
        assert set(arguments) <= accepted, f"an example uses an option the module does not have: {arguments}"


# ---------------------------------------------------------------- waiting


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def reconcile_task(label: str, node: support.Node) -> dict[str, Any]:
    """`tether reconcile`, one pass, as cron or config management would run it instead of a daemon."""
    return {"name": label, "register": label, "ansible.builtin.command": {"argv": [
        tether_bin(), "reconcile", "--manifests", str(node.manifests), "--state-dir", str(node.state)]}}


def test_wait_takes_only_the_status_of_this_manifest_for_its_outcome_not_an_earlier_ones(
        node: support.Node, tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    for version in ("v1", "v2"):
        (artifacts / f"{version}.tar.gz").write_bytes(support.tar_bytes(support.site(version)))
    app = node.apps / "site"
    common: dict[str, Any] = {"name": "site", "manifests_dir": str(node.manifests), "path": str(app),
                              "source": {"url": f"file://{artifacts}/{{deployment}}.tar.gz"},
                              "tether_bin": tether_bin(), "state_dir": str(node.state), "wait_interval": 0.05}

    outcome = play(
        tmp_path,
        module_task("v1", deployment="v1", **common),
        reconcile_task("reconciled_v1", node),
        # No daemon: the status stays Ready with v1, about the previous manifest, until the deadline
        module_task("v2", ignore_errors=True, deployment="v2", wait=True, wait_timeout=1, **common),
        reconcile_task("reconciled_v2", node),
        module_task("v2_again", deployment="v2", wait=True, wait_timeout=30, **common),
    )

    results = outcome.results
    v2 = results["v2"]
    assert v2["failed"] is True and v2["changed"] is True, outcome.output
    assert "gave up after 1 s" in v2["msg"] and "has not reconciled this version of the manifest" in v2["msg"], v2
    assert v2["status"]["current"] == "v1" and v2["status"]["observedGeneration"] != v2["generation"]
    again = results["v2_again"]
    assert again["changed"] is False and again["generation"] == v2["generation"], again
    assert again["status"]["current"] == "v2" and again["status"]["observedGeneration"] == again["generation"]
    assert ready(again["status"])["status"] == "True" and again["waited"] < 30
    assert outcome.recap["failed"] == 0 and outcome.recap["ignored"] == 1, outcome.output


# ---------------------------------------------------------------- waiting for a real daemon


class Daemon:
    """A real `tether run` on the node; its log goes to a file."""

    def __init__(self, node: support.Node) -> None:
        self.log_file = node.root / "tether-run.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                [tether_bin(), "run", "--manifests", str(node.manifests), "--state-dir", str(node.state),
                 "--metrics-address", "127.0.0.1:0", "--insecure-manifests", "--resync-interval", "3600", "-v"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=node.root)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def wait_running(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while "tether is running" not in self.log():
            assert self.process.poll() is None, f"tether run ended with {self.process.returncode}:\n{self.log()}"
            assert time.monotonic() < deadline, f"tether run did not start within {timeout} s:\n{self.log()}"
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture
def daemon(node: support.Node) -> Iterator[Daemon]:
    running = Daemon(node)
    try:
        running.wait_running()
        yield running
    finally:
        running.stop()


def test_wait_returns_once_tether_runs_the_requested_deployment_and_fails_fast_with_tethers_error(
        node: support.Node, http: support.HttpServer, daemon: Daemon, tmp_path: Path) -> None:
    for version in ("v1", "v2"):
        http.serve(f"/site/{version}.tar.gz", support.tar_bytes(support.site(version)))
    app = node.apps / "site"
    common: dict[str, Any] = {"name": "site", "manifests_dir": str(node.manifests), "path": str(app),
              "source": {"url": http.url("/site/{deployment}.tar.gz")}, "tether_bin": tether_bin(),
              "state_dir": str(node.state), "wait": True, "wait_timeout": 60, "wait_interval": 0.05}

    outcome = play(
        tmp_path,
        module_task("v1", deployment="v1", **common),
        # Ready with v1 already: waiting for v2 must not take that status for this manifest's
        module_task("v2", deployment="v2", **common),
        module_task("missing", ignore_errors=True, deployment="v3", **common),  # the server answers 404
        # without validation, tether itself refuses it and keeps the last good manifest
        module_task("invalid", ignore_errors=True, deployment="v2", **{**common, "path": "/"}),
    )

    results = outcome.results
    for version in ("v1", "v2"):
        status = results[version]["status"]
        assert results[version]["changed"] is True, outcome.output
        assert status["observedGeneration"] == results[version]["generation"], status
        assert (status["desired"], status["current"], ready(status)["status"]) == (version, version, "True"), status
    missing = results["missing"]
    assert missing["failed"] is True and "404" in missing["msg"] and "tether stalled" in missing["msg"], missing
    assert missing["waited"] < 30, "the wait did not stop at tether's permanent error"
    assert missing["status"]["current"] == "v2" and missing["status"]["lastError"] in missing["msg"]
    assert os.readlink(app / "current") == str(app / "v2")
    assert (app / "v2" / "index.html").read_text() == "<h1>version v2</h1>\n"
    invalid = results["invalid"]
    assert invalid["failed"] is True and "tether refuses the manifest" in invalid["msg"], invalid
    assert invalid["waited"] < 30 and str(node.manifests / "site.yaml") in invalid["msg"]
    assert outcome.recap["failed"] == 0 and outcome.recap["ignored"] == 2, outcome.output


# ---------------------------------------------------------------- the web config example


def test_the_examples_web_config_play_gives_the_daemon_tls_and_basic_auth_through_the_environment_file(
        node: support.Node, tmp_path: Path) -> None:
    import base64
    import ssl
    import urllib.error
    import urllib.request

    import bcrypt

    from tests import certificates

    site = yaml.safe_load((COLLECTIONS / "examples" / "site.yml").read_text())
    example = next(p for p in site if "web_config" in json.dumps(p.get("vars", {})))
    assert {h["name"] for h in example["handlers"]} == {t["notify"] for t in example["tasks"]}
    certs = certificates.make(tmp_path / "etc")
    (certs.directory / "tls").mkdir()
    for source, name in ((certs.server_cert, "tether.crt"), (certs.server_key, "tether.key")):
        shutil.copy(source, certs.directory / "tls" / name)
    defaults = tmp_path / "default-tether"
    shutil.copy(support.REPO / "packaging" / "debian" / "tether.default", defaults)
    hashed = bcrypt.hashpw(b"scrape-s3cret", bcrypt.gensalt(4)).decode()
    overrides = {"tether_defaults_file": str(defaults), "tether_web_config_file": str(certs.directory / "web.yml"),
                 "tether_metrics_address": "127.0.0.1:0", "vault_tether_prometheus_hash": hashed}
    tasks = [{**{k: v for k, v in task.items() if k != "notify"}, "vars": {**example["vars"], **overrides},
              "register": f"task{number}"} for number, task in enumerate(example["tasks"])]

    outcome = play(tmp_path, *tasks)

    assert outcome.recap["failed"] == 0 and outcome.recap["changed"] == 2, outcome.output
    assert stat_mode(certs.directory / "web.yml") == 0o600
    environment = dict(line.split("=", 1) for line in defaults.read_text().splitlines()
                       if line and not line.startswith("#"))  # what systemd's EnvironmentFile= reads
    assert environment == {"TETHER_WEB_CONFIG_FILE": str(certs.directory / "web.yml"),
                           "TETHER_METRICS_ADDRESS": "127.0.0.1:0"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(environment, TETHER_MANIFESTS=str(node.manifests), TETHER_STATE_DIR=str(node.state))
    daemon = subprocess.Popen([tether_bin(), "run", "-v"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert daemon.stderr is not None
        log = support.LogLines(daemon.stderr)
        port = int(log.wait_for(r"Serving metrics on \S+ port \d+")[2].rsplit(" ", 1)[1].rstrip("."))
        context = ssl.create_default_context(cafile=str(certs.ca))
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10, context=context)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={
            "Authorization": "Basic " + base64.b64encode(b"prometheus:scrape-s3cret").decode()})
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            assert response.status == 200 and b"tether_build_info" in response.read()
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


# ---------------------------------------------------------------- git and Debian package sources


def test_git_and_debian_package_sources_go_to_the_manifest_with_the_schemas_key_names_and_secrets_stay_hidden(
        node: support.Node, tmp_path: Path) -> None:
    common: dict[str, Any] = {"manifests_dir": str(node.manifests), "validate": True, "tether_bin": tether_bin()}
    shop = {"name": "shop", "path": str(node.apps / "shop"), "deployment": "v2.1.0", **common, "source": {"git": {
        "url": "https://git.example.com/shop.git", "ref": "release-{deployment}", "lfs": "ignore",
        "subdirectory": "dist", "headers": {"Authorization": SECRET, "X-From-File": {"from_file": "/etc/tether/s"}},
        "verify": {"allowedSigners": "/etc/tether/keys/shop.allowed_signers"}}}}
    tools = {"name": "tools", "path": str(node.apps / "tools"), **common, "source": {"git": {
        "url": "ssh://git@git.example.com/tools.git", "sshKey": {"fromFile": "/etc/tether/secrets/tools-key"},
        "known_hosts": "/etc/tether/known_hosts", "verify": {"gpg_keyring": "/etc/tether/keys/tools.gpg"}}}}
    dashboard = {"name": "dashboard", "path": str(node.apps / "dashboard"), **common, "source": {
        "url": "https://apt.example.com/dashboard_{deployment}_all.deb", "format": "deb", "debRoot": "opt/dashboard"}}
    both = {**shop, "name": "both", "source": {**shop["source"], "url": "https://artifacts.example.com/a.tar.gz"}}
    two_keys = {**tools, "name": "twokeys", "source": {"git": {**tools["source"]["git"], "verify": {
        "allowed_signers": "/etc/tether/a", "gpg_keyring": "/etc/tether/b"}}}}

    outcome = play(tmp_path, module_task("shop", diff=True, **shop), module_task("shop_again", diff=True, **shop),
                   module_task("tools", **tools), module_task("dashboard", **dashboard),
                   module_task("both", ignore_errors=True, **both), module_task("neither", ignore_errors=True,
                                                                                **{**shop, "source": {"sha256": "a" * 64}}),
                   module_task("twokeys", ignore_errors=True, **two_keys))

    results = outcome.results
    sources = {name: yaml.safe_load((node.manifests / f"{name}.yaml").read_text())["spec"]["source"]
               for name in ("shop", "tools", "dashboard")}
    assert sources == {
        "shop": {"git": {"url": "https://git.example.com/shop.git", "ref": "release-{deployment}", "lfs": "ignore",
                         "subdirectory": "dist",
                         "headers": {"Authorization": SECRET, "X-From-File": {"fromFile": "/etc/tether/s"}},
                         "verify": {"allowedSigners": "/etc/tether/keys/shop.allowed_signers"}}},
        "tools": {"git": {"url": "ssh://git@git.example.com/tools.git",
                          "sshKey": {"fromFile": "/etc/tether/secrets/tools-key"},
                          "knownHosts": "/etc/tether/known_hosts", "verify": {"gpgKeyring": "/etc/tether/keys/tools.gpg"}}},
        "dashboard": {"url": "https://apt.example.com/dashboard_{deployment}_all.deb", "format": "deb",
                      "debRoot": "opt/dashboard"},
    }, outcome.output
    assert [results[n]["changed"] for n in ("shop", "shop_again", "tools", "dashboard")] == [True, False, True, True]
    assert SECRET not in outcome.output and SECRET not in json.dumps(results), "a git header secret was shown"
    for name, words in (("both", ("url", "git")), ("neither", ("url", "git")),
                        ("twokeys", ("allowed_signers", "gpg_keyring"))):
        assert results[name]["failed"] is True, results[name]
        assert all(word in results[name]["msg"] for word in words), results[name]["msg"]
    assert sorted(os.listdir(node.manifests)) == ["dashboard.yaml", "shop.yaml", "tools.yaml"]
