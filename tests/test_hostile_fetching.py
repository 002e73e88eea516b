"""A hostile or broken HTTP server, and hostile secret files (issue 9, items 6, 8, 9 and 11).

The server here is written raw on a socket, so that a test controls every byte:
the status line, the reason phrase, the headers, how much of the body is sent,
how fast, and how the connection ends. Every test drives the real command line
(or the real daemon) as a subprocess.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import socket
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import support, test_daemon

TOKEN = "tK9-Reflected-Secret-4f3e2d1c"
ARTIFACT = support.tar_bytes(support.site("1"))
Answer = Callable[[socket.socket, str], None]  # writes one answer to the request (its request line given)


# ---------------------------------------------------------------- a raw, misbehaving HTTP server


class RawServer:
    """Accepts connections on 127.0.0.1; the n-th request gets `answers[n]` (the last one repeats)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.requests: list[str] = []
        self.headers: list[str] = []
        self.closed_by_client = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, path: str = "/site/v1.tar.gz", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            index = len(self.requests)
            self.requests.append(head.split("\r\n", 1)[0])
            self.headers.append(head)
            answer = self.answers[min(index, len(self.answers) - 1)]
            with contextlib.suppress(OSError):
                answer(conn, self.requests[-1])

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):  # wakes the accepting thread: a closed fd alone leaves it listening
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


@pytest.fixture
def raw() -> Iterator[Callable[..., RawServer]]:
    servers: list[RawServer] = []

    def make(*answers: Answer) -> RawServer:
        servers.append(RawServer(*answers))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def send(text: str, body: bytes = b"") -> Answer:
    """Answer with exactly these bytes: `text` is the status line and headers, without the blank line."""
    return lambda conn, request: conn.sendall(text.encode("latin-1") + b"\r\n\r\n" + body)


def with_body(head: str, body: bytes) -> Answer:
    return send(f"{head}\r\nContent-Length: {len(body)}", body)


def artifact(body: bytes = ARTIFACT) -> Answer:
    return send(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close", body)


def trickle(body: bytes = ARTIFACT, every: float = 1.0, stopped: threading.Event | None = None) -> Answer:
    """Send the headers, then one byte every `every` seconds, until the client goes away."""
    def answer(conn: socket.socket, request: str) -> None:
        try:
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            for byte in body:
                conn.sendall(bytes([byte]))
                readable, _, _ = select.select([conn], [], [], every)
                if readable and not conn.recv(1):
                    break  # the client closed the connection
        finally:
            if stopped is not None:
                stopped.set()
    return answer


# ---------------------------------------------------------------- the node


def manifest(node: support.Node, url: str, headers: dict[str, Any] | None = None, **source: Any) -> None:
    spec_source = {"url": url, **source}
    if headers is not None:
        spec_source["headers"] = headers
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source=spec_source))


def everything_written(node: support.Node) -> Iterator[tuple[Path, bytes]]:
    for root in (node.state, node.apps):
        for file in support.walk_files(root):
            if not file.is_symlink():
                yield file, file.read_bytes()


def forms(token: str) -> list[str]:
    """The forms a reflected secret may take, all of which must be redacted."""
    return [token, token.upper(), token.lower(), urllib.parse.quote(token, safe=""), base64.b64encode(token.encode()).decode()]


def assert_nowhere(node: support.Node, *texts: str, token: str = TOKEN) -> None:
    shown = node.tether("status", "--json").stdout
    for form in forms(token):
        for text in texts:
            assert form.lower() not in text.lower(), (form, text)
        assert form.lower() not in shown.lower(), (form, shown)
        for file, data in everything_written(node):
            assert form.encode().lower() not in data.lower(), (form, file)


# ---------------------------------------------------------------- item 6: reflected secrets


