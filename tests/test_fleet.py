"""A fleet of 20 real daemons following one git repository of manifests, gated on a real Prometheus (issue 12).

Twenty `tether run` daemons (web-01..web-20; web-01 and web-02 are canaries) each have their own node file,
state dir, application path and metrics port. ONE bare git repository holds the manifests; the test commits
to a working clone and pushes, and every node's checkout is kept current by the command the shipped unit
packaging/systemd/tether-gitops.service runs (`git -C DIR pull --ff-only --quiet`), looped by a thread every
half second. spec.path must be absolute and differs per node, so the repository has one directory per node
(docs/operator-guide.md section 4: "one directory each") and each daemon's --manifests is its own node's
directory inside its clone. A real Prometheus scrapes every node every second, with the shipped alert rules
loaded and each target labelled with its node name and canary label. The rollout gate asks Prometheus whether
both canaries run the new deployment and are Ready (so the health check passed), so no other node can take
a release before the canaries are healthy.

Phases, one long test so the fleet starts once: v1 everywhere; (a) a good v2 in waves; (b) a bad v3 whose
health check fails on the canaries; (c) a fix v4 with Prometheus stopped mid-rollout and started again;
(d) during that hold, daemons restarted decide as before. Every wait polls status files or Prometheus with a
deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client.parser
import yaml

from tests import support
from tests.test_prometheus import free_port, prometheus_binary, query, wait_for  # noqa: F401

NAMES = [f"web-{i:02d}" for i in range(1, 21)]
CANARIES = ("web-01", "web-02")
HALF, FULL = 5.0, 13.0  # seconds after startedAt at which the 50 % and 100 % waves open
WAVES = [{"selector": {"canary": "true"}}, {"percent": 50, "after": f"{HALF:g}s"},
         {"percent": 100, "after": f"{FULL:g}s"}]
AFTER = [0.0, HALF, FULL]
ALERTS = support.REPO / "packaging" / "prometheus" / "alerts.yml"


@dataclasses.dataclass
class FleetNode:
    name: str
    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def canary(self) -> bool:
        return self.name in CANARIES

    @property
    def clone(self) -> Path:
        return self.root / "checkout"

    @property
    def manifests(self) -> Path:
        return self.clone / self.name

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def path(self) -> Path:
        return self.root / "apps" / "acme"

    @property
    def node_file(self) -> Path:
        return self.root / "node.yaml"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--manifests", str(self.manifests), "--state-dir",
             str(self.state), "--metrics-address", f"127.0.0.1:{self.port}", "--node-config", str(self.node_file)],
            stdout=subprocess.DEVNULL, stderr=(self.root / "daemon.log").open("a"), cwd=self.root, env=env)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def status(self) -> dict[str, Any]:
        try:
            document = json.loads((self.state / "status" / "acme.json").read_text())
        except (OSError, ValueError):
            return {}
        return document if isinstance(document, dict) else {}

    def passes(self) -> float:
        """The reconcile passes of acme this daemon process has made (0 until it serves metrics)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
        except OSError:
            return 0
        return sum(sample.value for family in prometheus_client.parser.text_string_to_metric_families(text)
                   if family.name == "tether_reconcile" for sample in family.samples
                   if sample.name == "tether_reconcile_total" and sample.labels.get("name") == "acme")

    def rollout(self) -> dict[str, Any]:
        found = self.status().get("rollout")
        return found if isinstance(found, dict) else {}

    def current(self) -> str | None:
        found = self.status().get("current")
        return found if isinstance(found, str) else None

    def states(self) -> dict[str, str]:
        return {d["name"]: d["state"] for d in self.status().get("deployments", [])}

    def record(self, deployment: str) -> dict[str, Any]:
        """The deployment's record in the application's path, {} when it has none."""
        try:
            found = json.loads((self.path / ".tether" / "deployments" / f"{deployment}.json").read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}

    def healthy_on(self, deployment: str) -> bool:
        return self.current() == deployment and self.record(deployment).get("healthyAt") is not None


class Prometheus:
    """A real Prometheus scraping every node every second; stop() and start() keep its port and data dir."""

    def __init__(self, binary: str, directory: Path, nodes: list[FleetNode]) -> None:
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir()
        targets = [{"targets": [f"127.0.0.1:{n.port}"], "labels": {"node": n.name, "canary": str(n.canary).lower()}}
                   for n in nodes]
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": "tether", "static_configs": targets}]}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=subprocess.DEVNULL,
            stderr=(self.directory / "prometheus.log").open("a"))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None


