"""A file:// artifact's copy in the cache, taken from the file after the tree's syncfs (controller/artifacts/cache.py),
attacked: the file changed, replaced, lying about its size; a full or planted cache; descriptors across failures,
retries and the daemon; a kill during the copy. And the digest list, written just before that syncfs."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import errors, fsutil
from controller.artifacts import cache, fetching
from controller.engine import fetch_attempt, reconciling
from controller.manifests import loading
from controller.tree import digests, drift, owners
from tests import support


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def _app(node: support.Node, artifact: Path, deployment: str = "v1", **spec: object) -> None:
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment=deployment,
                                                               source={"url": artifact.as_uri()}, **spec))


def _reconcile(node: support.Node, engine: reconciling.Engine | None = None) -> reconciling.Result:
    application = loading.load([str(node.manifests)]).applications["site"]
    return (engine or reconciling.Engine(str(node.state))).reconcile(application)


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, mode: str = "0755") -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (these tests run as root): {done.stderr}"
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# ------------------------------------------------------------------ what is copied


def test_a_regular_file_whose_st_size_is_not_its_length_is_not_cached_as_a_wrong_copy(tmp_path: Path,
                                                                                      caplog: pytest.LogCaptureFixture) -> None:
    # /proc (and FUSE filesystems with direct_io, say) report st_size 0 for a file that reads as N bytes: a copy
    # of st_size bytes would not be what the download hashed.
    entry = cache.Entry(str(tmp_path), "site", "v1")
    with entry.writer() as sink, fetching.Fetcher().open("file:///proc/self/status", {}, max_bytes=1 << 20,
                                                          sink=sink) as download:
        read = b""
        while chunk := download.read(65536):
            read += chunk
        entry.keep()
    with caplog.at_level(logging.WARNING):
        entry.store()
    assert read
    cached = Path(entry.path)
    assert not cached.exists() or cached.read_bytes() == read, \
        f"cached {cached.stat().st_size} bytes for a download of {len(read)} bytes, no warning: {caplog.text!r}"


def test_an_in_place_rewrite_keeping_size_and_mtime_is_not_cached_silently(node: support.Node, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    # cp -p / rsync -t --inplace / a reproducible build (SOURCE_DATE_EPOCH) writing into the same file: same size,
    # same mtime, other bytes; its ctime tells. (`tether repair` would catch it by the sha256: see the test below.)
    archive = support.tar_bytes(support.site("1"))
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    os.utime(artifact, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    hook = (f"printf x | dd of={artifact} bs=1 seek=100 conv=notrunc status=none && "
            f"touch -d @1700000000 {artifact}")
    _app(node, artifact, hooks={"afterDeploy": hook})
    with caplog.at_level(logging.WARNING):
        result = _reconcile(node)

    assert result.ok, result.error
    cached = node.state / "cache" / "site" / "v1.artifact"
    assert not cached.exists() or cached.read_bytes() == archive, "a copy of other bytes, stored without a warning"
    assert "changed" in caplog.text


def test_repair_refuses_the_wrong_copy_an_unnoticed_in_place_rewrite_leaves(node: support.Node,
                                                                            tmp_path: Path) -> None:
    # The safety net: a wrong copy is never used. (A rewrite that also puts the ctime back is beyond a stat.)
    archive = support.tar_bytes(support.site("1"))
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    os.utime(artifact, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))
    _app(node, artifact)
    assert _reconcile(node).ok
    copy = node.state / "cache" / "site" / "v1.artifact"
    copy.write_bytes(copy.read_bytes()[:100] + b"x" + copy.read_bytes()[101:])
    (node.apps / "site" / "v1" / "index.html").write_text("edited")
    app = loading.load([str(node.manifests)]).applications["site"]
    content = drift.check_content(app.path, "v1", app.drift_ignore)
    with pytest.raises(errors.PermanentError, match="redeploy"):
        drift.repair_content(app, "v1", str(node.state), owners.resolve(app), content)
    assert (node.apps / "site" / "v1" / "index.html").read_text() == "edited"


@pytest.mark.parametrize("change", ["rename-over", "delete", "symlink-swap"])
def test_a_file_artifact_replaced_or_deleted_after_the_read_is_copied_as_read(
        node: support.Node, tmp_path: Path, change: str) -> None:
    archive = support.tar_bytes([*support.site("1"), support.Member("site/big.bin", os.urandom(1 << 20))])
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    other = tmp_path / "other.tar.gz"
    other.write_bytes(support.tar_bytes(support.site("2")))
    hook = {"rename-over": f"mv {other} {artifact}", "delete": f"rm {artifact}",
            "symlink-swap": f"ln -sf {other} {artifact}.new && mv -T {artifact}.new {artifact}"}[change]
    _app(node, artifact, hooks={"afterDeploy": hook})
    opened = _fds()
    result = _reconcile(node)

    assert result.ok, result.error
    assert (node.state / "cache" / "site" / "v1.artifact").read_bytes() == archive
    assert _fds() <= opened


# ------------------------------------------------------------------ a full disk, an unusable cache


@pytest.mark.parametrize("sendfile", ["kernel", "refused"])
def test_a_full_cache_filesystem_is_a_warning_and_leaves_no_temp_file_or_descriptor(
        node: support.Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, sendfile: str) -> None:
    archive = support.tar_bytes([*support.site("1"), support.Member("site/big.bin", os.urandom(600_000))])
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    if sendfile == "refused":
        def refused(*args: object) -> int:
            raise OSError(errno.EINVAL, "Invalid argument")
        monkeypatch.setattr(os, "sendfile", refused)
        monkeypatch.setattr(os, "copy_file_range", refused)
    _app(node, artifact)
    with _tmpfs(node.state / "cache", "256k", "0700") as mounted:
        opened = _fds()
        with caplog.at_level(logging.WARNING):
            result = _reconcile(node)
        assert result.ok, result.error
        assert "No space left" in caplog.text and "need a redeploy" in caplog.text
        assert _listing(mounted / "site") == []
        assert _fds() <= opened
        assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")


def test_a_cached_artifact_planted_as_a_symlink_is_replaced_not_followed(node: support.Node, tmp_path: Path) -> None:
    artifact = tmp_path / "site.tar.gz"
    archive = support.tar_bytes(support.site("1"))
    artifact.write_bytes(archive)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (node.state / "cache" / "site").mkdir(parents=True)
    (node.state / "cache" / "site" / "v1.artifact").symlink_to(victim)
    _app(node, artifact)
    assert _reconcile(node).ok
    assert victim.read_text() == "keep me"
    cached = node.state / "cache" / "site" / "v1.artifact"
    assert not cached.is_symlink() and cached.read_bytes() == archive


@pytest.mark.parametrize("planted", ["cache", "cache/site"])
@pytest.mark.parametrize("copy", ["file", "held", "spilled"])
def test_a_cache_directory_planted_as_a_symlink_is_never_written_through(
        node: support.Node, http: support.HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, planted: str, copy: str) -> None:
    # Whichever way the copy is taken (the file itself, held in memory, written as it downloads): a warning, a good
    # deployment, and nothing written where the link points.
    archive = support.tar_bytes([*support.site("1"), support.Member("site/big.bin", os.urandom(200_000))])
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    http.serve("/site.tar.gz", archive)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "site").mkdir(parents=True)
    link = node.state / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(elsewhere if planted == "cache" else elsewhere / "site")
    monkeypatch.setattr(cache, "HELD_BYTES", 0 if copy == "spilled" else cache.HELD_BYTES)
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1",
        source={"url": artifact.as_uri() if copy == "file" else http.url("/site.tar.gz")}))
    with caplog.at_level(logging.WARNING):
        result = _reconcile(node)

    assert result.ok, result.error
    assert "is a symlink or not a directory" in caplog.text and "need a redeploy" in caplog.text
    assert _listing(elsewhere / "site") == []
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in _fds() if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [path for path in held if path.startswith((str(elsewhere), str(node.state), str(artifact)))]


def test_pruning_never_removes_through_a_cache_directory_planted_as_a_symlink(
        node: support.Node, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.conf").write_text("keep me")
    (node.state / "cache").mkdir(parents=True)
    (node.state / "cache" / "site").symlink_to(elsewhere)
    with caplog.at_level(logging.WARNING):
        cache.prune(str(node.state), "site", keep={"v1"})

    assert (elsewhere / "precious.conf").read_text() == "keep me"
    assert "not pruned" in caplog.text


def test_repair_does_not_read_a_cached_artifact_planted_as_a_symlink(node: support.Node, tmp_path: Path) -> None:
    # Even one that points to the very bytes deployed: the cache holds files tether wrote, nothing else.
    archive = support.tar_bytes(support.site("1"))
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    _app(node, artifact)
    assert _reconcile(node).ok
    copy = node.state / "cache" / "site" / "v1.artifact"
    copy.unlink()
    copy.symlink_to(artifact)
    (node.apps / "site" / "v1" / "index.html").write_text("edited")
    app = loading.load([str(node.manifests)]).applications["site"]
    content = drift.check_content(app.path, "v1", app.drift_ignore)
    with pytest.raises(errors.PermanentError, match=r"unreadable.*redeploy"):
        drift.repair_content(app, "v1", str(node.state), owners.resolve(app), content)
    assert (node.apps / "site" / "v1" / "index.html").read_text() == "edited"


# ------------------------------------------------------------------ descriptors


def test_no_descriptor_is_left_by_a_kept_attempt_that_fails_later_and_is_retried(
        node: support.Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = support.tar_bytes(support.site("1"))
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    move = fetch_attempt._move_entries
    calls: list[int] = []
    live: list[int] = []

    def failing_once(*args: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise errors.FetchError("injected after keep()")
        live.append(len(_fds()))
        move(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(fetch_attempt, "_move_entries", failing_once)
    _app(node, artifact)
    opened = _fds()
    engine = reconciling.Engine(str(node.state), fetcher=fetching.Fetcher(sleep=lambda s: None))
    result = _reconcile(node, engine)

    assert result.ok, result.error
    assert len(calls) == 2
    assert (node.state / "cache" / "site" / "v1.artifact").read_bytes() == archive
    assert _fds() <= opened


@pytest.mark.parametrize("failure", ["conflict", "checksum", "afterDeploy"])
def test_many_failed_file_deploys_in_one_engine_leak_no_descriptor(node: support.Node, tmp_path: Path,
                                                                   failure: str) -> None:
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(support.tar_bytes(support.site("1")))
    spec: dict[str, object] = {
        "conflict": {"hooks": {"beforeDeploy": 'echo x > "$DEPLOYMENT_PATH/index.html" || '
                                               'echo x > "$APPLICATION_PATH/$DEPLOYMENT_NAME/index.html"'}},
        "checksum": {},
        "afterDeploy": {"hooks": {"afterDeploy": "exit 3"}},
    }[failure]  # type: ignore[assignment]
    source = {"url": artifact.as_uri(), **({"sha256": "0" * 64} if failure == "checksum" else {})}
    engine = reconciling.Engine(str(node.state), fetcher=fetching.Fetcher(sleep=lambda s: None, attempts=1))
    opened = _fds()
    for n in range(5):
        support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment=f"v{n}",
                                                                   source=source, **spec))
        result = _reconcile(node, engine)
        assert not result.ok
    assert _fds() <= opened


def test_the_daemon_holds_no_artifact_descriptor_after_passes(node: support.Node, tmp_path: Path) -> None:
    from tests.test_daemon import Daemon, wait_until

    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(support.tar_bytes(support.site("1")))
    records = node.apps / "site" / ".tether" / "deployments"
    _app(node, artifact, "v0")
    daemon = Daemon(node, (), None)
    try:
        pid = daemon.pid
        wait_until(lambda: (records / "v0.json").exists() and json.loads((records / "v0.json").read_text())["state"]
                   == "complete", timeout=30, message=daemon.log)
        _app(node, artifact, "v1", hooks={"afterDeploy": "exit 3"})
        wait_until(lambda: "afterDeploy" in daemon.log() and "v1" in daemon.log(), timeout=30, message=daemon.log)
        _app(node, artifact, "v2")
        wait_until(lambda: (records / "v2.json").exists() and json.loads((records / "v2.json").read_text())["state"]
                   == "complete", timeout=60, message=daemon.log)
        held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert not [link for link in held if link.startswith(str(artifact))], held
        assert sorted(os.listdir(node.state / "cache" / "site")) == ["v0.artifact", "v2.artifact"] or \
            "v2.artifact" in os.listdir(node.state / "cache" / "site")
    finally:
        daemon.stop()


# ------------------------------------------------------------------ a crash while the copy is written


def test_a_kill_while_the_copy_is_written_leaves_no_temp_file_after_the_next_pass(node: support.Node,
                                                                                 tmp_path: Path) -> None:
    artifact = tmp_path / "site.tar.gz"
    archive = support.tar_bytes([*support.site("1"), support.Member("site/big.bin", os.urandom(1 << 20))])
    artifact.write_bytes(archive)
    _app(node, artifact)
    script = textwrap.dedent("""
        import os, signal, sys, runpy
        from controller.artifacts import cache
        def killed(fd, source, size):
            os.write(fd, b"x" * 4096)
            os.kill(os.getpid(), signal.SIGKILL)
        cache._send = killed
        sys.argv = ["tether", *sys.argv[1:]]
        runpy.run_module("controller", run_name="__main__")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    killed = subprocess.run([sys.executable, "-c", script, "reconcile", "--manifests", str(node.manifests),
                             "--state-dir", str(node.state)], capture_output=True, text=True, env=env, cwd=node.root)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert [n for n in _listing(node.state / "cache" / "site") if n.startswith(".tmp-")]
    again = node.tether("reconcile")
    assert again.returncode == 0, again.stderr
    assert _listing(node.state / "cache" / "site") == ["v1.artifact"]
    assert (node.state / "cache" / "site" / "v1.artifact").read_bytes() == archive


