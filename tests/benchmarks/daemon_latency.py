"""Manifest change -> reconcile started: design section 9, target P3 (p50 <= 50 ms, p99 <= 250 ms).

A standalone script, not a pytest test:

    .venv/bin/python tests/benchmarks/daemon_latency.py [--changes 200] [--background 0]

It starts a real `tether run` on a fresh temporary tree with one application
(plus `--background` other applications, suspended, whose manifests the daemon
must still read on every rescan), then changes the application's desired
deployment `--changes` times. Each change is written the way config management
does it (a temporary file renamed over the manifest); "changed" is the moment
just before that rename(2). "Started" is measured two ways:

  http  the arrival of the artifact request on a loopback HTTP server (the first
        thing a deploy does that can be observed from outside), and
  log   the arrival of the daemon's log line `<name>: deploy <deployment>` on its
        stderr pipe (its own timestamp has only millisecond resolution).

The next change is written only once `current` points to the previous one, so
every change is measured on an idle daemon.
"""

from __future__ import annotations

import argparse
import http.server
import os
import platform
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

from tests import support  # noqa: E402


class Server:
    """Serves one tiny tar.gz for every path; records when each path was first asked for."""

    def __init__(self, body: bytes) -> None:
        self.arrivals: dict[str, float] = {}
        arrivals = self.arrivals

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                arrivals.setdefault(self.path, time.time())
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_atomically(path: Path, document: dict[str, object]) -> float:
    """Write a manifest with a temporary file and rename(2); the time just before the rename."""
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(yaml.safe_dump(document, sort_keys=False))
    os.chmod(temporary, 0o644)
    changed = time.time()
    os.replace(temporary, path)
    return changed


def manifest(name: str, path: Path, url: str, deployment: str | None, suspend: bool = False) -> dict[str, object]:
    spec: dict[str, object] = {"path": str(path), "source": {"url": url}, "retention": {"keep": 2}}
    if deployment is not None:
        spec["deployment"] = deployment
    if suspend:
        spec["suspend"] = True
    return {"apiVersion": "tether/v1", "kind": "Application", "metadata": {"name": name}, "spec": spec}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"  {name:<5} n={len(ms)}  p50 {percentile(ms, 0.50):7.1f} ms   p90 {percentile(ms, 0.90):7.1f} ms   "
            f"p99 {percentile(ms, 0.99):7.1f} ms   max {max(ms):7.1f} ms   mean {statistics.fmean(ms):7.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--background", type=int, default=0, help="other (suspended) applications on the node")
    parser.add_argument("--dir", default=None, help="where to make the temporary tree (default: $TMPDIR)")
    args = parser.parse_args()

    root, manifests, state, apps = support.sandbox("tether-p3-", args.dir)
    server = Server(support.tiny_artifact())
    url = f"http://127.0.0.1:{server.port}/{{application}}/{{deployment}}.tar.gz"
    for i in range(args.background):
        name = f"background-{i:04d}"
        write_atomically(manifests / f"{name}.yaml", manifest(name, apps / name, url, None, suspend=True))
    target = manifests / "site.yaml"
    write_atomically(target, manifest("site", apps / "site", url, "v0"))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "NOTIFY_", "WATCHDOG_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    daemon = subprocess.Popen([sys.executable, "-m", "controller", "run", "--manifests", str(manifests),
                               "--state-dir", str(state), "--metrics-address", "127.0.0.1:0",
                               "--resync-interval", "3600", "-v"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=root)
    assert daemon.stderr is not None
    log = support.LogLines(daemon.stderr)
    http_latency: list[float] = []
    log_latency: list[float] = []
    try:
        log.wait_for(r"tether is running", timeout=60)
        current = apps / "site" / "current"
        deadline = time.monotonic() + 120
        while not (current.is_symlink() and os.readlink(current).endswith("/v0")):
            if time.monotonic() > deadline:
                raise TimeoutError("v0 was not deployed")
            time.sleep(0.005)
        for i in range(1, args.changes + 1):
            deployment = f"v{i}"
            mark = log.mark()
            changed = write_atomically(target, manifest("site", apps / "site", url, deployment))
            _, logged, _ = log.wait_for(rf"site: deploy {deployment} ", start=mark, timeout=60)
            log_latency.append(logged - changed)
            deadline = time.monotonic() + 60
            while not os.readlink(current).endswith(f"/{deployment}"):  # the request came before the switch
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{deployment} was not activated")
                time.sleep(0.002)
            http_latency.append(server.arrivals[f"/site/{deployment}.tar.gz"] - changed)
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
        server.close()
        shutil.rmtree(root, ignore_errors=True)

    print(f"P3 manifest change -> reconcile started ({platform.node()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {1 + args.background} manifests)")
    print(summary("http", http_latency))
    print(summary("log", log_latency))
    print("  target: p50 <= 50 ms, p99 <= 250 ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