class Puller:
    """What tether-gitops.timer does on every node, every half second: a thread running the unit's command."""

    def __init__(self, nodes: list[FleetNode]) -> None:
        self.nodes, self.rounds = nodes, 0
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            for node in self.nodes:
                done = subprocess.run(["git", "-C", str(node.clone), "pull", "--ff-only", "--quiet"],
                                      capture_output=True, text=True, preexec_fn=lambda: os.umask(0o022))
                if done.returncode != 0:
                    self.failures.append(f"{node.name}: {done.stderr.strip()}")
            self.rounds += 1
            self.stopping.wait(0.5)  # the timer's period, not a synchronisation

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


def git(*args: str, cwd: Path) -> str:
    done = subprocess.run(["git", "-c", "user.name=Fleet Test", "-c", "user.email=fleet@example.com", *args],
                          cwd=cwd, capture_output=True, text=True, preexec_fn=lambda: os.umask(0o022))
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def iso(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wave_of(name: str, rollout_id: str) -> int:
    """The node's wave by the formula of docs/operator-guide.md, recomputed here with hashlib."""
    if name in CANARIES:
        return 0
    digest = hashlib.sha256(f"{name}/acme/{rollout_id}".encode()).digest()
    return 1 if int.from_bytes(digest[:8], "big") % 10000 < 50 * 100 else 2


def gate_query(deployment: str, failed: bool = False) -> str:
    """Closed (some series) until both canaries report `deployment` current and Ready, or while any shipped
    alert fires for acme; with `failed`, also while any node has a failed deployment of acme."""
    healthy = (f'tether_application_info{{name="acme", canary="true", deployment="{deployment}"}} '
               'and on (instance, name) tether_application_ready{name="acme"} == 1')
    # A failure alert of an earlier deployment (say v3 while v4 rolls out) does not hold this one: after a
    # Prometheus outage its last series stays visible for the lookback window.
    alerts = (f'ALERTS{{alertstate="firing", name="acme", alertname!="TetherRolloutDeploymentFailed"}} or '
              f'ALERTS{{alertstate="firing", name="acme", alertname="TetherRolloutDeploymentFailed", '
              f'deployment="{deployment}"}}')
    text = f'(count({healthy}) or vector(0)) < {len(CANARIES)} or {alerts}'
    return text + (' or tether_deployments{name="acme", state="failed"} > 0' if failed else "")


class Fleet:
    def __init__(self, root: Path, http: support.HttpServer, binary: str) -> None:
        self.http = http
        self.bare, self.work = root / "manifests.git", root / "work"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), cwd=root)
        git("clone", "--quiet", str(self.bare), str(self.work), cwd=root)
        self.nodes = [FleetNode(name, root / name, port=free_port()) for name in NAMES]
        self.prometheus = Prometheus(binary, root / "prometheus", self.nodes)
        self.puller = Puller(self.nodes)

    def manifest(self, node: FleetNode, deployment: str, health: str = "/health",
                 rollout: dict[str, Any] | None = None) -> dict[str, Any]:
        document = support.application("acme", node.path, deployment=deployment,
                                       source={"url": self.http.url("/{deployment}.tar.gz")})
        # The canaries must pass for longer than the 50 % wave waits, so that only the gate (not the clock)
        # keeps the other nodes from taking a release before the canaries are healthy.
        healthy = HALF + 1 if node.canary else 1.0
        deadline = healthy + 2 if health == "/health-v3" else healthy + 20  # a loaded CI machine answers slowly
        document["spec"]["healthCheck"] = {"http": {"url": self.http.url(health)}, "intervalSeconds": 0.2,
                                           "timeoutSeconds": 2, "healthySeconds": healthy,
                                           "deadlineSeconds": deadline}
        if rollout is not None:
            document["spec"]["rollout"] = rollout
        return document

    def commit(self, deployment: str, health: str = "/health", source: str | None = None,
               query_text: str | None = None) -> float:
        """Commit and push every node's manifest of `deployment` (in waves from `source` when given); the time
        written as the rollout's startedAt."""
        started = time.time()
        rollout = None if source is None else {
            "from": source, "startedAt": iso(started), "waves": WAVES,
            "gate": {"prometheus": self.prometheus.url, "query": query_text, "intervalSeconds": 1,
                     "timeoutSeconds": 2}}
        for node in self.nodes:
            support.write_manifest(self.work / node.name, self.manifest(node, deployment, health, rollout))
        git("add", "-A", cwd=self.work)
        git("commit", "--quiet", "-m", f"acme {deployment}", cwd=self.work)
        git("push", "--quiet", "origin", "HEAD:main", cwd=self.work)
        return round(started, 3)

    def all_on(self, deployment: str) -> bool:
        return all(node.healthy_on(deployment) for node in self.nodes)

    def counted(self, fresh: bool = False) -> dict[str | None, str]:
        """Prometheus's count of nodes by the deployment current points to. With `fresh`, only series scraped in
        the last 5 s: after an outage, series a node had before it (v2) can stay in the 5-minute look-back, since
        a Prometheus that was down wrote no staleness markers for what changed meanwhile."""
        series = 'tether_application_info{name="acme"}'
        found = query(self.prometheus.port, f"count by (deployment) (last_over_time({series}[5s]))" if fresh
                      else f"count by (deployment) ({series})")
        return {labels.get("deployment"): value for labels, value in found}

    def failed_on(self) -> list[str]:
        """The nodes Prometheus last saw with a failed deployment of acme, sorted."""
        found = query(self.prometheus.port, 'tether_deployments{name="acme", state="failed"} > 0')
        return sorted(labels["node"] for labels, _ in found)


