"""Node identity (design section 11): the node file read with the manifests' rules, or the host name; `tether node`,
`tether schema node`, and a daemon that follows an edited node file.

Every command is the real `tether` in a subprocess on real files; the daemon tests drive a real
`tether run` and wait for its log lines and status files with deadlines, never with sleeps.
"""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from controller import errors
from controller.daemon import metrics
from controller.fleet import node as node_identity
from tests import support, test_daemon, test_metrics

NODE_YAML = """\
apiVersion: tether/v1
kind: Node
metadata:
  name: web-07.eu-1.example.com
  labels: {role: web, zone: eu-1, canary: "true", example.com/rack: r-12}
"""


def node_file(node: support.Node) -> Path:
    return node.root / "etc" / "node.yaml"


def write_node_file(node: support.Node, text: str, mode: int = 0o644) -> Path:
    """Write the node file atomically (a temporary file, then a rename), as config management does."""
    target = node_file(node)
    target.parent.mkdir(mode=0o755, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, target)
    return target


def tether_node(node: support.Node, *args: str) -> Any:
    return node.tether("node", "--node-config", str(node_file(node)), *args)


# ---------------------------------------------------------------- the command line


def test_without_a_node_file_the_node_is_named_after_the_host_name_with_no_labels(node: support.Node) -> None:
    run = tether_node(node, "--json")
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown == {"name": socket.gethostname(), "labels": {}, "source": "host name", "file": None,
                     "applications": []}
    text = tether_node(node)
    assert text.returncode == 0
    assert f"Name:   {socket.gethostname()}" in text.stdout
    assert f"the host name (there is no {node_file(node)})" in text.stdout


def test_a_valid_node_file_gives_the_name_and_labels_and_says_where_they_came_from(node: support.Node) -> None:
    write_node_file(node, NODE_YAML)
    support.write_manifest(node.manifests, support.application("site", node.apps / "site"))
    run = tether_node(node, "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {
        "name": "web-07.eu-1.example.com", "source": "file", "file": str(node_file(node)),
        "labels": {"role": "web", "zone": "eu-1", "canary": "true", "example.com/rack": "r-12"},
        "applications": [{"name": "site"}]}
    text = tether_node(node)
    assert text.stdout.splitlines() == [
        "Name:   web-07.eu-1.example.com", f"Source: {node_file(node)}",
        "Labels: canary=true, example.com/rack=r-12, role=web, zone=eu-1", "Applications:", "  site"]


def test_the_node_config_can_come_from_the_environment(node: support.Node) -> None:
    write_node_file(node, NODE_YAML)
    run = node.tether("node", "--json", env={"TETHER_NODE_CONFIG": str(node_file(node))})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["name"] == "web-07.eu-1.example.com"