REFLECTIONS: dict[str, Callable[[RawServer], Answer]] = {
    "the reason phrase": lambda s: send(f"HTTP/1.1 401 Bad token {TOKEN}\r\nContent-Length: 0"),
    "the reason phrase, upper-cased": lambda s: send(f"HTTP/1.1 403 BAD TOKEN {TOKEN.upper()}\r\nContent-Length: 0"),
    "the reason phrase, URL-encoded": lambda s: send(
        f"HTTP/1.1 403 bad /{urllib.parse.quote('Bearer ' + TOKEN, safe='')}\r\nContent-Length: 0"),
    "a malformed status line": lambda s: send(f"HTTP/1.1 4x1 token={TOKEN}"),
    "a status line that is not HTTP": lambda s: send(f"{TOKEN} is not welcome here"),
    "a WWW-Authenticate header": lambda s: send(
        f'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer error="invalid_token", token="{TOKEN}"\r\n'
        "Content-Length: 0"),
    "the body of a 4xx": lambda s: with_body("HTTP/1.1 403 Forbidden", f"token {TOKEN} is revoked\n".encode()),
    "a redirect to another host": lambda s: send(
        f"HTTP/1.1 302 Found\r\nLocation: http://localhost:{s.port}/{TOKEN}/v1.tar.gz\r\nContent-Length: 0"),
    "the body of a 5xx": lambda s: with_body("HTTP/1.1 503 Busy", f"<p>{TOKEN} overloaded</p>".encode()),
}


@pytest.mark.parametrize("where", list(REFLECTIONS))
def test_a_token_the_server_reflects_appears_in_no_output_file_or_status(
        node: support.Node, raw: Callable[..., RawServer], tmp_path: Path, where: str) -> None:
    server = raw(send("HTTP/1.1 500 unused"))
    server.answers = [REFLECTIONS[where](server), send(f"HTTP/1.1 404 Not Found {TOKEN}\r\nContent-Length: 0")]
    secret = tmp_path / "token"
    secret.write_text(f"Bearer {TOKEN}\n")
    manifest(node, server.url(), {"Authorization": {"fromFile": str(secret)}})

    run = node.tether("reconcile", "-vv", timeout=90)

    assert run.returncode == 1, run.stderr
    assert "site: failed:" in run.stdout
    assert f"Bearer {TOKEN}" in server.headers[0]  # it was sent, so the server could reflect it
    assert_nowhere(node, run.stdout, run.stderr)
    status = json.loads(node.tether("status", "site", "--json").stdout)
    assert "<redacted>" in status["lastError"], status["lastError"]


@pytest.mark.parametrize("how", ["--header", "--headers-from-stdin"])
def test_a_token_from_the_deploy_command_line_is_redacted_from_what_the_server_reflects(
        node: support.Node, raw: Callable[..., RawServer], how: str) -> None:
    server = raw(send(f"HTTP/1.1 401 Bad token {TOKEN} (was: Bearer {TOKEN})\r\nContent-Length: 0"))
    manifest(node, server.url())
    if how == "--header":
        run = node.tether("deploy", "site", "--header", f"Authorization: Bearer {TOKEN}", "-vv")
    else:
        run = node.tether("deploy", "site", "--headers-from-stdin", "--json", input=f"Authorization: Bearer {TOKEN}\n")

    assert run.returncode == 1, run.stderr
    assert f"Bearer {TOKEN}" in server.headers[0]
    assert "<redacted>" in run.stdout
    assert_nowhere(node, run.stdout, run.stderr)


def test_basic_credentials_are_redacted_decoded_and_encoded(node: support.Node, raw: Callable[..., RawServer]) -> None:
    password = "pa55-Word-Reflected"
    encoded = base64.b64encode(f"deploy:{password}".encode()).decode()
    server = raw(send(f"HTTP/1.1 401 user deploy:{password} ({encoded}) {password}\r\nContent-Length: 0"))
    manifest(node, server.url(), {"Authorization": f"Basic {encoded}"})

    run = node.tether("reconcile")

    assert run.returncode == 1
    for token in (password, encoded):
        assert_nowhere(node, run.stdout, run.stderr, token=token)