@contextlib.contextmanager
def running_fleet(root: Path, http: support.HttpServer, binary: str) -> Iterator[Fleet]:
    fleet = Fleet(root, http, binary)
    with contextlib.ExitStack() as stack:
        fleet.commit("v1")
        for node in fleet.nodes:
            node.root.mkdir(mode=0o755)
            for directory in (node.state, node.path.parent):
                directory.mkdir(mode=0o755)
            git("clone", "--quiet", str(fleet.bare), str(node.clone), cwd=root)
            labels = {"role": "web", **({"canary": "true"} if node.canary else {})}
            node.node_file.write_text(yaml.safe_dump({"apiVersion": "tether/v1", "kind": "Node",
                                                      "metadata": {"name": node.name, "labels": labels}}))
            node.node_file.chmod(0o644)
        fleet.puller.thread.start()
        stack.callback(fleet.puller.stop)
        for node in fleet.nodes:
            stack.callback(node.stop)
            node.start()
        stack.callback(fleet.prometheus.stop)
        fleet.prometheus.start()
        yield fleet


def took(fleet: Fleet, deployment: str, started: float, timeout: float = 180) -> float:
    wait_for(f"all {len(NAMES)} nodes healthy on {deployment}", lambda: fleet.all_on(deployment), timeout=timeout)
    return time.time() - started


