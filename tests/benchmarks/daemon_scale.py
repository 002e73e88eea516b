"""1000 applications under one daemon: design section 9, target P4 (and P5 as a bonus).

A standalone script, not a pytest test:

    .venv/bin/python tests/benchmarks/daemon_scale.py [--apps 1000] [--idle 60]

On a fresh temporary tree it writes `--apps` manifests, each application with a
path of its own and a tiny file:// artifact, starts a real `tether run` with a
NOTIFY_SOCKET, and measures:

  first start     from starting the process to READY=1, to every `current` link,
                  and to every status file saying Ready (every application deployed);
  full resync     CPU seconds (utime + stime from /proc/PID/stat) of a no-op
                  pass over every application (twice; the read-back after each
                  deploy has remembered every tree already), triggered by SIGHUP and finished
                  when the daemon is idle again (target: <= 0.5 s CPU), and how
                  many status files it wrote (target: none);
  rescan          CPU seconds of one rescan that finds nothing changed (a file
                  that is not a manifest is written in the manifests directory);
  idle            CPU seconds over `--idle` seconds with nothing happening
                  (target: ~0), with --resync-interval 3600;
  memory          VmRSS and VmHWM from /proc/PID/status (target: <= 100 MB);
  scrape          time to fetch /metrics (P5 target: <= 100 ms);
  cold start      a second daemon on the same tree (every application deployed
                  already): from starting it to READY=1 and to the systemd status
                  saying every application is Ready, with its CPU (target: <= 3 s),
                  and a full resync once it is idle (its passes found the trees old
                  enough to remember); then a third without the cache of validated
                  manifests.

"Idle" before each CPU measurement means: the daemon used less than 10 ms of CPU
over the last 0.5 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import signal
import socket
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

from tests import support  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found


def wait_idle(pid: int, window: float = 0.5, threshold: float = 0.01, timeout: float = 120) -> float:
    """Wait until the process used less than `threshold` CPU seconds over `window`; how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(window)
        if cpu_seconds(pid) - before < threshold:
            return time.monotonic() - started
    raise TimeoutError("the daemon never became idle")


def statuses_ready(state: Path, names: list[str]) -> int:
    ready = 0
    for name in names:
        try:
            text = (state / "status" / f"{name}.json").read_text()
        except FileNotFoundError:
            continue
        if re.search(r'"reason": "Converged",\s*"status": "True",\s*"type": "Ready"', text):
            ready += 1
    return ready


def rewritten_since(state: Path, since_ns: int) -> int:
    with os.scandir(state / "status") as entries:
        return sum(1 for e in entries if e.name.endswith(".json") and e.stat().st_mtime_ns >= since_ns)