def test_server_text_in_errors_has_no_control_characters_and_is_bounded(
        node: support.Node, raw: Callable[..., RawServer]) -> None:
    reason = "\x1b[2J\x1b]0;owned\x07 forged\x9b31m line\x85 " + "x" * 5000  # C0 and C1 controls
    server = raw(send(f"HTTP/1.1 403 {reason}\r\nContent-Length: 0"))
    manifest(node, server.url())

    run = node.tether("reconcile")

    assert run.returncode == 1
    status = json.loads(node.tether("status", "site", "--json").stdout)
    for text in (run.stdout, status["lastError"]):
        assert not any(c in text for c in "\x1b\x07\x9b\x85"), repr(text)
        assert "x" * 300 not in text
    assert "forged" in status["lastError"]


def test_the_daemon_logs_serves_and_stores_no_reflected_token(
        node: support.Node, raw: Callable[..., RawServer], tmp_path: Path) -> None:
    server = raw(send(f"HTTP/1.1 401 Bad token {TOKEN}\r\nContent-Length: 0"))
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    manifest(node, server.url(), {"X-Token": {"fromFile": str(secret)}})
    daemon = test_daemon.Daemon(node, (), None)
    try:
        test_daemon.wait_until(lambda: (test_daemon.read_status(node, "site") or {}).get("lastError"))
        metrics = daemon.scrape()
    finally:
        daemon.stop()
    assert "401" in (test_daemon.read_status(node, "site") or {})["lastError"]
    assert_nowhere(node, daemon.log(), metrics)


def test_status_files_which_carry_error_text_are_not_world_readable(
        node: support.Node, raw: Callable[..., RawServer]) -> None:
    server = raw(send("HTTP/1.1 404 Not Found\r\nContent-Length: 0"))
    manifest(node, server.url())

    node.tether("reconcile")

    mode = stat.S_IMODE((node.state / "status" / "site.json").stat().st_mode)
    assert mode & 0o007 == 0, oct(mode)
    assert json.loads(node.tether("status", "site", "--json").stdout)["name"] == "site"


# ---------------------------------------------------------------- item 9: secret files that are not files


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


def _socket(path: Path) -> str:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    _socket.keep = listener  # type: ignore[attr-defined]  # stays bound for the test
    return str(path)


def _link_to(maker: Callable[[Path], str]) -> Callable[[Path], str]:
    def make(path: Path) -> str:
        target = maker(path.with_name(path.name + "-target"))
        path.symlink_to(target)
        return str(path)
    return make


def _directory(path: Path) -> str:
    path.mkdir()
    return str(path)


NOT_FILES: dict[str, Callable[[Path], str]] = {
    "a FIFO": _fifo,
    "a directory": _directory,
    "/dev/zero": lambda path: "/dev/zero",
    "/dev/urandom": lambda path: "/dev/urandom",
    "a socket": _socket,
    "a symlink to a FIFO": _link_to(_fifo),
    "a symlink to /dev/zero": _link_to(lambda path: "/dev/zero"),
}


@pytest.mark.parametrize("kind", list(NOT_FILES))
def test_a_secret_file_that_is_not_a_regular_file_is_refused_at_once_and_releases_the_lock(
        node: support.Node, http: support.HttpServer, tmp_path: Path, kind: str) -> None:
    url = http.serve("/site/v1.tar.gz", ARTIFACT)
    path = NOT_FILES[kind](tmp_path / "secret")
    manifest(node, url, {"Authorization": {"fromFile": path}})

    started = time.monotonic()
    run = node.tether("reconcile", timeout=30)  # a hang fails here (TimeoutExpired)

    assert time.monotonic() - started < 20
    assert run.returncode == 1, run.stderr
    assert f"reads {path}, which is" in run.stdout and "not a regular file" in run.stdout, run.stdout
    assert "Traceback" not in run.stderr
    assert not (node.apps / "site" / "v1").exists()
    regular = tmp_path / "regular"
    regular.write_text("Bearer fine\n")
    manifest(node, url, {"Authorization": {"fromFile": str(regular)}})
    again = node.tether("reconcile", timeout=30)  # the lock was released
    assert again.returncode == 0, again.stdout + again.stderr
    assert test_daemon.current(node.apps / "site") == "v1"