# ------------------------------------------------------------------ the digest list's durability (ec50007)


def test_the_digest_list_is_fsynced_when_its_directory_is_not_on_the_trees_filesystem(
        node: support.Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A mount on <app>/.tether/digests: the syncfs of the tree does not cover the list there, so it is fsynced.
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(support.tar_bytes(support.site("1")))
    _app(node, artifact)
    digests_dir = node.apps / "site" / ".tether" / "digests"
    writes: list[tuple[str, bool]] = []
    atomic_write = fsutil.atomic_write

    def spying(path: str, data: object, mode: int = 0o644, *, durable: bool = True) -> None:
        writes.append((path, durable))
        atomic_write(path, data, mode, durable=durable)  # type: ignore[arg-type]

    with _tmpfs(digests_dir, "1m"):
        monkeypatch.setattr(fsutil, "atomic_write", spying)
        result = _reconcile(node)
        assert result.ok, result.error
        assert os.stat(digests_dir).st_dev != os.stat(node.apps / "site" / "v1").st_dev
        listed = [durable for path, durable in writes if path == digests.digests_path(str(node.apps / "site"), "v1")]
        assert listed == [True], f"the digest list on another filesystem written with durable={listed}"


def test_the_digest_list_beside_the_tree_is_synced_before_the_record_says_complete(
        node: support.Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(support.tar_bytes(support.site("1")))
    _app(node, artifact)
    events: list[str] = []
    atomic_write, sync = fsutil.atomic_write, fsutil.sync_filesystem

    def spying(path: str, data: object, mode: int = 0o644, *, durable: bool = True) -> None:
        if "/digests/" in path or "/deployments/" in path:
            body = data if isinstance(data, bytes) else b"".join(data)  # type: ignore[arg-type]
            state = json.loads(body).get("state", "") if "/deployments/" in path else ""
            events.append(f"write {'digests' if '/digests/' in path else 'record'} {state} durable={durable}")
        atomic_write(path, data, mode, durable=durable)  # type: ignore[arg-type]

    def syncing(path: str) -> None:
        events.append("syncfs")
        sync(path)

    monkeypatch.setattr(fsutil, "atomic_write", spying)
    monkeypatch.setattr(fsutil, "sync_filesystem", syncing)
    assert _reconcile(node).ok
    written = events.index("write digests  durable=False")
    complete = events.index("write record complete durable=True")
    assert "syncfs" in events[written:complete]


# ------------------------------------------------------------------ what else may be planted in the cache (second review)


def test_prune_with_a_directory_named_like_an_artifact_is_a_warning(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "cache" / "site" / "v0.artifact").mkdir(parents=True)
    (tmp_path / "cache" / "site" / "junk").mkdir()
    before = _fds()
    with caplog.at_level(logging.WARNING):
        cache.prune(str(tmp_path), "site", keep={"v1"})
    assert _fds() == before
    assert "not pruned" in caplog.text


def test_a_reconcile_does_not_fail_because_of_a_directory_in_the_cache(node: support.Node, tmp_path: Path) -> None:
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source={"url": artifact.as_uri()}))
    (node.state / "cache" / "site" / "stray").mkdir(parents=True)
    application = loading.load([str(node.manifests)]).applications["site"]
    result = reconciling.Engine(str(node.state)).reconcile(application)
    assert result.ok


