"""A fleet of nodes on one machine following one manifests repository: design section 9, target P6.

A standalone script, not a pytest test:

    .venv/bin/python tests/benchmarks/fleet_speed.py [--nodes 50] [--pull-interval 5] [--repeat 3]
                                                      [--idle-seconds 60] [--dir DIR]

It reuses the machinery of tests/test_fleet.py: `--nodes` real `tether run` daemons (node-01..), each with its
own node file, state dir, application path and metrics port; ONE bare git repository with a directory per node;
a clone per node kept current by the command of packaging/systemd/tether-gitops.service,
`git -C <clone> pull --ff-only --quiet`. Here every clone is pulled every `--pull-interval` seconds by a timer of
its own, the timers' phases staggered evenly over the interval (like independent systemd timers on separate
machines). Artifacts come from the tests' HttpServer.

It measures:

  convergence   commit + push of a new `spec.deployment` for every node (no rollout waves, nothing to wait
                for), then the time until every node's status file says `current` is the new deployment;
                max and p50 over the nodes, for `--repeat` releases (target: max <= pull interval + 5 s);
  idle CPU      once every node has converged and the fleet is quiet, each daemon's CPU time (utime + stime
                from /proc/PID/stat) over `--idle-seconds` with the pulls still going on, as CPU seconds per
                node per idle minute, mean and max (target ~0). The no-op pulls' own CPU (git, reaped
                children of this script) is shown too, for context; it is not the controller's.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))

from tests import support  # noqa: E402
from tests.test_fleet import FleetNode, git  # noqa: E402
from tests.test_prometheus import free_port  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PULL = ["pull", "--ff-only", "--quiet"]  # packaging/systemd/tether-gitops.service: git -C DIR pull --ff-only --quiet


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


class StaggeredPuller:
    """One timer per node: node i pulls its clone at offset + k * interval, offsets spread over the interval."""

    def __init__(self, nodes: list[FleetNode], interval: float) -> None:
        self.nodes, self.interval = nodes, interval
        self.failures: list[str] = []
        self.pulls = 0
        self.late = 0  # pulls that started more than one interval after their slot (the machine fell behind)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._timer, args=(node, i * interval / len(nodes)), daemon=True)
                        for i, node in enumerate(nodes)]

    def start(self) -> None:
        self.origin = time.monotonic()
        for thread in self.threads:
            thread.start()

    def _timer(self, node: FleetNode, offset: float) -> None:
        slot = self.origin + offset
        while not self.stopping.wait(max(0.0, slot - time.monotonic())):  # the timer's schedule, not a sync
            begun = time.monotonic()
            done = subprocess.run(["git", "-C", str(node.clone), *PULL], capture_output=True, text=True,
                                  preexec_fn=lambda: os.umask(0o022))
            with self.lock:
                self.pulls += 1
                self.late += begun - slot > self.interval
                if done.returncode != 0:
                    self.failures.append(f"{node.name}: {done.stderr.strip()}")
            slot += self.interval
            while slot < time.monotonic():  # like systemd, a missed slot is not made up for
                slot += self.interval

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)


class Fleet:
    def __init__(self, root: Path, count: int, http: support.HttpServer) -> None:
        self.root, self.http = root, http
        self.bare, self.work = root / "manifests.git", root / "work"
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), cwd=root)
        git("clone", "--quiet", str(self.bare), str(self.work), cwd=root)
        self.nodes = [FleetNode(f"node-{i:02d}", root / f"node-{i:02d}", port=free_port())
                      for i in range(1, count + 1)]

    def commit(self, deployment: str) -> tuple[float, float]:
        """Commit and push every node's manifest of `deployment`; (time before the commit, time after the push)."""
        started = time.time()
        for node in self.nodes:
            document = support.application("acme", node.path, deployment=deployment,
                                           source={"url": self.http.url("/{deployment}.tar.gz")})
            support.write_manifest(self.work / node.name, document)
        git("add", "-A", cwd=self.work)
        git("commit", "--quiet", "-m", f"acme {deployment}", cwd=self.work)
        git("push", "--quiet", "origin", "HEAD:main", cwd=self.work)
        return started, time.time()

    def prepare(self) -> None:
        for node in self.nodes:
            node.root.mkdir(mode=0o755)
            for directory in (node.state, node.path.parent):
                directory.mkdir(mode=0o755)
            git("clone", "--quiet", str(self.bare), str(node.clone), cwd=self.root)
            node.node_file.write_text(yaml.safe_dump({"apiVersion": "tether/v1", "kind": "Node",
                                                      "metadata": {"name": node.name, "labels": {"role": "web"}}}))
            node.node_file.chmod(0o644)

    def converge(self, deployment: str, since: float, timeout: float) -> dict[str, float]:
        """Poll every node's status file until it says current `deployment`; seconds from `since`, per node."""
        seen: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(seen) < len(self.nodes):
            now = time.time()
            for node in self.nodes:
                if node.name not in seen and node.current() == deployment:
                    seen[node.name] = now - since
            if time.monotonic() > deadline:
                missing = sorted(n.name for n in self.nodes if n.name not in seen)
                raise TimeoutError(f"{len(missing)} nodes never reported {deployment} current: {missing[:10]}")
            time.sleep(0.1)  # polling the status files, with a deadline
        return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--pull-interval", type=float, default=5.0, help="seconds between two pulls of a clone")
    parser.add_argument("--repeat", type=int, default=3, help="releases to time")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle CPU window")
    parser.add_argument("--dir", default=None, help="where to make the temporary tree (default: $TMPDIR)")
    args = parser.parse_args()
    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, REPO), *sys.argv])
    target = args.pull_interval + 5

    root = Path(tempfile.mkdtemp(prefix="tether-p6-", dir=args.dir))
    root.chmod(0o755)
    http = support.HttpServer()
    versions = [f"v{i}" for i in range(1, args.repeat + 2)]
    for version in versions:
        http.serve(f"/{version}.tar.gz", support.tar_bytes(support.site(version.removeprefix("v"))))
    fleet = Fleet(root, args.nodes, http)
    puller = StaggeredPuller(fleet.nodes, args.pull_interval)
    lines: list[str] = []
    rows: list[tuple[str, float, float, float]] = []
    try:
        fleet.commit("v1")
        fleet.prepare()
        puller.start()
        started = time.time()
        for node in fleet.nodes:
            node.start()
        first = fleet.converge("v1", started, timeout=300 + args.nodes * 5)
        lines.append(f"  cold start: {len(fleet.nodes)} daemons started and every node on v1 after "
                     f"{max(first.values()):.1f} s")
        for version in versions[1:]:
            time.sleep(args.pull_interval)  # a quiet gap between releases, so each starts from a settled fleet
            before, pushed = fleet.commit(version)
            seen = fleet.converge(version, before, timeout=120 + target * 4)
            values = list(seen.values())
            rows.append((version, pushed - before, statistics.median(values), max(values)))
            for process in (n.process for n in fleet.nodes):
                assert process is not None and process.poll() is None, "a daemon exited"

        time.sleep(2 * args.pull_interval)  # let the last deployment's retention work and every pull settle
        pids = {n.name: n.process.pid for n in fleet.nodes if n.process is not None}
        before_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        before_git, before_pulls = children_cpu(), puller.pulls
        time.sleep(args.idle_seconds)  # the idle window itself: nothing is awaited
        per_minute = [(cpu_seconds(pid) - before_cpu[name]) * 60 / args.idle_seconds for name, pid in pids.items()]
        git_cpu = (children_cpu() - before_git) * 60 / args.idle_seconds / len(fleet.nodes)
        idle_pulls = puller.pulls - before_pulls
    finally:
        puller.stop()
        for node in fleet.nodes:
            node.stop()
        http.close()
        shutil.rmtree(root, ignore_errors=True)

    print(f"P6: a fleet of {args.nodes} nodes on one machine ({platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {platform.system()} {platform.release()})")
    print(f"  command: {command}")
    print(f"  pull interval {args.pull_interval:g} s per clone, staggered; target: every node on the new deployment "
          f"within {target:g} s of the commit")
    print("\n".join(lines))
    print()
    print(f"  {'release':<9}{'push s':>8}{'p50 s':>8}{'max s':>8}   max vs {target:g} s")
    for version, push, p50, worst in rows:
        verdict = "within" if worst <= target else "MISSED"
        print(f"  {version:<9}{push:>8.2f}{p50:>8.2f}{worst:>8.2f}   {verdict}")
    print("  (seconds from just before `git commit` to the node's status file saying current; push s is the "
          "commit + push itself)")
    print()
    print(f"  idle CPU over {args.idle_seconds:g} s, per node per idle minute: mean {statistics.mean(per_minute):.4f} s, "
          f"p50 {statistics.median(per_minute):.4f} s, max {max(per_minute):.4f} s   (target ~0)")
    print(f"  for context, the no-op pulls meanwhile: {idle_pulls} pulls, git CPU {git_cpu:.3f} s per node per "
          f"minute (not the controller's)")
    print(f"  pulls in all: {puller.pulls}, late by more than one interval: {puller.late}, failed: "
          f"{len(puller.failures)}")
    if puller.failures:
        print("  first failures: " + "; ".join(puller.failures[:3]))
    return 0 if all(worst <= target for *_, worst in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
