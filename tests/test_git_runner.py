"""git_runner with real git processes: a fetch from a server that never answers ends at once when the pass is
cancelled, or at its time limit; stderr is scrubbed of the secrets sent."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import errors
from controller.artifacts import git_mirror, git_runner


@pytest.fixture
def silent() -> Iterator[tuple[int, threading.Event]]:
    """A loopback listener that accepts connections and never answers; the event is set on the first one."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    connected = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], connected
    listener.close()
    for conn in held:
        conn.close()


def test_a_fetch_that_hangs_ends_promptly_when_the_pass_is_cancelled(tmp_path: Path,
                                                                   silent: tuple[int, threading.Event]) -> None:
    port, connected = silent
    cancel = threading.Event()
    access = git_runner.Access(url=f"http://127.0.0.1:{port}/repo.git")
    with git_runner.Git(git_mirror.mirror_path(str(tmp_path), "m"), access, cancel=cancel) as git:
        git_mirror.ensure(str(tmp_path), "m", git)

        def cancel_once_connected() -> None:
            connected.wait(30)
            cancel.set()

        threading.Thread(target=cancel_once_connected, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(errors.Cancelled):
            git_mirror.fetch_and_resolve(git, "v1")
        assert time.monotonic() - started < 10
        assert connected.is_set()


def test_a_fetch_that_hangs_is_stopped_at_its_time_limit_as_a_temporary_error(
        tmp_path: Path, silent: tuple[int, threading.Event]) -> None:
    port, _ = silent
    access = git_runner.Access(url=f"http://127.0.0.1:{port}/repo.git", headers={"Authorization": "Bearer zzsecretzz"})
    git = git_runner.Git(git_mirror.mirror_path(str(tmp_path), "m"), access, timeout_seconds=1.0)
    with git:
        started = time.monotonic()
        with pytest.raises(errors.TemporaryError) as raised:
            git.run("ls-remote", access.url, network=True, what="listing")
        assert not isinstance(raised.value, errors.Cancelled)
        assert "longer than 1 s" in str(raised.value)
        assert time.monotonic() - started < 10


def test_what_git_prints_is_scrubbed_of_the_headers_sent(tmp_path: Path) -> None:
    access = git_runner.Access(url="file:///nowhere", headers={"Authorization": "Bearer zzsecretzz"})
    with git_runner.Git(git_mirror.mirror_path(str(tmp_path), "m"), access) as git, pytest.raises(errors.TetherError) as raised:
        git_mirror.ensure(str(tmp_path), "m", git)
        git.run("show-ref", "--verify", "refs/heads/Bearer zzsecretzz", what="show-ref")
    assert "zzsecretzz" not in str(raised.value) and "<redacted>" in str(raised.value)