def _entry_planted(tmp_path: Path, plant: str) -> cache.Entry:
    directory = tmp_path / "cache" / "site"
    directory.mkdir(parents=True)
    if plant == "fifo":
        os.mkfifo(directory / "v1.artifact")
    else:
        (directory / "v1.artifact").mkdir()
    return cache.Entry(str(tmp_path), "site", "v1")


@pytest.mark.parametrize("plant", ["fifo", "dir"])
def test_opening_a_planted_non_file_is_refused_without_blocking_or_leaking(tmp_path: Path, plant: str) -> None:
    entry = _entry_planted(tmp_path, plant)
    before = _fds()

    def alarm(*_: object) -> None:
        raise TimeoutError("Entry.open blocked on a planted FIFO")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(3)
    try:
        with pytest.raises(OSError) as raised:
            entry.open().close()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert not isinstance(raised.value, TimeoutError)
    assert _fds() == before


def test_repair_with_a_fifo_planted_as_the_cached_artifact_fails_clearly(node: support.Node, tmp_path: Path) -> None:
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source={"url": artifact.as_uri()}))
    app = loading.load([str(node.manifests)]).applications["site"]
    assert reconciling.Engine(str(node.state)).reconcile(app).ok
    copy = node.state / "cache" / "site" / "v1.artifact"
    copy.unlink()
    os.mkfifo(copy)
    (node.apps / "site" / "v1" / "index.html").write_text("edited")
    content = drift.check_content(app.path, "v1", app.drift_ignore)

    def alarm(*_: object) -> None:
        raise TimeoutError("repair blocked on a planted FIFO")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(5)
    try:
        with pytest.raises(errors.PermanentError):
            drift.repair_content(app, "v1", str(node.state), owners.resolve(app), content)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_store_over_a_planted_directory_or_fifo_is_a_warning_and_leaves_nothing(tmp_path: Path) -> None:
    for plant in ("fifo", "dir"):
        base = tmp_path / plant
        entry = _entry_planted(base, plant)
        before = _fds()
        with entry.writer() as sink:
            sink.write(b"x" * 100)
            entry.keep()
        entry.store()
        assert _fds() == before
        assert sorted(os.listdir(base / "cache" / "site")) == ["v1.artifact"]


