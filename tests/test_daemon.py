"""`tether run` end to end: a real daemon subprocess on a temporary tree, driven only through
files, signals, the command line and HTTP (design section 3, 6, 7, 8 and 9).

Nothing here sleeps to synchronise: every wait polls something observable (the status
file, `current`, the metrics endpoint) or waits for a line of the daemon's log, with a
bounded deadline. To show that the daemon did NOT act on something, a test writes a
"barrier" application after it and waits until that one is Ready: the daemon has then
read the manifests after the thing that must not count.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from controller.daemon import passes as daemon_passes
from tests import support

T = TypeVar("T")
SECRET = "s3cret"
BROKEN_YAML = "apiVersion: tether/v1\nkind: Application\nspec: [unclosed\n"


# ---------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], T], timeout: float = 20, interval: float = 0.02,
               message: str | Callable[[], str] = "") -> T:
    """Poll `predicate` until it returns something truthy, and return that; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"not true after {timeout} s: {text or predicate}")
        time.sleep(interval)


# ---------------------------------------------------------------- the daemon


class Daemon:
    """A real `tether run` subprocess; its log lines (stderr) are collected by a thread."""

    def __init__(self, node: support.Node, args: tuple[str, ...], env: dict[str, str] | None) -> None:
        self.node = node
        command = [sys.executable, "-m", "controller", "run", "--manifests", str(node.manifests),
                   "--state-dir", str(node.state), "--metrics-address", "127.0.0.1:0",
                   "--resync-interval", "3600", *args]  # INFO: the default
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "NOTIFY_", "WATCHDOG_"))}
        full_env.update(env or {})
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, env=full_env, cwd=node.root)
        self.pid = self.process.pid
        assert self.process.stderr is not None
        self.stderr = support.LogLines(self.process.stderr)
        self.mark, self.log, self.wait_for_log = self.stderr.mark, self.stderr.text, self.stderr.wait_for
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            line = self.wait_for_log(r"Serving metrics on \S+ port \d+")[2]
            self._port = int(line.rsplit(" ", 1)[1].rstrip("."))
        return self._port

    def scrape(self) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        assert head.split(b" ", 2)[1] == b"200", head
        return body.decode()

    def samples(self, metric: str, **labels: str) -> float:
        """The sum of the samples of `metric` whose labels include `labels`."""
        total = 0.0
        wanted = [f'{key}="{value}"' for key, value in labels.items()]
        for line in self.scrape().splitlines():
            if line.startswith(metric + "{") and all(w in line.split("}")[0] for w in wanted):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def passes(self, name: str) -> int:
        """Reconcile passes the daemon has made of `name` (tether_reconcile_total)."""
        return int(self.samples("tether_reconcile_total", name=name))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL if it does not end within `timeout`; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.stderr.reader.join(timeout=10)  # the whole log is in
        return self.process.returncode


Start = Callable[..., Daemon]


