"""`tether rollout plan` and the one-shot `tether reconcile` follow the rollout, through the real command line.

The plan is checked against the bucket formula recomputed here with hashlib, not against tether's own code."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket

import pytest
import yaml

from tests import support

START = "2026-12-01T10:00:00Z"
T0 = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.UTC)
NODES = [{"name": f"web-{i:02d}", "labels": {"role": "web"}} for i in range(1, 21)]
NODES[6]["labels"]["canary"] = "true"  # web-07


def rollout_manifest(path: str, started: str = START, **rollout: object) -> dict[str, object]:
    return support.application("acme", path, deployment="v2", source={"url": "https://example.com/{deployment}.tgz"},
                               rollout={"from": "v1", "id": "acme-v2", "startedAt": started, "waves": [
                                   {"selector": {"canary": "true"}},
                                   {"percent": 25, "after": "30m"},
                                   {"percent": 100, "after": "2h"},
                               ], "gate": {"prometheus": "http://127.0.0.1:9", "query": "ALERTS"}, **rollout})


def bucket(node: str) -> float:
    digest = hashlib.sha256(f"{node}/acme/acme-v2".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10000 / 100


def expected_wave(node: dict[str, object]) -> int:
    labels = node["labels"]
    assert isinstance(labels, dict)
    name = str(node["name"])
    return 0 if labels.get("canary") == "true" else 1 if bucket(name) < 25 else 2


def files(node: support.Node) -> tuple[str, str]:
    manifest = support.write_manifest(node.root, rollout_manifest("/opt/acme"), "acme.yaml")
    nodes = node.root / "nodes.yaml"
    nodes.write_text(yaml.safe_dump(NODES))
    return str(manifest), str(nodes)


def test_the_plan_puts_each_node_in_the_wave_the_formula_gives_sorted_by_time(node: support.Node) -> None:
    manifest, nodes = files(node)

    run = node.tether("rollout", "plan", manifest, "--nodes", nodes, "--json")

    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    offsets = {0: 0, 1: 30, 2: 120}
    expected = sorted((offsets[expected_wave(n)], str(n["name"])) for n in NODES)
    assert [row["node"] for row in rows] == [name for _, name in expected]
    for row in rows:
        entry = next(n for n in NODES if n["name"] == row["node"])
        wave = expected_wave(entry)
        assert row["bucket"] == bucket(row["node"])
        assert row["wave"] == wave
        taken = T0 + datetime.timedelta(minutes=offsets[wave])
        assert row["takesAt"] == taken.isoformat().replace("+00:00", "Z")
    assert {row["wave"] for row in rows} == {0, 1, 2}


def test_the_plan_at_a_time_says_who_runs_which_deployment(node: support.Node) -> None:
    manifest, nodes = files(node)

    run = node.tether("rollout", "plan", manifest, "--nodes", nodes, "--at", "2026-12-01T10:45:00Z", "--json")

    assert run.returncode == 0, run.stderr
    on_v2 = {row["node"] for row in json.loads(run.stdout) if row["deployment"] == "v2"}
    assert on_v2 == {"web-07"} | {str(n["name"]) for n in NODES if expected_wave(n) == 1}
    before = node.tether("rollout", "plan", manifest, "--nodes", nodes, "--at", "2026-12-01T09:59:59Z", "--json")
    assert {row["deployment"] for row in json.loads(before.stdout)} == {"v1"}


def test_the_plan_as_a_table_names_wave_and_time_per_node(node: support.Node) -> None:
    manifest, nodes = files(node)

    run = node.tether("rollout", "plan", manifest, "--nodes", nodes)

    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("acme: from v1 to v2 (rollout acme-v2")
    assert lines[1].split() == ["NODE", "BUCKET", "WAVE", "TAKES", "v2", "AT"]
    assert lines[2].split() == ["web-07", f"{bucket('web-07'):.2f}", "1", START]


def test_a_node_in_no_wave_is_planned_last_and_never(node: support.Node) -> None:
    document = rollout_manifest("/opt/acme", waves=[{"percent": 10}])
    manifest = support.write_manifest(node.root, document, "acme.yaml")
    nodes = node.root / "nodes.yaml"
    nodes.write_text(yaml.safe_dump(NODES))

    rows = json.loads(node.tether("rollout", "plan", str(manifest), "--nodes", str(nodes), "--json").stdout)

    inside = [row["node"] for row in rows if row["wave"] == 0]
    assert inside == sorted(str(n["name"]) for n in NODES if bucket(str(n["name"])) < 10)
    assert all(row["takesAt"] is None for row in rows[len(inside):])


def test_an_invalid_manifest_or_nodes_file_exits_2_with_the_reason(node: support.Node) -> None:
    manifest, nodes = files(node)
    bad = support.write_manifest(node.root, rollout_manifest("/opt/acme", waves=[{"percent": 50}, {"percent": 20}]),
                                 "bad.yaml")
    run = node.tether("rollout", "plan", str(bad), "--nodes", nodes)
    assert run.returncode == 2 and "may not shrink" in run.stderr and "/spec/rollout/waves/1/percent" in run.stderr
    (node.root / "odd.yaml").write_text("- {name: web-01, labels: {canary: true}}\n")
    run = node.tether("rollout", "plan", manifest, "--nodes", str(node.root / "odd.yaml"))
    assert run.returncode == 2 and "node 1" in run.stderr and "quote" in run.stderr
    run = node.tether("rollout", "plan", manifest, "--nodes", nodes, "--at", "tomorrow")
    assert run.returncode == 2 and "--at" in run.stderr


def test_a_nodes_file_of_50000_nodes_is_read_whole_and_a_fifo_or_a_huge_file_is_refused_without_waiting(
        node: support.Node) -> None:
    manifest, nodes = files(node)
    many = node.root / "many.yaml"
    many.write_text(yaml.safe_dump([{"name": f"web-{i:05d}", "labels": {"role": "web"}} for i in range(50_000)]))
    assert many.stat().st_size > 1024 * 1024  # once cut at 1 MiB, without a word
    run = node.tether("rollout", "plan", manifest, "--nodes", str(many), "--json")
    assert run.returncode == 0, run.stderr
    planned = json.loads(run.stdout)
    assert len(planned) == 50_000 and {p["node"] for p in planned} == {f"web-{i:05d}" for i in range(50_000)}

    fifo = node.root / "fifo.yaml"
    os.mkfifo(fifo)
    for args in (["--nodes", str(fifo)], ["--nodes", nodes]):
        target = str(fifo) if args[1] == nodes else manifest
        run = node.tether("rollout", "plan", target, *args, timeout=30)
        assert run.returncode == 2 and "not a regular file" in run.stderr, run.stderr
    huge = node.root / "huge.yaml"
    with huge.open("wb") as handle:
        handle.truncate(65 * 1024 * 1024)
    run = node.tether("rollout", "plan", manifest, "--nodes", str(huge))
    assert run.returncode == 2 and "larger than 64 MiB" in run.stderr, run.stderr


def test_validate_refuses_a_rollout_from_equal_to_its_deployment(node: support.Node) -> None:
    support.write_manifest(node.manifests, rollout_manifest(str(node.apps / "acme"), **{"from": "v2"}))

    run = node.tether("validate", str(node.manifests), "--json")

    assert run.returncode == 2
    [problem] = json.loads(run.stdout)["problems"]
    assert problem["pointer"] == "/spec/rollout/from" and problem["line"] is not None


def test_reconcile_deploys_from_before_the_rollout_starts_then_the_deployment_once_its_wave_opens(
        node: support.Node, http: support.HttpServer) -> None:
    for version in ("1", "2"):
        http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    app = node.apps / "acme"
    later = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = support.application("acme", app, deployment="v2", source={"url": http.url("/{deployment}.tar.gz")},
                                   rollout={"from": "v1", "startedAt": later, "waves": [{"percent": 100}]})
    support.write_manifest(node.manifests, document)

    run = node.tether("reconcile")
    assert run.returncode == 0, run.stderr
    assert os.readlink(app / "current") == str(app / "v1")  # `from` deployed although it was missing

    document["spec"]["rollout"]["startedAt"] = "2020-01-01T00:00:00Z"  # type: ignore[index]
    support.write_manifest(node.manifests, document)
    assert node.tether("reconcile").returncode == 0
    assert os.readlink(app / "current") == str(app / "v2")


def test_reconcile_holds_a_gated_wave_and_tether_deploy_overrides_the_rollout(
        node: support.Node, http: support.HttpServer) -> None:
    for version in ("1", "2"):
        http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    app = node.apps / "acme"
    # This node's name is the host name; a selector it cannot match keeps wave 1 empty, wave 2 takes everyone.
    assert socket.gethostname() != "nobody-has-this-name"
    document = support.application("acme", app, deployment="v2", source={"url": http.url("/{deployment}.tar.gz")},
                                   rollout={"from": "v1", "startedAt": "2020-01-01T00:00:00Z", "waves": [
                                       {"selector": {"tether-test": "nobody-has-this-label"}},
                                       {"percent": 100, "after": "1s"}],
                                       "gate": {"prometheus": "http://127.0.0.1:9", "query": "ALERTS"}})
    support.write_manifest(node.manifests, document)

    assert node.tether("reconcile").returncode == 0
    assert os.readlink(app / "current") == str(app / "v1")  # the one-shot pass does not ask the gate: closed

    run = node.tether("deploy", "acme", "--deployment", "v2", "--wait")
    assert run.returncode == 0, run.stderr
    assert os.readlink(app / "current") == str(app / "v2")
    assert node.tether("reconcile").returncode == 0
    assert os.readlink(app / "current") == str(app / "v2")  # the override wins, and v2 is now kept anyway


@pytest.mark.parametrize("index", [0, 6, 9])
def test_tether_node_shows_the_wave_and_bucket_the_plan_gives_that_node(node: support.Node, index: int) -> None:
    manifest, nodes = files(node)
    plan = {row["node"]: row for row in json.loads(node.tether("rollout", "plan", manifest, "--nodes", nodes,
                                                                "--json").stdout)}
    me = NODES[index]
    labels = me["labels"]
    assert isinstance(labels, dict)
    (node.root / "node.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "tether/v1", "kind": "Node", "metadata": {"name": me["name"], "labels": labels}}))
    support.write_manifest(node.manifests, rollout_manifest(str(node.apps / "acme")))

    run = node.tether("node", "--node-config", str(node.root / "node.yaml"), "--json")

    assert run.returncode == 0, run.stderr
    [app] = json.loads(run.stdout)["applications"]
    assert app["rollout"]["wave"] == expected_wave(me) == plan[str(me["name"])]["wave"]
    assert app["rollout"]["bucket"] == bucket(str(me["name"]))
    text = node.tether("node", "--node-config", str(node.root / "node.yaml")).stdout
    assert f"wave {expected_wave(me) + 1} (bucket {bucket(str(me['name'])):.2f})" in text