def scrape(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        size = 0
        while chunk := sock.recv(1 << 16):
            size += len(chunk)
    return time.perf_counter() - started, size


def reconcile_passes(port: int) -> int:
    """The sum of tether_reconcile_total over every application (one scrape)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        body = b"".join(iter(lambda: sock.recv(1 << 16), b""))
    return int(sum(float(line.rsplit(b" ", 1)[1]) for line in body.splitlines()
                   if line.startswith(b"tether_reconcile_total{")))


def serving_port(log_path: Path) -> int:
    found = re.search(r"Serving metrics on \S+ port (\d+)", log_path.read_text())
    assert found is not None, f"no metrics port in {log_path}"
    return int(found.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    parser.add_argument("--dir", default=None, help="where to make the temporary tree (default: $TMPDIR)")
    args = parser.parse_args()

    root, manifests, state, apps = support.sandbox("tether-p4-", args.dir)
    artifact = root / "artifact.tar.gz"
    artifact.write_bytes(support.tiny_artifact())
    names = [f"app-{i:04d}" for i in range(args.apps)]
    for name in names:
        document = {"apiVersion": "tether/v1", "kind": "Application", "metadata": {"name": name},
                    "spec": {"path": str(apps / name), "deployment": "v1",
                             "source": {"url": f"file://{artifact}"}, "retention": {"keep": 2}}}
        (manifests / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(root / "notify.sock"))
    messages: list[tuple[float, str]] = []

    def listen() -> None:
        with contextlib.suppress(OSError):
            while data := notify.recv(4096):
                messages.append((time.monotonic(), data.decode()))

    threading.Thread(target=listen, daemon=True).start()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "NOTIFY_", "WATCHDOG_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["NOTIFY_SOCKET"] = str(root / "notify.sock")
    logs = Path(tempfile.mkdtemp(prefix="tether-p4-log-", dir=args.dir))  # not in a directory the daemon watches
    results: list[str] = []

    def launch(log_path: Path) -> subprocess.Popen[bytes]:
        messages.clear()
        with open(log_path, "w") as log:
            return subprocess.Popen([sys.executable, "-m", "controller", "run", "--manifests", str(manifests),
                                     "--state-dir", str(state), "--metrics-address", "127.0.0.1:0",
                                     "--resync-interval", "3600", "-v"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=root)

    def ready_message(daemon: subprocess.Popen[bytes], log_path: Path) -> float:
        while not any(m.startswith("READY=1") for _, m in list(messages)):
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited: {log_path.read_text()[-2000:]}")
            time.sleep(0.005)
        return next(t for t, m in list(messages) if m.startswith("READY=1"))

    all_ready = f"STATUS={len(names)} of {len(names)} applications ready"
    log_path = logs / "daemon.log"
    started = time.monotonic()
    daemon = launch(log_path)
    pid = daemon.pid
    try:
        ready_at = ready_message(daemon, log_path) - started
        while sum(1 for n in names if (apps / n / "current").is_symlink()) < len(names):
            time.sleep(0.05)
        linked_at = time.monotonic() - started
        while statuses_ready(state, names) < len(names):
            time.sleep(0.1)
        all_ready_at = time.monotonic() - started
        results.append(f"  first start (every application deployed): READY=1 after {ready_at:.2f} s; every current "
                       f"link after {linked_at:.2f} s; every status Ready after {all_ready_at:.2f} s")
        settle = wait_idle(pid)
        mem = memory(pid)
        results.append(f"  after the first start (idle {settle:.1f} s later): CPU so far {cpu_seconds(pid):.2f} s, "
                       f"VmRSS {mem['VmRSS']:.1f} MB, VmHWM {mem['VmHWM']:.1f} MB")
        port = serving_port(log_path)

        def resync(which: str, pid: int, port: int, log_path: Path) -> float:
            """A full no-op resync: from SIGHUP until the daemon is idle again; its CPU seconds."""
            passes_before = reconcile_passes(port)
            before_cpu, since = cpu_seconds(pid), time.time_ns()
            hup = time.monotonic()
            lines = log_path.read_text().count("SIGHUP: reading every manifest again.")
            os.kill(pid, signal.SIGHUP)
            while log_path.read_text().count("SIGHUP: reading every manifest again.") == lines:
                time.sleep(0.01)
            wait_idle(pid)
            resync_cpu = cpu_seconds(pid) - before_cpu
            resync_wall = time.monotonic() - hup
            passes = reconcile_passes(port) - passes_before
            results.append(f"  full no-op resync{which} (SIGHUP): {resync_cpu:.2f} CPU s, idle again {resync_wall:.2f} s "
                           f"later (including the 0.5 s idle window); {passes} passes, "
                           f"{rewritten_since(state, since)} status files written   (target <= 0.5 s CPU, nothing "
                           "written)")
            return resync_cpu

        # Two no-op full resyncs. Both find every tree as the read-back after its deploy left it
        # (controller/daemon/converged.py, passes.READ_BACK_SECONDS).
        for which in ("", " again"):
            resync_cpu = resync(which, pid, port, log_path)

        # One rescan that finds nothing changed.
        before_cpu, passes_before = cpu_seconds(pid), reconcile_passes(port)
        (manifests / "README.txt").write_text("not a manifest\n")
        wait_idle(pid)
        results.append(f"  rescan with nothing changed: {cpu_seconds(pid) - before_cpu:.2f} CPU s, "
                       f"{reconcile_passes(port) - passes_before} passes")

        # Idle.
        before_cpu = cpu_seconds(pid)
        time.sleep(args.idle)
        idle_cpu = cpu_seconds(pid) - before_cpu
        results.append(f"  idle: {idle_cpu:.2f} CPU s over {args.idle:.0f} s   (target ~0); with the default "
                       f"--resync-interval 60 add {resync_cpu / 60 * args.idle:.2f} CPU s per {args.idle:.0f} s")

        # Scrape (P5).
        times = []
        size = 0
        for _ in range(10):
            took, size = scrape(port)
            times.append(took)
        results.append(f"  scrape /metrics: median {statistics.median(times) * 1000:.0f} ms, max "
                       f"{max(times) * 1000:.0f} ms, {size / 1024:.0f} KiB   (P5 target <= 100 ms)")
        mem = memory(pid)
        results.append(f"  memory at the end: VmRSS {mem['VmRSS']:.1f} MB, VmHWM {mem['VmHWM']:.1f} MB   "
                       "(target <= 100 MB)")

        stopping = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(60)
        results.append(f"  SIGTERM: exit {code} after {time.monotonic() - stopping:.2f} s")

        # Cold start: a new daemon on the same tree, every application deployed and Ready already; then again
        # without the cache of validated manifests (the first start after an upgrade of tether).
        for which in ("", " without the manifest cache"):
            if which:
                (state / "validated-manifests.json").unlink(missing_ok=True)  # older tethers keep none
            os.sync()
            since = time.time_ns()
            started = time.monotonic()
            daemon = launch(logs / "daemon-2.log")
            pid = daemon.pid
            ready_at = ready_message(daemon, logs / "daemon-2.log") - started
            while not any(m.startswith(all_ready) for _, m in list(messages)):
                if daemon.poll() is not None:
                    raise RuntimeError("the second daemon exited")
                time.sleep(0.005)
            all_ready_at = next(t for t, m in list(messages) if m.startswith(all_ready)) - started
            cpu_at_ready = cpu_seconds(pid)
            wait_idle(pid)
            results.append(f"  cold start{which} (all deployed): READY=1 after {ready_at:.2f} s; systemd status "
                           f"'{all_ready[7:]}' after {all_ready_at:.2f} s, {cpu_at_ready:.2f} CPU s by then; "
                           f"{rewritten_since(state, since)} status files written   (target <= 3 s)")
            if not which:  # the first resync after a restart: the cold start's passes are remembered
                second_log = logs / "daemon-2.log"
                second_port = serving_port(second_log)
                resync(" after the restart", pid, second_port, second_log)
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        notify.close()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)

    print(f"P4 {args.apps} applications ({platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()})")
    print("\n".join(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