def test_a_secret_file_reached_through_a_symlink_is_read(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    url = http.serve("/site/v1.tar.gz", ARTIFACT)
    data = tmp_path / "..data"
    data.mkdir()
    (data / "token").write_text("Bearer linked-secret\n")
    (tmp_path / "token").symlink_to(data / "token")  # how Kubernetes-style secret mounts look
    manifest(node, url, {"Authorization": {"fromFile": str(tmp_path / "token")}})

    run = node.tether("reconcile", timeout=30)

    assert run.returncode == 0, run.stdout + run.stderr
    assert test_daemon.requested(http, "/site/v1.tar.gz")[0]["Authorization"] == "Bearer linked-secret"


def test_an_artifact_url_naming_a_fifo_is_refused_without_hanging(node: support.Node, tmp_path: Path) -> None:
    fifo = tmp_path / "artifact.tar.gz"
    os.mkfifo(fifo)
    manifest(node, f"file://{fifo}")

    run = node.tether("reconcile", timeout=30)

    assert run.returncode == 1
    assert "is not a regular file" in run.stdout


# ---------------------------------------------------------------- item 11: a body cut short is retried


def half_then_close(body: bytes = ARTIFACT) -> Answer:
    def answer(conn: socket.socket, request: str) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
        conn.shutdown(socket.SHUT_WR)  # a clean FIN, no reset
    return answer


def chunked_cut(body: bytes = ARTIFACT) -> Answer:
    def answer(conn: socket.socket, request: str) -> None:
        half = body[: len(body) // 2]
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + f"{len(half):x}\r\n".encode() + half
                     + b"\r\n")
        conn.shutdown(socket.SHUT_WR)  # no last chunk
    return answer


def reset_midway(body: bytes = ARTIFACT) -> Answer:
    def answer(conn: socket.socket, request: str) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    return answer


@pytest.mark.parametrize("cut", [half_then_close, chunked_cut, reset_midway],
                         ids=["a clean close before Content-Length", "a chunked body ending early", "a reset"])
def test_a_download_cut_short_by_the_connection_is_retried_and_succeeds(
        node: support.Node, raw: Callable[..., RawServer], cut: Callable[[], Answer]) -> None:
    server = raw(cut(), artifact())
    manifest(node, server.url())

    run = node.tether("reconcile", "-v", timeout=60)

    assert run.returncode == 0, run.stdout + run.stderr
    assert len(server.requests) == 2
    assert test_daemon.current(node.apps / "site") == "v1"


@pytest.mark.parametrize("length", [True, False], ids=["with its full Content-Length", "without a Content-Length"])
def test_an_archive_that_is_itself_truncated_is_refused_without_retrying(
        node: support.Node, raw: Callable[..., RawServer], length: bool) -> None:
    truncated = ARTIFACT[: len(ARTIFACT) // 2]
    header = f"Content-Length: {len(truncated)}" if length else "Connection: close"
    server = raw(send(f"HTTP/1.1 200 OK\r\n{header}", truncated))
    manifest(node, server.url())

    run = node.tether("reconcile", timeout=60)

    assert run.returncode == 1
    assert "truncated" in run.stdout
    assert len(server.requests) == 1
    status = json.loads(node.tether("status", "site", "--json").stdout)
    assert test_daemon.condition(status, "Stalled")["status"] == "True"


# ---------------------------------------------------------------- item 8: trickles and stalls


def test_a_trickling_download_stalls_after_stall_seconds_and_the_retry_succeeds(
        node: support.Node, raw: Callable[..., RawServer]) -> None:
    server = raw(trickle(), artifact())
    manifest(node, server.url(), stallSeconds=2)

    started = time.monotonic()
    run = node.tether("reconcile", "-v", timeout=60)

    assert run.returncode == 0, run.stdout + run.stderr
    assert time.monotonic() - started < 15
    assert "stalled" in run.stderr and "bytes in the last 2 seconds" in run.stderr, run.stderr
    assert len(server.requests) == 2


def test_a_download_that_trickles_every_time_fails_as_temporary(
        node: support.Node, raw: Callable[..., RawServer]) -> None:
    server = raw(trickle())
    manifest(node, server.url(), stallSeconds=1)

    run = node.tether("reconcile", timeout=90)

    assert run.returncode == 1
    assert "stalled" in run.stdout
    status = json.loads(node.tether("status", "site", "--json").stdout)
    assert test_daemon.condition(status, "Stalled")["status"] == "False"  # temporary: retried
    assert len(server.requests) > 1
    assert not (node.apps / "site" / "v1").exists()


def trickling_site(node: support.Node, raw: Callable[..., RawServer], http: support.HttpServer,
                   stopped: threading.Event) -> tuple[RawServer, test_daemon.Daemon]:
    """A daemon whose new application `site` trickles v1 (stallSeconds high); returns once its status says so."""
    server = raw(trickle(stopped=stopped))
    manifest(node, server.url())
    daemon = test_daemon.Daemon(node, (), None)
    document = test_daemon.wait_until(
        lambda: test_daemon.condition(test_daemon.read_status(node, "site"), "Reconciling").get("status") == "True"
        and test_daemon.read_status(node, "site"), timeout=20)
    message = test_daemon.condition(document, "Reconciling")["message"]
    assert "fetching v1 from" in message and str(server.port) in message, message
    test_daemon.wait_until(lambda: server.requests, timeout=20)
    return server, daemon


def test_a_manifest_change_cancels_a_trickling_download_and_the_new_deployment_lands(
        node: support.Node, raw: Callable[..., RawServer], http: support.HttpServer) -> None:
    stopped = threading.Event()
    server, daemon = trickling_site(node, raw, http, stopped)
    try:
        v2 = http.serve("/site/v2.tar.gz", support.tar_bytes(support.site("2")))
        test_daemon.put(node.manifests, support.application("site", node.apps / "site", deployment="v2",
                                                            source={"url": v2}))
        changed = time.monotonic()
        test_daemon.wait_converged(node, "site", "v2", timeout=15)
        assert time.monotonic() - changed < 10
        assert stopped.wait(5), "the trickling connection was not closed"
    finally:
        daemon.stop()
    assert not (node.apps / "site" / "v1").exists()
    assert sorted(p.name for p in (node.apps / "site").iterdir() if not p.name.startswith(".")) == ["current", "v2"]
    assert len(server.requests) == 1


def test_a_removed_manifest_cancels_its_trickling_download(
        node: support.Node, raw: Callable[..., RawServer], http: support.HttpServer) -> None:
    stopped = threading.Event()
    _, daemon = trickling_site(node, raw, http, stopped)
    try:
        (node.manifests / "site.yaml").unlink()
        assert stopped.wait(10), "the download went on after the manifest was removed"
    finally:
        daemon.stop()
    assert not (node.apps / "site" / "v1").exists()


def test_the_daemon_stops_promptly_during_a_trickling_download(
        node: support.Node, raw: Callable[..., RawServer], http: support.HttpServer) -> None:
    stopped = threading.Event()
    _, daemon = trickling_site(node, raw, http, stopped)
    began = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - began < 10  # not the 30 s shutdown grace
    assert not (node.apps / "site" / "v1").exists()
