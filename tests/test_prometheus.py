"""A real Prometheus server scrapes a real `tether run` and sees what the test caused."""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator, Sequence
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


def required(program: str, what: str) -> str:
    """The path of `program`; a test that needs it fails (never skips) when it is missing."""
    found = shutil.which(program)
    assert found, f"this test needs {what}: apt-get install prometheus (.ci/run does)"
    return found


@pytest.fixture
def prometheus_binary() -> str:
    return required("prometheus", "a real Prometheus server")


@contextlib.contextmanager
def running_daemon(node: support.Node, http: support.HttpServer) -> Iterator[int]:
    """`tether run` with two applications: "site" (deployed, a succeeding hook) and "broken" (a failing
    beforeActivate hook); yields the port of its metrics endpoint."""
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


@pytest.fixture
def daemon(node: support.Node, http: support.HttpServer) -> Iterator[int]:
    with running_daemon(node, http) as port:
        yield port


@contextlib.contextmanager
def running_prometheus(binary: str, directory: Path, target: int, rule_files: Sequence[Path] = ()) -> Iterator[int]:
    """A Prometheus server scraping 127.0.0.1:`target` as job "tether" every second (and evaluating
    `rule_files` every second), its data in `directory`; yields the port of its HTTP API."""
    web = free_port()
    config = directory / "prometheus.yml"
    rules = "".join(f"  - '{file}'\n" for file in rule_files)
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                      + (f"rule_files:\n{rules}" if rules else "")
                      + "scrape_configs:\n  - job_name: tether\n    static_configs:\n"
                      f"      - targets: ['127.0.0.1:{target}']\n")
    server = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address=127.0.0.1:{web}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield web
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_prometheus_sees_the_drift_and_hook_outcomes_the_test_caused(
        tmp_path: Path, node: support.Node, daemon: int, prometheus_binary: str) -> None:
    site = node.apps / "site"
    wait_for("site to be deployed", lambda: os.path.lexists(site / "current"))
    (site / "current" / "index.html").write_text("defaced\n")  # content drift
    with running_prometheus(prometheus_binary, tmp_path, daemon) as web:
        drift = wait_for("tether_drift of the edited file in Prometheus", lambda: [
            value for labels, value in query(web, 'tether_drift{name="site",type="content"}') if value == "1"])
        files = wait_for("tether_drifted_files", lambda: query(web, 'tether_drifted_files{name="site"}'))
        succeeded = wait_for("the successful hook run", lambda: query(
            web, 'tether_hook_runs_total{name="site",hook="afterActivate",outcome="success"}'))
        failed = wait_for("the failed hook runs", lambda: query(
            web, 'tether_hook_runs_total{name="broken",hook="beforeActivate",outcome="failure"}'))
        ready = wait_for("readiness", lambda: query(web, "tether_application_ready"))

    assert drift == ["1"]
    assert files[0][1] == "1"  # type: ignore[index]
    assert succeeded[0][1] == "1"  # type: ignore[index]
    assert int(failed[0][1]) >= 1  # type: ignore[index]
    assert {labels["name"]: value for labels, value in ready} == {"site": "1", "broken": "0"}  # type: ignore[union-attr]
