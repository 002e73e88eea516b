"""A real Prometheus server scrapes a real `tether run` and sees what the test caused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import support

HOOK_FAILS = "#!/bin/sh\necho 'migration failed' >&2\nexit 4\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], object], timeout: float = 90.0) -> object:
    """Poll `check` until it returns something truthy; the event awaited is named in the failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def query(port: int, expression: str) -> list[tuple[dict[str, str], str]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
    except OSError:
        return []
    return [(r["metric"], r["value"][1]) for r in answer["data"]["result"]]


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    assert found, "this test needs a real Prometheus server: apt-get install prometheus (.ci/run does)"
    return found


@pytest.fixture
def daemon(node: support.Node, http: support.HttpServer) -> Iterator[int]:
    for version in ("1", "2"):
        http.serve(f"/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    url = http.url("/{deployment}.tar.gz")
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": url}, hooks={"afterActivate": "true"}))
    support.write_manifest(node.manifests, support.application(
        "broken", node.apps / "broken", deployment="v1", source={"url": url}, hooks={"beforeActivate": HOOK_FAILS}))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", "run", "--manifests", str(node.manifests), "--state-dir", str(node.state),
         "--metrics-address", f"127.0.0.1:{port}", "--resync-interval", "1", "--content-check-interval", "0.5"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=node.root)
    try:
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_prometheus_sees_the_drift_and_hook_outcomes_the_test_caused(
        tmp_path: Path, node: support.Node, daemon: int, prometheus_binary: str) -> None:
    site = node.apps / "site"
    wait_for("site to be deployed", lambda: os.path.lexists(site / "current"))
    (site / "current" / "index.html").write_text("defaced\n")  # content drift
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                      f"scrape_configs:\n  - job_name: tether\n    static_configs:\n"
                      f"      - targets: ['127.0.0.1:{daemon}']\n")
    server = subprocess.Popen(
        [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        drift = wait_for("tether_drift of the edited file in Prometheus", lambda: [
            value for labels, value in query(web, 'tether_drift{name="site",type="content"}') if value == "1"])
        files = wait_for("tether_drifted_files", lambda: query(web, 'tether_drifted_files{name="site"}'))
        succeeded = wait_for("the successful hook run", lambda: query(
            web, 'tether_hook_runs_total{name="site",hook="afterActivate",outcome="success"}'))
        failed = wait_for("the failed hook runs", lambda: query(
            web, 'tether_hook_runs_total{name="broken",hook="beforeActivate",outcome="failure"}'))
        ready = wait_for("readiness", lambda: query(web, "tether_application_ready"))
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert drift == ["1"]
    assert files[0][1] == "1"  # type: ignore[index]
    assert succeeded[0][1] == "1"  # type: ignore[index]
    assert int(failed[0][1]) >= 1  # type: ignore[index]
    assert {labels["name"]: value for labels, value in ready} == {"site": "1", "broken": "0"}  # type: ignore[union-attr]