INVALID = {
    "bad YAML": ("apiVersion: tether/v1\nkind: Node\nmetadata: {name: web-07\n", 3, "this is not valid YAML"),
    "a wrong kind": ("apiVersion: tether/v1\nkind: Application\nmetadata: {name: web-07}\n", 2,
                     '"Application" is not one of "Node"'),
    "a label name with a space": ("apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: web-07\n  labels:\n"
                                  "    bad name: x\n", 6, 'the key "bad name" does not have the required form'),
    "a label value that is not a string": ("apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: web-07\n"
                                           "  labels:\n    canary: true\n", 6,
                                           "expected a value of type string, got true"),
    "a label value with a slash": ("apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: web-07\n"
                                   "  labels:\n    zone: eu/1\n", 6, '"eu/1" does not have the required form'),
    "an unknown key": ("apiVersion: tether/v1\nkind: Node\nmetadata: {name: web-07}\nspec: {}\n", 4,
                       "unknown field 'spec'"),
    "a name that is no host name": ("apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: Web_07\n", 4,
                                    '"Web_07" does not have the required form'),
    "a NUL in the name": ('apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: "web\\x0007"\n', 4,
                          "does not have the required form"),
    "a control character in a label value": ('apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: web-07\n'
                                             '  labels: {note: "a\\x1bb"}\n', 5, "the required form"),
    "a duplicate key": ("apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: web-07\n  name: web-08\n", 5,
                        "the key 'name' appears twice"),
    "a missing name": ("apiVersion: tether/v1\nkind: Node\nmetadata: {labels: {a: b}}\n", 3,
                       "the required field 'name' is missing"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_node_file_exits_2_naming_its_file_and_line(node: support.Node, case: str) -> None:
    text, line, message = INVALID[case]
    write_node_file(node, text)
    run = tether_node(node)
    assert run.returncode == 2, run.stdout
    assert f"{node_file(node)}:{line}: " in run.stderr
    assert message in run.stderr
    assert run.stdout == ""
    as_json = tether_node(node, "--json")
    assert as_json.returncode == 2 and f"{node_file(node)}:{line}: " in json.loads(as_json.stdout)["error"]


def test_a_control_character_in_a_label_name_is_refused_by_name(node: support.Node) -> None:
    write_node_file(node, 'apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: web-07\n  labels: {"a\\tb": x}\n')
    run = tether_node(node)
    assert run.returncode == 2
    assert f"{node_file(node)}:5: " in run.stderr and "does not have the required form" in run.stderr


def test_a_group_writable_node_file_is_refused_unless_insecure(node: support.Node) -> None:
    write_node_file(node, NODE_YAML, mode=0o664)
    run = tether_node(node)
    assert run.returncode == 2
    assert f"{node_file(node)}: refused: " in run.stderr and "writable by group or others (mode 0664)" in run.stderr
    insecure = tether_node(node, "--insecure-manifests")
    assert insecure.returncode == 0, insecure.stderr
    assert "Name:   web-07.eu-1.example.com" in insecure.stdout


def test_a_node_file_owned_by_nobody_is_refused(node: support.Node) -> None:
    target = write_node_file(node, NODE_YAML)
    os.chown(target, pwd.getpwnam("nobody").pw_uid, -1)
    run = tether_node(node)
    assert run.returncode == 2
    assert f"refused: {target} is owned by uid {pwd.getpwnam('nobody').pw_uid}" in run.stderr


def test_a_node_file_in_a_world_writable_directory_is_refused(node: support.Node) -> None:
    target = write_node_file(node, NODE_YAML)
    target.parent.chmod(0o777)
    run = tether_node(node)
    assert run.returncode == 2
    assert f"refused: {target.parent} is writable by group or others (mode 0777)" in run.stderr


def test_a_node_config_that_is_a_directory_is_an_error_not_the_host_name(node: support.Node) -> None:
    node_file(node).mkdir(parents=True)
    run = tether_node(node)
    assert run.returncode == 2 and "this is a directory, not a regular file" in run.stderr, run.stderr


def test_a_node_config_that_is_a_fifo_is_refused_without_waiting_for_a_writer(node: support.Node) -> None:
    node_file(node).parent.mkdir(mode=0o755)
    os.mkfifo(node_file(node), 0o644)
    run = node.tether("node", "--node-config", str(node_file(node)), timeout=30)
    assert run.returncode == 2 and "this is a FIFO, not a regular file" in run.stderr, run.stderr
    tracker = node_identity.Tracker(str(node_file(node)), hostname=lambda: "host-1")
    tracker.refresh(first=True)  # the daemon's main loop: it never blocks there either
    assert tracker.error is not None and "not a regular file" in str(tracker.error) and not tracker.known


def test_tether_schema_node_prints_the_shipped_schema_and_its_markdown(node: support.Node) -> None:
    run = node.tether("schema", "node")
    assert run.returncode == 0
    schema = json.loads(run.stdout)
    assert schema["properties"]["kind"] == {"const": "Node", "description": "Manifest kind."}
    assert run.stdout == (support.REPO / "schemas" / "node.json").read_text()
    markdown = node.tether("schema", "node", "--markdown")
    assert markdown.returncode == 0 and "| `metadata.labels` |" in markdown.stdout


def test_a_node_document_in_the_manifests_directory_is_not_an_application(node: support.Node) -> None:
    support.write_manifest(node.manifests, NODE_YAML, "node.yaml")
    run = node.tether("validate", str(node.manifests))
    assert run.returncode == 2 and "kind must be Application or ApplicationKind, not 'Node'" in run.stdout


# ---------------------------------------------------------------- the loader as a function


def test_load_uses_the_host_name_it_is_given_when_the_file_is_missing(tmp_path: Path) -> None:
    found = node_identity.load(str(tmp_path / "none.yaml"), hostname=lambda: "db-3")
    assert found == node_identity.Node("db-3", {}, node_identity.HOST_NAME)
    assert not found.from_file and found.describe() == "db-3 (no labels; from the host name)"


def test_load_reads_a_file_into_a_frozen_node(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    (tmp_path / "node.yaml").write_text(NODE_YAML)
    (tmp_path / "node.yaml").chmod(0o644)
    found = node_identity.load(str(tmp_path / "node.yaml"), hostname=lambda: "unused")
    assert found.name == "web-07.eu-1.example.com" and found.labels["canary"] == "true"
    with pytest.raises(AttributeError):
        found.name = "other"  # type: ignore[misc]


def test_a_host_name_that_breaks_no_rule_of_the_schema_is_kept_as_is_even_in_upper_case(tmp_path: Path) -> None:
    assert node_identity.load(str(tmp_path / "none.yaml"), hostname=lambda: "WEB_07").name == "WEB_07"


def test_the_tracker_keeps_the_last_good_identity_while_the_file_is_invalid(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    path = tmp_path / "node.yaml"
    tracker = node_identity.Tracker(str(path), hostname=lambda: "host-1")
    assert not tracker.refresh(first=True) and tracker.identity.name == "host-1"
    path.write_text(NODE_YAML)
    path.chmod(0o644)
    assert tracker.refresh() and tracker.identity.name == "web-07.eu-1.example.com"
    assert not tracker.refresh()
    path.write_text("kind: [\n")
    assert tracker.refresh() and tracker.identity.name == "web-07.eu-1.example.com"
    assert isinstance(tracker.error, errors.ManifestError) and tracker.error.line == 1  # the [ of its one line
    assert tracker.status()["error"] == str(tracker.error)
    path.unlink()
    assert tracker.refresh() and tracker.identity.name == "host-1" and tracker.error is None


# ---------------------------------------------------------------- the daemon


@pytest.fixture
def daemon(node: support.Node, http: support.HttpServer) -> Iterator[test_daemon.Daemon]:
    test_daemon.serve(http, "site", "v1")
    running = test_daemon.Daemon(node, ("--node-config", str(node_file(node))), None)
    running.wait_for_log(r"tether is running")
    test_daemon.put(node.manifests, test_daemon.app_manifest(node, http, deployment="v1"))
    test_daemon.wait_converged(node, "site", "v1")
    yield running
    running.stop()


def status_node(node: support.Node) -> Any:
    return (test_daemon.read_status(node, "site") or {}).get("node")


def test_the_daemon_follows_an_edited_replaced_and_removed_node_file_and_reconciles_every_application(
        node: support.Node, daemon: test_daemon.Daemon) -> None:
    assert status_node(node) == {"name": socket.gethostname(), "labels": {}, "source": "host name", "file": None,
                                 "error": None}
    assert daemon.samples("tether_node_info", node=socket.gethostname()) == 1
    passes = daemon.passes("site")

    mark = daemon.mark()
    write_node_file(node, NODE_YAML)  # a new file, by an atomic rename
    daemon.wait_for_log(r"Node identity changed: web-07\.eu-1\.example\.com \(canary=true, .*; from "
                        + str(node_file(node)) + r"\); every application is reconciled again\.", start=mark)
    test_daemon.wait_until(lambda: (status_node(node) or {}).get("name") == "web-07.eu-1.example.com",
                           message=lambda: f"the status says {status_node(node)}")
    assert status_node(node)["labels"]["zone"] == "eu-1"
    test_daemon.wait_until(lambda: daemon.passes("site") > passes, message="no pass after the node changed")
    assert daemon.samples("tether_node_info", node="web-07.eu-1.example.com") == 1

    mark = daemon.mark()
    with open(node_file(node), "w") as handle:  # an edit in place
        handle.write(NODE_YAML.replace("zone: eu-1", "zone: eu-2"))
    daemon.wait_for_log(r"Node identity changed: .*zone=eu-2", start=mark)
    test_daemon.wait_until(lambda: (status_node(node) or {}).get("labels", {}).get("zone") == "eu-2")

    mark = daemon.mark()
    node_file(node).unlink()
    daemon.wait_for_log(rf"Node identity changed: {socket.gethostname()} \(no labels; from the host name\)",
                        start=mark)
    test_daemon.wait_until(lambda: (status_node(node) or {}).get("source") == "host name")
    assert daemon.stop() == 0


def test_an_invalid_node_file_keeps_the_last_good_identity_and_shows_the_error_in_status_and_metrics(
        node: support.Node, daemon: test_daemon.Daemon) -> None:
    mark = daemon.mark()
    write_node_file(node, NODE_YAML)
    daemon.wait_for_log(r"Node identity changed: web-07", start=mark)

    mark = daemon.mark()
    write_node_file(node, NODE_YAML.replace('canary: "true"', "canary: true"))
    _, _, line = daemon.wait_for_log(r"Invalid node file: ", start=mark)
    assert f"{node_file(node)}:5: expected a value of type string, got true" in line
    assert "keeping the node identity web-07.eu-1.example.com" in line
    test_daemon.wait_until(lambda: (status_node(node) or {}).get("error"),
                           message=lambda: f"the status says {status_node(node)}")
    assert status_node(node)["name"] == "web-07.eu-1.example.com"
    assert daemon.samples("tether_manifest_errors", file=str(node_file(node))) == 1
    assert daemon.samples("tether_node_info", node="web-07.eu-1.example.com") == 1
    assert test_daemon.status_of(node, "site")["current"] == "v1"

    mark = daemon.mark()
    write_node_file(node, NODE_YAML)
    daemon.wait_for_log(r"The node file is valid again; this node is still web-07", start=mark)
    test_daemon.wait_until(lambda: status_node(node) is not None and status_node(node)["error"] is None)
    assert daemon.samples("tether_manifest_errors", file=str(node_file(node))) == 0
    assert daemon.stop() == 0


def test_a_daemon_started_with_an_invalid_node_file_moves_no_rollout_until_the_file_is_valid(
        node: support.Node, http: support.HttpServer) -> None:
    # Under the host name (no labels) this node would be in no wave and deploy `from`; under its own (canary)
    # the first wave. Before any valid node file, tether cannot know which: it does what `tether reconcile` does.
    write_node_file(node, NODE_YAML.replace('canary: "true"', "canary: true"))
    test_daemon.serve(http, "site", "v1", "v2")
    test_daemon.serve(http, "plain", "v1")
    rollout = {"from": "v1", "startedAt": "2020-01-01T00:00:00Z", "waves": [{"selector": {"canary": "true"}}]}
    test_daemon.put(node.manifests, test_daemon.app_manifest(node, http, deployment="v2", rollout=rollout))
    test_daemon.put(node.manifests, test_daemon.app_manifest(node, http, name="plain", deployment="v1"))
    running = test_daemon.Daemon(node, ("--node-config", str(node_file(node))), None)
    try:
        running.wait_for_log(r"Invalid node file: .*applications with a rollout wait for a valid one")
        test_daemon.wait_converged(node, "plain", "v1")  # an application without a rollout needs no identity
        test_daemon.wait_until(lambda: "no valid one was read since tether started" in json.dumps(
            test_daemon.read_status(node, "site") or {}), message=lambda: str(test_daemon.read_status(node, "site")))
        assert not os.path.lexists(node.apps / "site" / "current")

        write_node_file(node, NODE_YAML)
        test_daemon.wait_converged(node, "site", "v2")  # at once: not after the failed pass's back-off
        assert status_node(node)["name"] == "web-07.eu-1.example.com"
    finally:
        running.stop()


def test_the_example_node_file_is_valid() -> None:
    path = support.REPO / "examples" / "node.yaml"
    found = node_identity.parse(str(path), path.read_text())
    assert found.name == "web-07" and found.labels == {"role": "web", "zone": "eu-1", "canary": "true"}


def test_the_node_info_metric_passes_promtool_and_escapes_a_host_name_with_a_control_character() -> None:
    collector = metrics.Collector(lambda: [], lambda: ([], 0), metrics.Observations(), node=lambda: "web\x1b07")
    text = prometheus_client.generate_latest(metrics.registry(collector)).decode()
    assert 'tether_node_info{node="web\\\\x1b07"} 1.0' in text
    checked = subprocess.run([test_metrics.promtool(), "check", "metrics"], input=text.encode(), capture_output=True,
                             timeout=60)
    assert checked.returncode == 0, checked.stderr