@pytest.fixture
def start(node: support.Node) -> Iterator[Start]:
    """Start `tether run` on the node (extra options as arguments); every daemon is stopped afterwards."""
    started: list[Daemon] = []

    def run(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> Daemon:
        daemon = Daemon(node, args, env)
        started.append(daemon)
        if wait:
            daemon.wait_for_log(r"tether is running")
        return daemon

    yield run
    for daemon in started:
        daemon.stop()


# ---------------------------------------------------------------- manifests, status, trees


def put(directory: Path, document: dict[str, Any] | str, file: str | None = None, mode: int = 0o644) -> Path:
    """Write a manifest atomically (temporary dotfile, then rename), as config management does."""
    file = file or f"{document['metadata']['name']}.yaml"  # type: ignore[index]
    text = yaml.safe_dump(document, sort_keys=False) if isinstance(document, dict) else document
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.replace(temporary, directory / file)
    return directory / file


def app_manifest(node: support.Node, http: support.HttpServer, name: str = "site", deployment: str | None = "v1",
                 **spec: Any) -> dict[str, Any]:
    """An application at `<apps>/<name>` whose artifacts are `/<name>/<deployment>.tar.gz` on `http`."""
    if deployment is not None:
        spec["deployment"] = deployment
    return support.application(name, node.apps / name, source={"url": http.url(f"/{name}/{{deployment}}.tar.gz")},
                               **spec)


def serve(http: support.HttpServer, name: str, *versions: str) -> None:
    for version in versions:
        http.serve(f"/{name}/{version}.tar.gz", support.tar_bytes(support.site(f"{name} {version}")))


def requested(http: support.HttpServer, path: str) -> list[dict[str, str]]:
    """The headers of every request for `path` so far."""
    return [headers for seen, headers in list(http.requests) if seen.split("?")[0] == path]


def read_status(node: support.Node, name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((node.state / "status" / f"{name}.json").read_text())
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


def status_of(node: support.Node, name: str) -> dict[str, Any]:
    document = read_status(node, name)
    assert document is not None, f"{name} has no status"
    return document


def condition(document: dict[str, Any] | None, kind: str = "Ready") -> dict[str, Any]:
    return next((c for c in (document or {}).get("conditions", []) if c["type"] == kind), {})


def current(app: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(app / "current"))
    except OSError:
        return None


def converged(node: support.Node, name: str, deployment: str) -> bool:
    """`current` points at `deployment` and the status says Ready with it."""
    document = read_status(node, name)
    return (current(node.apps / name) == deployment and document is not None and document.get("current") == deployment
            and condition(document).get("status") == "True")


def wait_converged(node: support.Node, name: str, deployment: str, timeout: float = 20) -> None:
    wait_until(lambda: converged(node, name, deployment), timeout,
               message=lambda: f"{name} did not converge to {deployment}: {read_status(node, name)}")


_barriers = itertools.count()


def barrier(node: support.Node, http: support.HttpServer, directory: Path | None = None) -> None:
    """Add a fresh application and wait until it is Ready: the daemon has read the manifests since now."""
    name = f"barrier-{next(_barriers)}"
    serve(http, name, "v1")
    put(directory or node.manifests, app_manifest(node, http, name))
    wait_converged(node, name, "v1")


def texts_below(*roots: Path) -> Iterator[tuple[Path, bytes]]:
    for root in roots:
        for file in support.walk_files(root):
            if not file.is_symlink():
                yield file, file.read_bytes()


def parse_time(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def running_site(node: support.Node, http: support.HttpServer, start: Start, *versions: str,
                 options: tuple[str, ...] = (), **spec: Any) -> tuple[Daemon, Path]:
    """A daemon (started with `options`) that has deployed `site` v1; artifacts of `versions` are served too."""
    serve(http, "site", "v1", *versions)
    put(node.manifests, app_manifest(node, http, **spec))
    daemon = start(*options)
    wait_converged(node, "site", "v1")
    return daemon, node.apps / "site"


def read_back(daemon: Daemon, name: str) -> int:
    """Wait for the pass that reads back the first deploy of `name` (passes.READ_BACK_SECONDS after it), so that
    counting passes from now on counts only what comes later; the passes so far."""
    wait_until(lambda: daemon.passes(name) >= 2, timeout=daemon_passes.READ_BACK_SECONDS + 20,
               message=f"no read-back of {name}")
    return daemon.passes(name)


# ---------------------------------------------------------------- 1. the life of a manifest


def test_a_new_manifest_is_deployed_a_bump_is_activated_and_a_removed_one_is_unmanaged_with_its_files_kept(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    serve(http, "site", "v1", "v2")
    daemon = start()
    app = node.apps / "site"

    put(node.manifests, app_manifest(node, http, deployment="v1"))
    wait_converged(node, "site", "v1")
    assert os.readlink(app / "current") == str(app / "v1")
    assert status_of(node, "site")["desired"] == "v1"

    put(node.manifests, app_manifest(node, http, deployment="v2"))
    wait_converged(node, "site", "v2")
    assert os.readlink(app / "current") == str(app / "v2")
    assert (app / "current" / "index.html").read_text() == "<h1>version site v2</h1>\n"
    assert daemon.samples("tether_application_ready", name="site") == 1

    before = support.snapshot(app)
    (node.manifests / "site.yaml").unlink()
    wait_until(lambda: read_status(node, "site") is None, message="the status file of site stays")
    daemon.wait_for_log(r"The manifest of site is gone: tether stops managing it; its files stay on disk\.")

    assert support.snapshot(app) == before
    assert os.readlink(app / "current") == str(app / "v2")
    gone = node.tether("status", "site")
    assert gone.returncode == 2 and "no status for 'site'" in gone.stderr
    assert 'name="site"' not in daemon.scrape()
    assert daemon.stop() == 0


# ---------------------------------------------------------------- 2. what is not a change


def test_editor_swap_backup_and_lock_files_change_nothing(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, app = running_site(node, http, start, "v2")
    passes = read_back(daemon, "site")
    status_before = (node.state / "status" / "site.json").read_bytes()
    bumped = yaml.safe_dump(app_manifest(node, http, deployment="v2"), sort_keys=False)

    (node.manifests / ".site.yaml.swp").write_bytes(b"b0VIM 9.0\0\0" + bumped.encode())
    (node.manifests / ".site.yaml.swx").write_text(bumped)
    (node.manifests / "site.yaml~").write_text(bumped)
    (node.manifests / "#site.yaml#").write_text(bumped)
    (node.manifests / "site.yaml.bak").write_text(bumped)
    (node.manifests / "site.yaml.dpkg-new").write_text(bumped)
    (node.manifests / "4913").write_text("")  # vim's probe for a writable directory
    os.symlink("root@node.4242:1700000000", node.manifests / ".#site.yaml")  # emacs's lock: a dangling symlink
    barrier(node, http)

    assert requested(http, "/site/v2.tar.gz") == []
    assert current(app) == "v1"
    assert daemon.passes("site") == passes
    assert (node.state / "status" / "site.json").read_bytes() == status_before
    assert daemon.samples("tether_manifests", state="invalid") == 0


def test_a_manifest_written_in_chunks_is_not_acted_on_before_it_is_complete(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    # The first half names deployment v2, a deployment that exists; the whole file names v21.
    _, app = running_site(node, http, start, "v2", "v21")
    text = yaml.safe_dump(app_manifest(node, http, deployment=None), sort_keys=False) + "  deployment: v21\n"
    half, rest = text[:-2], text[-2:]
    assert yaml.safe_load(half)["spec"]["deployment"] == "v2"

    with open(node.manifests / "site.yaml", "w") as handle:
        handle.write(half)
        handle.flush()
        os.fsync(handle.fileno())
        barrier(node, http)  # the daemon reads the manifests while site.yaml is half written
        handle.write(rest)
    wait_converged(node, "site", "v21")

    assert requested(http, "/site/v2.tar.gz") == [], "the daemon deployed the half-written manifest"
    assert not (app / "v2").exists()


def test_rewriting_a_manifest_in_place_over_and_over_never_kills_the_daemon(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    # Like `cat > site.yaml` run again and again: each open for writing may meet the daemon reading the file.
    daemon, _ = running_site(node, http, start)
    text = (node.manifests / "site.yaml").read_text()
    seen = set()

    for _ in range(1000):
        with open(node.manifests / "site.yaml", "w") as handle:
            handle.write(text)
        seen.add(condition(read_status(node, "site")).get("reason"))
        if daemon.process.poll() is not None:
            break

    assert daemon.process.poll() is None, f"the daemon died with {daemon.process.returncode}"
    barrier(node, http)
    assert seen == {"Converged"}, f"the daemon read a half-written site.yaml: the status said {sorted(seen)}"
    assert converged(node, "site", "v1")


def test_touching_a_manifest_changes_nothing_because_its_content_counts_not_its_mtime(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, _ = running_site(node, http, start)
    requests, passes = len(http.requests), read_back(daemon, "site")
    status_before = (node.state / "status" / "site.json").read_bytes()

    subprocess.run(["touch", str(node.manifests / "site.yaml")], check=True)
    os.utime(node.manifests / "site.yaml", (1_000_000_000, 1_000_000_000))
    barrier(node, http)

    assert [p for p, _ in http.requests[requests:] if p.startswith("/site/")] == []
    assert daemon.passes("site") == passes
    assert (node.state / "status" / "site.json").read_bytes() == status_before


def test_fixing_a_refused_manifests_permissions_with_chmod_alone_is_noticed(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    serve(http, "site", "v1")
    daemon = start()
    manifest = put(node.manifests, app_manifest(node, http), mode=0o666)  # refused: writable by others
    barrier(node, http)
    wait_until(lambda: daemon.samples("tether_manifest_errors", file=str(manifest)) == 1)
    assert current(node.apps / "site") is None

    manifest.chmod(0o644)  # only an IN_ATTRIB event: no write, no close

    wait_converged(node, "site", "v1", timeout=10)


# ---------------------------------------------------------------- 3. many manifests at once


def many(node: support.Node, http: support.HttpServer, directory: Path, names: list[str], deployment: str) -> None:
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    for name in names:
        support.write_manifest(directory, support.application(
            name, node.apps / name, deployment=deployment, source={"url": http.url("/many/{deployment}.tar.gz")}))


def all_converged(node: support.Node, names: list[str], deployment: str) -> bool:
    return all(current(node.apps / n) == deployment for n in names) and all(
        converged(node, n, deployment) for n in names)


def test_a_symlink_swap_of_the_manifests_directory_brings_two_hundred_applications_to_their_state(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    for version in ("v1", "v2"):
        http.serve(f"/many/{version}.tar.gz", support.tar_bytes(support.site(version)))
    names = [f"app-{i:03d}" for i in range(200)]
    node.manifests.rmdir()
    many(node, http, node.root / "rev1", [*names[:10], "retired"], "v1")
    os.symlink("rev1", node.manifests)
    daemon = start()
    wait_until(lambda: all_converged(node, [*names[:10], "retired"], "v1"), timeout=90, interval=0.1)
    first_ten = {n: (node.state / "status" / f"{n}.json").read_bytes() for n in names[:10]}

    many(node, http, node.root / "rev2", names, "v1")
    subprocess.run(["ln", "-s", "rev2", "tmp"], cwd=node.root, check=True)
    subprocess.run(["mv", "-T", "tmp", "manifests"], cwd=node.root, check=True)

    wait_until(lambda: all_converged(node, names, "v1"), timeout=90, interval=0.1,
               message=lambda: f"{sum(current(node.apps / n) == 'v1' for n in names)} of 200 converged")
    wait_until(lambda: read_status(node, "retired") is None, timeout=90)
    assert current(node.apps / "retired") == "v1"  # unmanaged, not removed
    assert {n: (node.state / "status" / f"{n}.json").read_bytes() for n in names[:10]} == first_ten
    assert len(requested(http, "/many/v1.tar.gz")) == 201
    assert daemon.samples("tether_manifests", state="valid") == 200

    # The daemon now watches rev2, where the link points: a change there is noticed at once.
    put(node.root / "rev2", support.application(names[0], node.apps / names[0], deployment="v2",
                                                source={"url": http.url("/many/{deployment}.tar.gz")}))
    wait_converged(node, names[0], "v2")


def test_a_git_pull_that_rewrites_hundreds_of_manifests_at_once_converges_every_application(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    for version in ("v1", "v2"):
        http.serve(f"/many/{version}.tar.gz", support.tar_bytes(support.site(version)))
    names = [f"app-{i:03d}" for i in range(200)]
    many(node, http, node.manifests, names, "v1")
    start()
    wait_until(lambda: all_converged(node, names, "v1"), timeout=90, interval=0.1)

    # Like `git pull`: each changed file is unlinked and written anew, files are added and deleted.
    kept, deleted, added = names[:180], names[180:], [f"new-{i:03d}" for i in range(20)]
    for name in kept:
        file = node.manifests / f"{name}.yaml"
        text = file.read_text().replace("deployment: v1", "deployment: v2")
        file.unlink()
        with open(file, "x") as handle:
            handle.write(text)
    for name in deleted:
        (node.manifests / f"{name}.yaml").unlink()
    many(node, http, node.manifests, added, "v2")

    wait_until(lambda: all_converged(node, kept + added, "v2"), timeout=90, interval=0.1,
               message=lambda: f"{sum(current(node.apps / n) == 'v2' for n in kept + added)} of 200 converged")
    wait_until(lambda: all(read_status(node, n) is None for n in deleted))
    assert all(current(node.apps / n) == "v1" for n in deleted)


# ---------------------------------------------------------------- 4. the directory goes away


def test_a_manifests_directory_that_is_removed_and_created_again_unmanages_nothing_meanwhile(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, app = running_site(node, http, start)
    serve(http, "fresh", "v1")
    text = (node.manifests / "site.yaml").read_text()
    status_file = node.state / "status" / "site.json"
    requests = len(http.requests)

    # Gone at once (`rm -rf` would first show the daemon an empty directory, which unmanages everything).
    os.rename(node.manifests, node.root / "manifests.old")
    shutil.rmtree(node.root / "manifests.old")
    _, _, line = daemon.wait_for_log(r"Cannot read the manifests directory")
    assert "keeping every application as it was" in line
    assert status_file.exists() and current(app) == "v1"

    replacement = node.root / "manifests.new"
    replacement.mkdir(mode=0o755)
    (replacement / "site.yaml").write_text(text)
    os.rename(replacement, node.manifests)
    put(node.manifests, app_manifest(node, http, "fresh"))  # added after the directory came back
    wait_converged(node, "fresh", "v1")

    assert converged(node, "site", "v1")
    assert "The manifest of site is gone" not in daemon.log()
    assert [p for p, _ in http.requests[requests:] if p.startswith("/site/")] == []


# ---------------------------------------------------------------- 5. invalid manifests


def test_an_invalid_manifest_keeps_the_last_good_state_until_it_is_fixed(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, app = running_site(node, http, start, "v2", "v3")
    assert daemon.samples("tether_application_stalled", name="site") == 0

    broken = app_manifest(node, http, deployment="v2")
    broken["spec"]["retention"] = {"keep": "many"}
    put(node.manifests, broken)
    wait_until(lambda: condition(read_status(node, "site")).get("reason") == "InvalidManifest")
    document = read_status(node, "site")
    assert document is not None and document["current"] == "v1" and document["desired"] == "v1"
    assert "site.yaml" in document["lastError"] and "/spec/retention/keep" in document["lastError"]
    assert condition(document, "Stalled")["status"] == "True"
    assert daemon.samples("tether_application_stalled", name="site") == 1

    put(node.manifests, BROKEN_YAML, "site.yaml")
    wait_until(lambda: "/spec/retention/keep" not in status_of(node, "site")["lastError"])
    barrier(node, http)
    assert current(app) == "v1" and condition(read_status(node, "site"))["reason"] == "InvalidManifest"
    assert requested(http, "/site/v2.tar.gz") == []

    put(node.manifests, app_manifest(node, http, deployment="v3"))
    wait_converged(node, "site", "v3")
    assert status_of(node, "site")["lastError"] is None
    assert daemon.samples("tether_application_stalled", name="site") == 0


def test_restoring_the_last_good_content_of_an_invalid_manifest_makes_the_application_ready_again(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    running_site(node, http, start)
    good = (node.manifests / "site.yaml").read_text()
    put(node.manifests, BROKEN_YAML, "site.yaml")
    wait_until(lambda: condition(read_status(node, "site")).get("reason") == "InvalidManifest")

    put(node.manifests, good, "site.yaml")  # e.g. `git checkout -- site.yaml`

    wait_converged(node, "site", "v1", timeout=10)
    assert status_of(node, "site")["lastError"] is None


def test_an_unparsable_manifest_is_reported_with_its_line_in_status_log_and_metrics(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, _ = running_site(node, http, start)
    mark = daemon.mark()
    file = str(node.manifests / "site.yaml")

    put(node.manifests, BROKEN_YAML, "site.yaml")
    wait_until(lambda: condition(read_status(node, "site")).get("reason") == "InvalidManifest")
    barrier(node, http)

    missing = []
    error = status_of(node, "site")["lastError"]
    if not re.search(re.escape(file) + r":\d+: this is not valid YAML", error):
        missing.append(f"the status says only {error!r}, not what is wrong and on which line")
    if file not in daemon.log(mark):
        missing.append("the daemon's log does not mention the invalid manifest")
    if daemon.samples("tether_manifest_errors", file=file) != 1:
        missing.append("tether_manifest_errors does not count it")
    assert not missing, "; ".join(missing)


def test_an_invalid_manifest_still_shows_in_status_after_a_full_resync(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, _ = running_site(node, http, start, options=("--resync-interval", "1"))
    broken = app_manifest(node, http, deployment="v2")
    broken["spec"]["retention"] = {"keep": "many"}
    put(node.manifests, broken)
    wait_until(lambda: condition(read_status(node, "site")).get("reason") == "InvalidManifest")
    passes = daemon.passes("site")
    seen: set[str] = set()

    def two_resyncs_later() -> bool:
        seen.add(condition(read_status(node, "site")).get("reason", "none"))
        return daemon.passes("site") >= passes + 2

    wait_until(two_resyncs_later, timeout=10)

    assert seen == {"InvalidManifest"}, f"while site.yaml is invalid the status said {sorted(seen)}"


def test_an_invalid_manifest_of_a_new_application_leaves_nothing_behind_once_it_is_removed(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon = start()
    broken = app_manifest(node, http, "newcomer")
    broken["spec"]["retention"] = {"keep": 0}
    file = put(node.manifests, broken)
    wait_until(lambda: daemon.samples("tether_manifest_errors", file=str(file)) == 1)

    file.unlink()
    barrier(node, http)

    assert read_status(node, "newcomer") is None, "the status of a manifest that is gone stays forever"
    assert daemon.samples("tether_manifest_errors", file=str(file)) == 0
    assert 'name="newcomer"' not in daemon.scrape()


# ---------------------------------------------------------------- 6. imperative commands


def test_deploy_without_wait_returns_at_once_and_the_running_daemon_deploys(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, app = running_site(node, http, start, "v2")
    mark = daemon.mark()

    run = node.tether("deploy", "site", "--deployment", "v2")

    assert run.returncode == 0, run.stderr
    assert "the running daemon deploys it" in run.stdout
    daemon.wait_for_log(r"site: deploy v2", start=mark)  # the daemon's own log: it did the work
    wait_converged(node, "site", "v2")
    assert status_of(node, "site")["desired"] == "v2"
    assert os.readlink(app / "current") == str(app / "v2")


def test_deploy_with_wait_and_a_header_sends_it_only_to_the_server_and_writes_it_nowhere(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, app = running_site(node, http, start, "v3")
    passes = daemon.passes("site")

    run = node.tether("deploy", "site", "--deployment", "v3", "--wait", "--header", f"JOB-TOKEN: {SECRET}")

    assert run.returncode == 0, run.stderr
    assert current(app) == "v3"  # it waited for the outcome
    sent = requested(http, "/site/v3.tar.gz")
    assert sent and all(headers.get("JOB-TOKEN") == SECRET for headers in sent), sent
    wait_until(lambda: daemon.passes("site") > passes)  # the daemon follows the new desired state
    wait_converged(node, "site", "v3")
    assert len(requested(http, "/site/v3.tar.gz")) == 1
    for file, data in texts_below(node.state, app):
        assert SECRET.encode() not in data, f"the header value is written to {file}"
    assert SECRET not in daemon.log() + run.stdout + run.stderr


def test_rollback_activate_remove_and_prune_hold_while_the_daemon_runs(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, app = running_site(node, http, start, "v2", "v3", "v4")
    for version in ("v2", "v3", "v4"):
        put(node.manifests, app_manifest(node, http, deployment=version))
        wait_converged(node, "site", version)

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        """Run a command, then wait for the daemon's pass that follows it; `current` must not move."""
        passes = daemon.passes("site")
        run = node.tether(*args)
        assert run.returncode == 0, run.stderr
        wait_until(lambda: daemon.passes("site") > passes)
        return run

    command("rollback", "site")
    assert current(app) == "v3"
    wait_converged(node, "site", "v3")

    command("activate", "site", "v1")
    wait_converged(node, "site", "v1")
    assert status_of(node, "site")["previous"] == "v3"

    refused = node.tether("remove", "site", "v1")
    assert refused.returncode == 2 and "active or desired" in refused.stderr
    assert node.tether("remove", "site", "v2").returncode == 0
    assert not (app / "v2").exists() and not (app / ".tether" / "deployments" / "v2.json").exists()

    assert node.tether("prune", "site", "--keep", "1").returncode == 0
    assert sorted(p.name for p in app.iterdir() if not p.name.startswith(".")) == ["current", "v1", "v3"]

    barrier(node, http)  # and the daemon, passing by, changes none of it
    assert current(app) == "v1"
    assert sorted(p.name for p in app.iterdir() if not p.name.startswith(".")) == ["current", "v1", "v3"]
    assert sorted(p for p, _ in http.requests if p.startswith("/site/")) == [
        f"/site/v{n}.tar.gz" for n in range(1, 5)]  # nothing was downloaded again


def test_a_suspended_application_ignores_a_manifest_bump_until_it_is_resumed(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, app = running_site(node, http, start, "v2")
    passes = daemon.passes("site")

    run = node.tether("suspend", "site")
    assert run.returncode == 0, run.stderr
    wait_until(lambda: condition(read_status(node, "site")).get("reason") == "Suspended")
    assert daemon.passes("site") > passes

    passes = daemon.passes("site")
    put(node.manifests, app_manifest(node, http, deployment="v2"))
    wait_until(lambda: daemon.passes("site") > passes)
    wait_until(lambda: (read_status(node, "site") or {}).get("desired") == "v2")
    assert condition(read_status(node, "site"))["reason"] == "Suspended"
    assert current(app) == "v1" and requested(http, "/site/v2.tar.gz") == []
    assert daemon.samples("tether_application_suspended", name="site") == 1

    assert node.tether("resume", "site").returncode == 0
    wait_converged(node, "site", "v2")


def test_hook_runs_of_a_command_line_deploy_stay_in_status_after_the_daemons_next_pass(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, _ = running_site(node, http, start, "v2", hooks={"afterActivate": "#!/bin/sh\necho activated\n"})
    assert status_of(node, "site")["hookRunCounts"] == {"afterActivate/success": 1}
    passes = daemon.passes("site")

    assert node.tether("deploy", "site", "--deployment", "v2", "--wait").returncode == 0
    wait_until(lambda: daemon.passes("site") > passes)
    wait_converged(node, "site", "v2")

    document = read_status(node, "site")
    assert document is not None
    assert document["hookRunCounts"] == {"afterActivate/success": 2}, "hook runs went missing from the counter"
    assert [run["deployment"] for run in document["lastHookRuns"]] == ["v2"]
    assert daemon.samples("tether_hook_runs_total", name="site", hook="afterActivate", outcome="success") == 2


# ---------------------------------------------------------------- 7. one daemon per state dir


def test_a_second_daemon_on_the_same_state_dir_exits_at_once_with_a_clear_message(
        node: support.Node, start: Start) -> None:
    first = start()

    second = subprocess.run([sys.executable, "-m", "controller", "run", "--manifests", str(node.manifests),
                             "--state-dir", str(node.state), "--metrics-address", "127.0.0.1:0"],
                            capture_output=True, text=True, timeout=20)

    assert second.returncode == 1
    assert "Another `tether run` already uses the state dir" in second.stderr
    assert first.process.poll() is None
    assert first.stop() == 0


# ---------------------------------------------------------------- 8. signals


def test_sighup_makes_the_daemon_read_and_reconcile_everything_again(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    daemon, app = running_site(node, http, start)
    serve(http, "other", "v1")
    put(node.manifests, app_manifest(node, http, "other"))
    wait_converged(node, "other", "v1")
    (app / "current").unlink()  # drift that no watch sees
    passes = {name: daemon.passes(name) for name in ("site", "other")}
    mark = daemon.mark()

    daemon.signal(signal.SIGHUP)

    daemon.wait_for_log(r"SIGHUP: reading every manifest again\.", start=mark)
    wait_converged(node, "site", "v1")
    wait_until(lambda: all(daemon.passes(name) > passes[name] for name in passes))
    assert os.readlink(app / "current") == str(app / "v1")
    assert len(requested(http, "/site/v1.tar.gz")) == 1


def test_sigterm_lets_a_running_pass_finish_within_the_grace_period_and_exits_zero(
        node: support.Node, http: support.HttpServer, start: Start, tmp_path: Path) -> None:
    serve(http, "site", "v1")
    started, finished = tmp_path / "hook-started", tmp_path / "hook-finished"
    hook = f"#!/bin/sh\ntouch {started}\nsleep 2\ntouch {finished}\n"
    put(node.manifests, app_manifest(node, http, hooks={"beforeActivate": hook}, hookTimeoutSeconds=600))
    daemon = start("--shutdown-grace", "30")
    wait_until(started.exists)

    daemon.signal(signal.SIGTERM)
    code = daemon.process.wait(30)

    assert code == 0
    assert finished.exists(), "the daemon exited before its pass ended"
    assert current(node.apps / "site") == "v1"
    record = json.loads((node.apps / "site" / ".tether" / "deployments" / "v1.json").read_text())
    assert record["state"] == "complete" and "activationPending" not in record
    daemon.wait_for_log(r"Stopping: no new work; waiting up to 30 s for running passes\.")


# ---------------------------------------------------------------- 9. systemd


def test_the_daemon_tells_systemd_it_is_ready_keeps_the_watchdog_fed_and_says_when_it_stops(
        node: support.Node, http: support.HttpServer, start: Start, tmp_path: Path) -> None:
    serve(http, "site", "v1")
    put(node.manifests, app_manifest(node, http))
    address = str(tmp_path / "notify.sock")
    with support.notify_socket(address) as sock:
        daemon = start(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}, wait=False)

        ready = sock.recv(4096).decode().splitlines()
        ready_at = time.monotonic()
        assert ready[0] == "READY=1"
        assert any(re.fullmatch(r"STATUS=\d+ of \d+ applications ready, \d+ not ready", line) for line in ready), ready
        sock.settimeout(1.0)
        pings = []
        while len(pings) < 3:
            message = sock.recv(4096).decode().splitlines()
            if message[0].startswith("STATUS="):
                continue  # a status change between pings
            assert message[0] == "WATCHDOG=1", message
            pings.append(time.monotonic())
        assert pings[0] - ready_at < 1.0
        assert all(b - a < 0.4 for a, b in itertools.pairwise(pings)), pings

        daemon.signal(signal.SIGTERM)
        sock.settimeout(10)
        while (message := sock.recv(4096).decode().splitlines())[0] == "WATCHDOG=1":
            pass
        assert message[0] == "STOPPING=1"
        assert daemon.process.wait(20) == 0


def test_the_status_line_systemd_shows_counts_every_application_and_follows_changes(
        node: support.Node, http: support.HttpServer, start: Start, tmp_path: Path) -> None:
    serve(http, "site", "v1")
    put(node.manifests, app_manifest(node, http))
    address = str(tmp_path / "notify.sock")
    with support.notify_socket(address) as sock:
        start(env={"NOTIFY_SOCKET": address}, wait=False)  # no watchdog: nothing pings regularly
        statuses = [line for line in sock.recv(4096).decode().splitlines() if line.startswith("STATUS=")]
        wait_converged(node, "site", "v1")
        sock.settimeout(5)
        with contextlib.suppress(TimeoutError):
            while statuses[-1] != "STATUS=1 of 1 applications ready, 0 not ready":
                statuses += [line for line in sock.recv(4096).decode().splitlines() if line.startswith("STATUS=")]

    assert re.fullmatch(r"STATUS=[01] of 1 applications ready, [01] not ready", statuses[0]), statuses
    assert statuses[-1] == "STATUS=1 of 1 applications ready, 0 not ready", statuses


def tgkill(pid: int, tid: int, signum: int) -> None:
    """Send a signal to one thread of another process, as the kernel may choose to deliver kill(2)."""
    number = {"x86_64": 234, "aarch64": 131, "i686": 270, "armv7l": 268}[os.uname().machine]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, pid, tid, signum) != 0:
        raise OSError(ctypes.get_errno(), "tgkill failed")


def threads_taking(pid: int, signum: int) -> list[int]:
    """The threads of `pid` other than its main thread that do not block `signum`."""
    found = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        text = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)$", text, re.M).group(1), 16)  # type: ignore[union-attr]
        if tid != pid and not blocked & (1 << (signum - 1)):
            found.append(tid)
    return found


def test_a_hook_the_daemon_runs_starts_with_no_signal_blocked(node: support.Node, http: support.HttpServer,
                                                               start: Start, tmp_path: Path) -> None:
    # The workers block the signals the main thread handles; bash (unlike dash) keeps the mask it was given, and
    # a service an afterActivate hook starts would ignore SIGTERM for good.
    seen = tmp_path / "sigblk"
    hook = f"#!/bin/bash\nexec grep '^SigBlk:' /proc/self/status > {seen}\n"
    running_site(node, http, start, hooks={"afterActivate": hook})
    text = seen.read_text()
    assert int(text.split()[1], 16) == 0, text


def test_a_signal_the_kernel_hands_to_another_thread_is_acted_on_at_once(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    # kill(2) may deliver a signal to any thread that does not block it; Python runs the handler in
    # the main thread, which must then wake up. The daemon is idle: no watch event, no resync, no watchdog.
    daemon, _ = running_site(node, http, start)  # its worker threads exist once it says it is running

    def deliver(signum: int) -> None:
        others = threads_taking(daemon.pid, signum)
        if others:
            tgkill(daemon.pid, others[-1], signum)
        else:  # every other thread blocks it: the kernel can only give it to the main thread
            daemon.signal(signum)

    mark = daemon.mark()
    deliver(signal.SIGHUP)
    daemon.wait_for_log(r"SIGHUP: reading every manifest again\.", start=mark, timeout=5)
    deliver(signal.SIGTERM)
    assert daemon.process.wait(10) == 0


def test_a_metrics_textfile_in_the_state_dir_does_not_make_the_daemon_spin(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    textfile = node.state / "tether.prom"
    daemon, _ = running_site(node, http, start, options=("--metrics-textfile", str(textfile)))
    barrier(node, http)
    wait_until(textfile.exists)

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    # A measurement window, not synchronisation: an idle daemon uses (almost) no CPU.
    before = cpu_seconds()
    time.sleep(1.0)
    used = cpu_seconds() - before

    assert used < 0.2, f"the idle daemon used {used:.2f} CPU seconds in one second"
    assert "tether_build_info" in textfile.read_text()


# ---------------------------------------------------------------- 10. back-off


def test_a_failing_artifact_is_retried_after_its_back_off_not_in_a_tight_loop(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    http.serve("/site/v1.tar.gz", support.Reply(404, b"no such artifact"))
    put(node.manifests, app_manifest(node, http))
    start()
    status_file = node.state / "status" / "site.json"

    first = wait_until(lambda: (d := read_status(node, "site")) and d.get("nextAttemptAt") and d)
    written = status_file.stat().st_mtime_ns
    assert condition(first)["status"] == "False" and "HTTP 404" in first["lastError"]
    assert parse_time(first["nextAttemptAt"]) > parse_time(first["updatedAt"])
    assert len(requested(http, "/site/v1.tar.gz")) == 1

    def second_attempt_recorded() -> dict[str, Any] | None:
        document = read_status(node, "site")
        done = (status_file.stat().st_mtime_ns != written and document is not None
                and document["updatedAt"] != first["updatedAt"] and condition(document, "Reconciling")["status"] == "False")
        return document if done else None

    second = wait_until(second_attempt_recorded, timeout=20)
    second_at = time.time()

    assert second is not None and second["nextAttemptAt"] is not None
    assert second_at >= parse_time(first["nextAttemptAt"]), "retried before the back-off ended"
    assert len(requested(http, "/site/v1.tar.gz")) == 2
    assert parse_time(second["nextAttemptAt"]) - parse_time(second["updatedAt"]) >= 2  # it grows


def test_an_artifact_that_answers_404_shows_as_stalled_with_its_next_attempt_in_the_metrics_until_a_good_bump(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    http.serve("/site/v1.tar.gz", support.Reply(404, b"no such artifact"))  # FetchRefused: a permanent error
    serve(http, "site", "v2")
    put(node.manifests, app_manifest(node, http))
    daemon = start()

    def exported() -> tuple[dict[str, Any], float, float] | None:
        """(status, stalled, next attempt) from a scrape while the status stayed the same."""
        before = read_status(node, "site")
        stalled = daemon.samples("tether_application_stalled", name="site")
        retry = daemon.samples("tether_next_attempt_timestamp_seconds", name="site")
        if before is None or not before.get("nextAttemptAt") or read_status(node, "site") != before:
            return None
        return before, stalled, retry

    found = wait_until(exported)
    assert found is not None
    document, stalled, retry = found
    assert condition(document, "Stalled")["status"] == "True" and "HTTP 404" in document["lastError"]
    assert stalled == 1
    assert retry == parse_time(document["nextAttemptAt"])

    put(node.manifests, app_manifest(node, http, deployment="v2"))
    wait_converged(node, "site", "v2")
    assert daemon.samples("tether_application_stalled", name="site") == 0
    assert 'tether_next_attempt_timestamp_seconds{name="site"}' not in daemon.scrape()


def test_a_bump_to_a_good_version_is_deployed_at_once_despite_the_back_off_of_a_failing_one(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    http.serve("/site/v1.tar.gz", support.Reply(404, b"no such artifact"))
    serve(http, "site", "v2")
    put(node.manifests, app_manifest(node, http))
    start()
    failed = wait_until(lambda: (d := read_status(node, "site")) and d.get("nextAttemptAt") and d)

    put(node.manifests, app_manifest(node, http, deployment="v2"))
    wait_converged(node, "site", "v2")

    assert time.time() < parse_time(failed["nextAttemptAt"]), "v2 waited for the back-off of v1"
    assert status_of(node, "site")["nextAttemptAt"] is None
    assert len(requested(http, "/site/v1.tar.gz")) == 1


def test_a_bump_is_not_held_up_by_the_download_retries_of_an_older_version(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    http.serve("/site/v1.tar.gz", support.Reply(503, b"try again later"))
    serve(http, "site", "v2")
    put(node.manifests, app_manifest(node, http))
    daemon = start("--shutdown-grace", "1")
    daemon.wait_for_log(r"Attempt 1 failed: .*HTTP 503")

    put(node.manifests, app_manifest(node, http, deployment="v2"))
    wait_converged(node, "site", "v2", timeout=60)

    paths = [path for path, _ in list(http.requests)]
    before_v2 = paths[:paths.index("/site/v2.tar.gz")].count("/site/v1.tar.gz")
    assert before_v2 <= 2, f"v2 was fetched only after v1 had been tried {before_v2} times"


# ---------------------------------------------------------------- 11. hand-made drift


PERSISTENT = [support.Member("site/.mtree", b"/set type=dir\n.\n    logs\n    ..\n..\n")]


def site_with_data(version: str) -> bytes:
    return support.tar_bytes(support.site(version) + PERSISTENT)


def drifted(node: support.Node, name: str, kind: str) -> bool:
    document = read_status(node, name) or {}
    return bool(document.get("drift", {}).get(kind)) and condition(document, "Drifted")["status"] == "True"


def test_hand_made_drift_is_corrected_when_the_policy_is_correct(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    for version in ("v1", "v2"):
        http.serve(f"/site/{version}.tar.gz", site_with_data(version))
    put(node.manifests, app_manifest(node, http, deployment="v1"))
    daemon = start()
    wait_converged(node, "site", "v1")
    put(node.manifests, app_manifest(node, http, deployment="v2"))
    wait_converged(node, "site", "v2")
    app = node.apps / "site"
    assert os.readlink(app / "v2" / "logs") == str(app / "persistent-data" / "logs")

    subprocess.run(["ln", "-sfn", str(app / "v1"), str(app / "current")], check=True)  # current drift
    os.unlink(app / "v2" / "logs")  # links drift
    (app / "v2" / "index.html").write_text("defaced\n")  # content drift: reported, never rewritten
    daemon.signal(signal.SIGHUP)

    wait_until(lambda: current(app) == "v2" and os.path.islink(app / "v2" / "logs"))
    assert os.readlink(app / "v2" / "logs") == str(app / "persistent-data" / "logs")
    assert (app / "v2" / "index.html").read_text() == "defaced\n"


def test_hand_made_drift_is_only_reported_when_the_policy_is_report(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    for version in ("v1", "v2"):
        http.serve(f"/site/{version}.tar.gz", site_with_data(version))
    put(node.manifests, app_manifest(node, http, deployment="v1", drift="report"))
    daemon = start("--content-check-interval", "0")
    wait_converged(node, "site", "v1")
    put(node.manifests, app_manifest(node, http, deployment="v2", drift="report"))
    wait_converged(node, "site", "v2")
    app = node.apps / "site"

    subprocess.run(["ln", "-sfn", str(app / "v1"), str(app / "current")], check=True)
    (app / "v2" / "index.html").write_text("defaced\n")
    daemon.signal(signal.SIGHUP)

    wait_until(lambda: drifted(node, "site", "current"))
    assert current(app) == "v1", "drift: report must not correct"
    assert daemon.samples("tether_drift", name="site", type="current") == 1
    ready = condition(status_of(node, "site"))  # the active deployment is not the one desired: not Ready
    assert (ready["status"], ready["reason"]) == ("False", "DriftReported")
    assert "spec.drift is report" in ready["message"] and "`tether reconcile site`" in ready["message"]
    subprocess.run(["ln", "-sfn", str(app / "v2"), str(app / "current")], check=True)
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: drifted(node, "site", "content"))
    assert status_of(node, "site")["drift"]["driftedFiles"] == 1
    assert "index.html" in condition(status_of(node, "site"), "Drifted")["message"]
    assert daemon.samples("tether_drifted_files", name="site") == 1
    assert condition(status_of(node, "site"))["status"] == "True", "changed files alone leave it Ready"


def test_a_deployment_that_fails_or_never_happened_is_not_drift(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    serve(http, "site", "v1")
    put(node.manifests, app_manifest(node, http, name="site", deployment="v1"))
    put(node.manifests, app_manifest(node, http, name="missing", deployment="v1"))  # 404: never deployed
    put(node.manifests, app_manifest(node, http, name="paused", deployment="v1", suspend=True))
    daemon = start()
    wait_converged(node, "site", "v1")
    put(node.manifests, app_manifest(node, http, name="site", deployment="v2"))  # 404 too: v1 stays active

    wait_until(lambda: condition(read_status(node, "site"))["reason"] not in ("Ready", "Unknown", None)
               and (read_status(node, "site") or {}).get("desired") == "v2")
    wait_until(lambda: read_status(node, "missing") and read_status(node, "paused"))
    for name in ("site", "missing", "paused"):
        document = status_of(node, name)
        assert not any(v for k, v in document.get("drift", {}).items() if k != "driftedFiles"), (name, document)
        assert condition(document, "Drifted")["status"] != "True", name
        for kind in ("current", "deployment", "links", "content"):
            assert daemon.samples("tether_drift", name=name, type=kind) == 0, (name, kind)
    assert current(node.apps / "site") == "v1"


def test_status_says_reconciling_while_a_pass_works_and_not_after(
        node: support.Node, http: support.HttpServer, start: Start, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    hook = f"#!/bin/sh\nwhile [ ! -e {gate} ]; do sleep 0.05; done\n"  # waits until the test opens the gate
    gate.touch()
    running_site(node, http, start, "v2", hooks={"beforeActivate": hook})
    gate.unlink()
    put(node.manifests, app_manifest(node, http, deployment="v2", hooks={"beforeActivate": hook}))

    working = wait_until(lambda: condition(read_status(node, "site"), "Reconciling")["status"] == "True"
                         and read_status(node, "site"))
    gate.touch()
    wait_converged(node, "site", "v2")

    assert "activate v2" in condition(working, "Reconciling")["message"]  # type: ignore[arg-type]
    assert condition(status_of(node, "site"), "Reconciling")["status"] == "False"


def test_a_hook_still_running_when_the_shutdown_grace_ends_is_killed_with_the_daemon(
        node: support.Node, http: support.HttpServer, start: Start, tmp_path: Path) -> None:
    pid_file = tmp_path / "hook.pid"
    hook = f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 1000\n"
    serve(http, "site", "v1")
    put(node.manifests, app_manifest(node, http, hooks={"beforeActivate": hook}))
    daemon = start("--shutdown-grace", "1")
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip()))  # type: ignore[arg-type]

    assert daemon.stop() == 0
    daemon.wait_for_log(r"killing the hooks still running")

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")  # killed, not yet reaped

    assert wait_until(gone, timeout=10)
    assert current(node.apps / "site") is None, "the hook never finished, so nothing was activated"