def test_twenty_daemons_follow_one_git_repository_in_waves_gated_on_prometheus_through_a_bad_release_an_outage_and_restarts(
        tmp_path: Path, http: support.HttpServer, prometheus_binary: str) -> None:  # noqa: F811
    for version in ("1", "2", "3", "4"):
        http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    http.serve("/health", b"ok")
    http.serve("/health-v3", support.Reply(503, b"v3 is broken"))
    for rollout_id in ("v2", "v3", "v4"):  # the formula puts someone in each percent wave of every release
        assert {wave_of(n, rollout_id) for n in NAMES} == {0, 1, 2}, rollout_id
    tmp_path.chmod(0o755)
    timings: dict[str, float] = {}
    with running_fleet(tmp_path, http, prometheus_binary) as fleet:
        nodes, canaries = fleet.nodes, [n for n in fleet.nodes if n.canary]
        others = [n for n in nodes if not n.canary]
        started = time.time()
        timings["v1, no rollout: from the daemons' start to every node healthy on it"] = took(fleet, "v1", started)
        assert fleet.puller.rounds > 0 and not fleet.puller.failures, fleet.puller.failures

        # (a) a good v2 in waves: canaries first, the gate opens once Prometheus sees them healthy.
        started = fleet.commit("v2", source="v1", query_text=gate_query("v2"))
        timings["v2 in three waves: from commit to every node healthy on it"] = took(fleet, "v2", started)
        canaries_healthy = max(float(n.record("v2")["healthyAt"]) for n in canaries)
        assert canaries_healthy > started + HALF, "the 50 % wave's time came before the canaries were healthy"
        for node in nodes:
            wave = wave_of(node.name, "v2")
            assert node.rollout()["wave"] == wave, (node.name, node.rollout())
            taken = float(node.record("v2")["completedAt"])  # fetched and extracted, before activation
            assert taken >= started + AFTER[wave], (node.name, wave, taken - started)
            if not node.canary:
                assert taken > canaries_healthy, (node.name, taken - canaries_healthy)
        plan_nodes = tmp_path / "nodes.yaml"
        plan_nodes.write_text(yaml.safe_dump([{"name": n.name, "labels": {"canary": "true"} if n.canary else {}}
                                              for n in nodes]))
        plan = subprocess.run([sys.executable, "-m", "controller", "rollout", "plan",
                               str(nodes[0].manifests / "acme.yaml"), "--nodes", str(plan_nodes), "--json"],
                              capture_output=True, text=True, cwd=tmp_path)
        assert plan.returncode == 0, plan.stderr
        assert {row["node"]: row["wave"] for row in json.loads(plan.stdout)} == {
            n.name: wave_of(n.name, "v2") for n in nodes}
        wait_for("Prometheus counting 20 nodes on v2", lambda: fleet.counted() == {"v2": "20"}, timeout=60)

        # (b) a bad v3: its health check fails on the canaries, which roll back; the gate stays closed.
        started = fleet.commit("v3", health="/health-v3", source="v2", query_text=gate_query("v3", failed=True))
        for node in canaries:
            wait_for(f"{node.name} back on v2 with v3 failed",
                     lambda node=node: node.current() == "v2" and node.states().get("v3") == "failed", timeout=120)
        wait_for("every other node held by the closed gate", lambda: all(
            n.rollout().get("waiting") and n.rollout().get("gate") == "closed" for n in others), timeout=120)
        assert time.time() >= started + FULL
        # Each canary is scraped on its own schedule: wait until both scrapes have seen the failure.
        wait_for("Prometheus seeing the failed v3 on both canaries", lambda: fleet.failed_on() == list(CANARIES),
                 timeout=60)
        fired = wait_for("the shipped alert TetherRolloutDeploymentFailed firing for v3", lambda: query(
            fleet.prometheus.port, 'ALERTS{alertname="TetherRolloutDeploymentFailed", alertstate="firing", '
            'application="acme", deployment="v3"}'), timeout=60)
        assert isinstance(fired, list) and len(fired) == 1, fired
        for node in others:
            waiting = node.rollout()
            assert node.current() == "v2" and waiting["desired"] == "v2", (node.name, waiting)
            assert "series" in waiting["gateMessage"] and "cannot be asked" not in waiting["gateMessage"], waiting
            assert not node.record("v3") and not (node.path / "v3").exists(), node.name
        timings["bad v3: from commit to canaries rolled back and every other node held"] = time.time() - started

        # (c) a fix v4; Prometheus stops once the canaries are healthy: every node whose wave's time comes
        # holds, and says why; Prometheus back on the same port and data: they go on.
        started = fleet.commit("v4", source="v2", query_text=gate_query("v4"))
        for node in canaries:
            wait_for(f"{node.name} healthy on v4", lambda node=node: node.healthy_on("v4"), timeout=120)
        fleet.prometheus.stop()
        stopped = time.time()
        late = [n for n in others if wave_of(n.name, "v4") == 2]
        assert stopped < started + FULL, "the test machine is too slow: the last wave opened before the outage"
        down = f"Prometheus at {fleet.prometheus.url} cannot be asked"

        def held(node: FleetNode) -> bool:
            rollout = node.rollout()
            return bool(rollout.get("waiting")) and down in str(rollout.get("gateMessage"))

        wait_for("the last wave held by the stopped Prometheus", lambda: all(held(n) for n in late), timeout=120)
        wait_for("every other node on v4 or held", lambda: all(n.healthy_on("v4") or held(n) for n in others),
                 timeout=120)
        assert all(n.current() == "v2" and n.rollout()["gate"] == "closed" for n in late)
        shown = subprocess.run([sys.executable, "-m", "controller", "status", "--manifests", str(late[0].manifests),
                                "--state-dir", str(late[0].state), "--node-config", str(late[0].node_file)],
                               capture_output=True, text=True, cwd=tmp_path).stdout
        assert "gate closed" in shown and down in shown, shown

        # (d) daemons restarted during the hold decide as before: same wave, same desired deployment.
        for node in (late[0], canaries[0]):
            before = node.rollout()
            node.stop()
            node.start()  # a status that says the same is not rewritten: the new process's first pass is counted
            wait_for(f"{node.name}'s restarted daemon deciding", lambda node=node: node.passes() > 0 and node.rollout(),
                     timeout=120)
            if not node.canary:
                wait_for(f"{node.name} asking the gate again", lambda node=node: held(node), timeout=60)
            after = node.rollout()
            assert (after["wave"], after["desired"]) == (before["wave"], before["desired"]), (before, after)
            assert node.current() == ("v4" if node.canary else "v2")

        fleet.prometheus.start()
        restarted_at = time.time()
        timings["v4 through a Prometheus outage: from commit to every node healthy on it"] = took(fleet, "v4", started)
        timings["v4: from Prometheus back to every node healthy on it"] = time.time() - restarted_at
        wait_for("Prometheus counting 20 fresh nodes on v4", lambda: fleet.counted(fresh=True) == {"v4": "20"},
                 timeout=60)
        stale = fleet.counted()
        assert stale.get("v4") == "20", stale
        print(f"count by (deployment) (tether_application_info) after the outage, look-back included: {stale}")
        for node in others:
            assert not node.record("v3") and not (node.path / "v3").exists(), f"{node.name} took v3"
        assert not fleet.puller.failures, fleet.puller.failures
    for what, seconds in timings.items():
        print(f"fleet of {len(NAMES)}: {what}: {seconds:.1f} s")

