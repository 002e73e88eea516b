"""Rollout waves and the Prometheus gate with real daemons and a real Prometheus (design section 11).

Two nodes, each a real `tether run` with its own node file, state dir and copy of the same manifests; a real
Prometheus scrapes a tiny exporter the test controls (`acme_errors`) and fires the alert AcmeErrors while it
is above 0. "acme" is gated on that alert, "calm" on an alert that never fires. Every wait polls a status
file or Prometheus with a deadline.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.fleet import gate
from tests import support
from tests.test_prometheus import free_port, prometheus_binary, query, running_prometheus, wait_for  # noqa: F401

AFTER = 3.0
FIRING = 'ALERTS{alertname="AcmeErrors", alertstate="firing"}'
RULES = """groups:
  - name: acme
    rules:
      - alert: AcmeErrors
        expr: acme_errors > 0
"""


def manifest(name: str, path: Path, url: str, started: float, prometheus: str, query_text: str) -> dict[str, Any]:
    start = datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="milliseconds")
    return support.application(name, path, deployment="v2", source={"url": url}, rollout={
        "from": "v1", "startedAt": start.replace("+00:00", "Z"),
        "waves": [{"selector": {"canary": "true"}}, {"percent": 100, "after": f"{AFTER:g}s"}],
        "gate": {"prometheus": prometheus, "query": query_text, "intervalSeconds": 1, "timeoutSeconds": 2}})


def node_file(root: Path, name: str, labels: dict[str, str]) -> Path:
    path = root / "node.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "tether/v1", "kind": "Node",
                                    "metadata": {"name": name, "labels": labels}}))
    path.chmod(0o644)
    return path


@contextlib.contextmanager
def running_daemon(node: support.Node, node_config: Path) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--manifests", str(node.manifests), "--state-dir",
         str(node.state), "--metrics-address", f"127.0.0.1:{port}", "--node-config", str(node_config)],
        stdout=subprocess.DEVNULL, stderr=(node.root / "daemon.log").open("w"), cwd=node.root)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def status_of(node: support.Node, name: str) -> dict[str, Any]:
    try:
        document = json.loads((node.state / "status" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def rollout_of(node: support.Node, name: str) -> dict[str, Any]:
    found = status_of(node, name).get("rollout")
    return found if isinstance(found, dict) else {}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def nodes(tmp_path: Path) -> tuple[support.Node, Path, support.Node, Path]:
    canary = support.make_node(tmp_path / "canary")
    plain = support.make_node(tmp_path / "plain")
    return (canary, node_file(canary.root, "web-01", {"canary": "true"}),
            plain, node_file(plain.root, "web-02", {"role": "web"}))


def test_canary_first_then_the_second_wave_on_time_held_by_a_firing_alert_until_it_stops(
        tmp_path: Path, http: support.HttpServer, prometheus_binary: str) -> None:  # noqa: F811
    for version in ("1", "2"):
        http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    http.serve("/metrics", b"acme_errors 1\n")
    exporter = int(http.url("").rsplit(":", 1)[1])
    rules = tmp_path / "rules.yml"
    rules.write_text(RULES)
    (tmp_path / "prometheus").mkdir()
    canary, canary_file, plain, plain_file = nodes(tmp_path)
    with running_prometheus(prometheus_binary, tmp_path / "prometheus", exporter, [rules]) as web:
        wait_for("the alert AcmeErrors firing in Prometheus", lambda: query(web, FIRING), timeout=30)
        started = time.time()
        for node in (canary, plain):
            prom = f"http://127.0.0.1:{web}"
            support.write_manifest(node.manifests, manifest("acme", node.apps / "acme", http.url("/{deployment}.tar.gz"),
                                                            started, prom, FIRING))
            support.write_manifest(node.manifests, manifest("calm", node.apps / "calm", http.url("/{deployment}.tar.gz"),
                                                            started, prom, 'ALERTS{alertname="Never"}'))
        with running_daemon(canary, canary_file), running_daemon(plain, plain_file) as plain_port:
            # (a) the canary takes v2 at once; the other node stays on v1 until its wave's time.
            wait_for("the canary on v2", lambda: status_of(canary, "acme").get("current") == "v2", timeout=15)
            early = wait_for("the plain node on v1", lambda: status_of(plain, "acme").get("current") == "v1"
                             and rollout_of(plain, "acme"), timeout=15)
            assert isinstance(early, dict) and time.time() < started + AFTER, "the test machine is too slow"
            assert early["wave"] == 1 and not early["inOpenWave"] and early["nextWaveAt"] is not None
            assert early["gate"] == "unknown"
            assert rollout_of(canary, "acme")["wave"] == 0 and rollout_of(canary, "acme")["inOpenWave"]
            # (b) "calm", whose gate holds, takes v2 on time on the plain node.
            wait_for("calm on v2 on the plain node", lambda: status_of(plain, "calm").get("current") == "v2",
                     timeout=15)
            took = time.time() - (started + AFTER)
            calm = rollout_of(plain, "calm")
            assert calm["inOpenWave"] and calm["gate"] == "open", calm
            # (c) the firing alert holds acme's second wave, and says so.
            held = wait_for("acme waiting on the closed gate", lambda: rollout_of(plain, "acme").get("waiting")
                            and rollout_of(plain, "acme"), timeout=15)
            assert isinstance(held, dict)
            assert held["gate"] == "closed" and held["gateMessage"] == "ALERTS returned 1 series", held
            assert status_of(plain, "acme")["current"] == "v1"
            text = scrape(plain_port)
            assert 'tether_rollout_waiting{name="acme"} 1.0' in text
            assert 'tether_rollout_gate_open{name="acme"} 0.0' in text
            assert 'tether_rollout_wave{name="acme"} 1.0' in text
            assert 'tether_rollout_gate_open{name="calm"} 1.0' in text
            checked = subprocess.run(["promtool", "check", "metrics"], input=text.encode(), capture_output=True)
            assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
            shown = plain.tether("status", "--node-config", str(plain_file)).stdout
            assert "waiting for wave 2 at " in shown and "(gate closed: ALERTS returned 1 series)" in shown, shown
            # The alert stops: the gate opens at the next poll and the node proceeds.
            http.serve("/metrics", b"acme_errors 0\n")
            stopped = time.time()
            wait_for("acme on v2 on the plain node", lambda: status_of(plain, "acme").get("current") == "v2",
                     timeout=30)
            after = rollout_of(plain, "acme")
            assert after["inOpenWave"] and not after["waiting"] and after["gate"] == "open"
            assert 'tether_rollout_waiting{name="acme"} 0.0' in scrape(plain_port)
            print(f"calm took v2 {took:.2f} s after its wave opened; acme {time.time() - stopped:.2f} s after the "
                  "exporter stopped the alert")
            # The rollout ends (the manifest drops it): no rollout series are left.
            support.write_manifest(plain.manifests, support.application(
                "calm", plain.apps / "calm", deployment="v2", source={"url": http.url("/{deployment}.tar.gz")}))
            wait_for("calm's status without a rollout", lambda: status_of(plain, "calm").get("observedGeneration")
                     and "rollout" not in status_of(plain, "calm"), timeout=15)
            assert 'tether_rollout_wave{name="calm"}' not in scrape(plain_port)


def test_an_unreachable_prometheus_holds_the_wave_and_the_status_says_why(
        tmp_path: Path, http: support.HttpServer) -> None:
    http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))
    http.serve("/v2.tar.gz", support.tar_bytes(support.site("2")))
    _, _, plain, plain_file = nodes(tmp_path)
    down = f"http://127.0.0.1:{free_port()}"
    support.write_manifest(plain.manifests, manifest("acme", plain.apps / "acme", http.url("/{deployment}.tar.gz"),
                                                     time.time() - 60, down, FIRING))
    with running_daemon(plain, plain_file):
        held = wait_for("acme held by the unreachable gate", lambda: rollout_of(plain, "acme").get("waiting")
                        and rollout_of(plain, "acme"), timeout=15)
        assert isinstance(held, dict) and held["gate"] == "closed"
        assert f"Prometheus at {down} cannot be asked" in held["gateMessage"]
        assert status_of(plain, "acme")["current"] == "v1"
    # The one-shot command decides the same way, asking the gate once.
    done = plain.tether("reconcile", "acme", "--node-config", str(plain_file))
    assert done.returncode == 0, done.stderr
    assert rollout_of(plain, "acme")["gate"] == "closed" and status_of(plain, "acme")["current"] == "v1"


@pytest.mark.parametrize("timeout", [0.5])
def test_the_gate_poll_costs_milliseconds_against_a_real_http_server(http: support.HttpServer, timeout: float) -> None:
    http.serve("/api/v1/query", json.dumps({"status": "success", "data": {"resultType": "vector",
                                                                       "result": []}}).encode())
    check = gate.Cache(lambda g: gate.ask(g))
    which = gate.model.Gate(prometheus=http.url(""), query="ALERTS", interval_seconds=0, timeout_seconds=timeout)
    started = time.process_time(), time.monotonic()
    for _ in range(50):
        assert check.answer("acme", which).open
    cpu, wall = time.process_time() - started[0], time.monotonic() - started[1]
    print(f"gate poll: {1000 * wall / 50:.2f} ms wall, {1000 * cpu / 50:.2f} ms CPU each")
    assert check.asked == 50


def test_a_canary_whose_health_check_fails_rolls_back_marks_it_failed_and_the_plan_agrees_with_the_daemons(
        tmp_path: Path, http: support.HttpServer) -> None:
    """Real daemons: the canary takes v2 at once, its health check answers 503 until the deadline, so it goes
    back to v1 with v2 marked failed and Healthy False; the other node, whose wave waits on an unreachable
    Prometheus, never takes v2. Each daemon's wave is the one `tether rollout plan` gives its node."""
    for version in ("1", "2"):
        http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    http.serve("/health", support.Reply(503, b"down"))
    canary, canary_file, plain, plain_file = nodes(tmp_path)
    for node in (canary, plain):  # both nodes run v1 before the rollout starts
        support.write_manifest(node.manifests, support.application(
            "acme", node.apps / "acme", deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}))
    with running_daemon(canary, canary_file), running_daemon(plain, plain_file):
        for node in (canary, plain):
            wait_for("v1 current", lambda node=node: status_of(node, "acme").get("current") == "v1", timeout=30)
        started = time.time()
        unreachable = f"http://127.0.0.1:{free_port()}"
        for node in (canary, plain):
            document = manifest("acme", node.apps / "acme", http.url("/{deployment}.tar.gz"), started, unreachable,
                                FIRING)
            spec = document["spec"]
            assert isinstance(spec, dict)
            spec["healthCheck"] = {"http": {"url": http.url("/health")}, "intervalSeconds": 0.2,
                                   "healthySeconds": 0.5, "deadlineSeconds": 2}
            support.write_manifest(node.manifests, document)

        def rolled_back() -> bool:
            states = {d["name"]: d["state"] for d in status_of(canary, "acme").get("deployments", [])}
            return status_of(canary, "acme").get("current") == "v1" and states.get("v2") == "failed"

        wait_for("the canary back on v1 with v2 failed", rolled_back, timeout=30)
        healthy = {c["type"]: c for c in status_of(canary, "acme")["conditions"]}["Healthy"]
        assert healthy["status"] != "True", healthy
        assert any(path.endswith("/health") for path, _ in http.requests)
        plain_rollout = wait_for("the plain node waiting on the gate", lambda: rollout_of(plain, "acme"), timeout=15)
        assert isinstance(plain_rollout, dict)
        assert status_of(plain, "acme").get("current") == "v1"
        assert not (plain.apps / "acme" / "v2").exists()
        nodes_file = tmp_path / "nodes.yaml"
        nodes_file.write_text(yaml.safe_dump([{"name": "web-01", "labels": {"canary": "true"}},
                                              {"name": "web-02", "labels": {"role": "web"}}]))
        plan = canary.tether("rollout", "plan", str(canary.manifests / "acme.yaml"), "--nodes", str(nodes_file),
                             "--json")
        assert plan.returncode == 0, plan.stderr
        waves = {row["node"]: row["wave"] for row in json.loads(plan.stdout)}
        assert waves == {"web-01": rollout_of(canary, "acme")["wave"], "web-02": plain_rollout["wave"]}