def test_what_the_cache_creates_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        entry = cache.Entry(str(tmp_path), "site", "v1", held=10)
        with entry.writer() as sink:
            sink.write(b"y" * 100)  # spills to a partial file
            entry.keep()
        entry.store()
    finally:
        os.umask(old)
    for path, mode in ((tmp_path / "cache", 0o700), (tmp_path / "cache" / "site", 0o700),
                       (tmp_path / "cache" / "site" / "v1.artifact", 0o600)):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_a_missing_state_dir_drops_the_copy_and_leaks_nothing(tmp_path: Path) -> None:
    before = _fds()
    entry = cache.Entry(str(tmp_path / "nope"), "site", "v1", held=10)
    with entry.writer() as sink:
        sink.write(b"z" * 100)
        entry.keep()
    entry.store()
    cache.prune(str(tmp_path / "nope"), "site", keep=set())
    with pytest.raises(FileNotFoundError):
        entry.open()
    assert _fds() == before


@pytest.mark.parametrize("where", ["cache", "cache/site"])
@pytest.mark.parametrize("kind", ["symlink", "file", "fifo"])
def test_a_planted_cache_path_is_refused_everywhere_without_leaks(tmp_path: Path, where: str, kind: str) -> None:
    if where == "cache/site":
        (tmp_path / "cache").mkdir(exist_ok=True)
    target = tmp_path / where
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "site").mkdir(parents=True)
    (elsewhere / "site" / "old.artifact").write_text("precious")
    if kind == "symlink":
        target.symlink_to(elsewhere if where == "cache" else elsewhere / "site")
    elif kind == "file":
        target.write_text("")
    else:
        os.mkfifo(target)
    before = _fds()
    entry = cache.Entry(str(tmp_path), "site", "v1", held=10)
    with entry.writer() as sink:
        sink.write(b"z" * 100)
        entry.keep()
    entry.store()
    cache.prune(str(tmp_path), "site", keep=set())
    with pytest.raises(OSError):
        entry.open()
    assert _fds() == before
    assert sorted(os.listdir(elsewhere / "site")) == ["old.artifact"]
