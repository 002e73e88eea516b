"""The artifact cache's copy: held in memory up to a size and written once the deployment is durable, or written
to a partial file as it downloads; never a partial file left behind."""

from __future__ import annotations

import errno
import gc
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from controller import fsutil
from controller.artifacts import cache, fetching
from controller.engine import reconciling
from controller.manifests import loading
from tests import support


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def _syncs_seeing(directory: Path, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The listing of `directory` at each sync of a file system from now on (the sync itself still runs)."""
    seen: list[list[str]] = []
    sync = fsutil.sync_filesystem

    def observed_sync(path: str) -> None:
        seen.append(_listing(directory))
        sync(path)

    monkeypatch.setattr(fsutil, "sync_filesystem", observed_sync)
    return seen


NEEDED = 10 + 3 * cache.CHUNK_COST  # what the three chunks below cost held in memory


@pytest.mark.parametrize("held", [0, NEEDED - 1, NEEDED, 10**6])
def test_the_copy_is_the_downloaded_bytes_whether_held_or_spilled(tmp_path: Path, held: int) -> None:
    entry = cache.Entry(str(tmp_path), "site", "v1", held=held)
    directory = Path(entry.directory)
    with entry.writer() as sink:
        for chunk in (b"abc", b"defg", b"hij"):
            sink.write(chunk)
        spilled = held < NEEDED
        names = _listing(directory)
        assert len(names) == (1 if spilled else 0) and all(name.startswith(".partial-") for name in names)
        entry.keep()
        assert _listing(directory) == (["v1.artifact"] if spilled else [])  # a spilled copy is in place now
    entry.store()
    assert Path(entry.path).read_bytes() == b"abcdefghij"
    assert stat.S_IMODE(os.stat(entry.path).st_mode) == 0o600  # as mkstemp made it before
    assert _listing(directory) == ["v1.artifact"]
    entry.store()  # once only: nothing is held any more
    assert Path(entry.path).read_bytes() == b"abcdefghij"


@pytest.mark.parametrize("held", [0, 1000])
def test_a_copy_not_kept_leaves_nothing_behind(tmp_path: Path, held: int) -> None:
    entry = cache.Entry(str(tmp_path), "site", "v1", held=held)
    with pytest.raises(RuntimeError), entry.writer() as sink:
        sink.write(b"half of an artifact")
        raise RuntimeError("the download broke off")
    entry.store()
    assert _listing(Path(entry.directory)) == []


def test_a_copy_that_cannot_be_stored_is_a_warning_not_a_failure(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    entry = cache.Entry(str(tmp_path), "site", "v1")
    with entry.writer() as sink:
        sink.write(b"artifact")
        entry.keep()
    (tmp_path / "cache").write_text("not a directory")
    with caplog.at_level(logging.WARNING):
        entry.store()
    assert "tether repair` of this deployment will need a redeploy" in caplog.text


@pytest.mark.parametrize("held", [0, cache.HELD_BYTES])
def test_a_deploy_makes_the_tree_durable_without_a_held_copy_then_stores_it(
        node: support.Node, http: support.HttpServer, monkeypatch: pytest.MonkeyPatch, held: int) -> None:
    archive = support.tar_bytes(support.site("1"))
    http.serve("/site.tar.gz", archive)
    app = node.apps / "site"
    support.write_manifest(node.manifests, support.application("site", app, deployment="v1",
                                                               source={"url": http.url("/site.tar.gz")}))
    directory = node.state / "cache" / "site"
    seen = _syncs_seeing(directory, monkeypatch)
    monkeypatch.setattr(cache, "HELD_BYTES", held)
    application = loading.load([str(node.manifests)]).applications["site"]
    result = reconciling.Engine(str(node.state)).reconcile(application)

    assert result.ok, result.error
    assert seen, "the deployment was never synced"
    # held: nothing in the cache while the tree is made durable; spilled: written as it came, synced with the tree
    assert seen[-1] == ([] if held else ["v1.artifact"])
    assert (directory / "v1.artifact").read_bytes() == archive
    assert _listing(directory) == ["v1.artifact"]


def test_a_copy_held_in_memory_is_charged_per_chunk_so_a_byte_at_a_time_spills_early(tmp_path: Path) -> None:
    # A server that sends a byte at a time: each chunk costs an object and a list slot besides its byte.
    held = 100 * (1 + cache.CHUNK_COST)
    entry = cache.Entry(str(tmp_path), "site", "v1", held=held)
    with entry.writer() as sink:
        for _ in range(100):
            sink.write(b"x")
        assert sink.chunks and sink.partial is None  # within what may be held
        sink.write(b"y")
        assert not sink.chunks and sink.partial is not None  # past it: on its way to the cache directory
        for _ in range(1000):
            sink.write(b"z")
        entry.keep()
    entry.store()
    assert Path(entry.path).read_bytes() == b"x" * 100 + b"y" + b"z" * 1000


@pytest.mark.parametrize("held", [0, cache.HELD_BYTES])
def test_a_cache_directory_that_cannot_be_written_drops_the_copy_and_the_deploy_goes_on(
        node: support.Node, http: support.HttpServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, held: int) -> None:
    # Spilled or held, the same outcome: a warning, a complete deployment, no copy (repair says to redeploy).
    http.serve("/site.tar.gz", support.tar_bytes(support.site("1")))
    app = node.apps / "site"
    support.write_manifest(node.manifests, support.application("site", app, deployment="v1",
                                                               source={"url": http.url("/site.tar.gz")}))
    node.state.mkdir(exist_ok=True)
    (node.state / "cache").write_text("not a directory")
    monkeypatch.setattr(cache, "HELD_BYTES", held)
    application = loading.load([str(node.manifests)]).applications["site"]
    with caplog.at_level(logging.WARNING):
        result = reconciling.Engine(str(node.state)).reconcile(application)

    assert result.ok, result.error
    assert os.readlink(app / "current") == str(app / "v1")
    assert "need a redeploy" in caplog.text
    assert (node.state / "cache").read_text() == "not a directory"


def test_a_failed_attempts_copy_is_not_held_through_the_back_off(
        node: support.Node, http: support.HttpServer) -> None:
    archive = support.tar_bytes([support.Member("site/big", os.urandom(4 << 20))])
    http.serve("/site.tar.gz", support.Reply(body=archive, cut_after=len(archive) - 1000), archive)
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source={"url": http.url("/site.tar.gz")}))
    held: list[int] = []  # bytes in any live sink while the retry waits

    def backing_off(seconds: float) -> None:
        held.append(sum(len(chunk) for o in gc.get_objects() if isinstance(o, cache.Sink) for chunk in o.chunks))

    application = loading.load([str(node.manifests)]).applications["site"]
    result = reconciling.Engine(str(node.state), fetcher=fetching.Fetcher(sleep=backing_off)).reconcile(application)

    assert result.ok, result.error
    assert held == [0]


def _file_deploy(node: support.Node, artifact: Path, **spec: object) -> reconciling.Result:
    app = node.apps / "site"
    support.write_manifest(node.manifests, support.application("site", app, deployment="v1",
                                                               source={"url": artifact.as_uri()}, **spec))
    application = loading.load([str(node.manifests)]).applications["site"]
    return reconciling.Engine(str(node.state)).reconcile(application)


@pytest.mark.parametrize("held", [0, cache.HELD_BYTES])
def test_a_file_artifact_is_copied_from_the_file_once_the_tree_is_durable(
        node: support.Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held: int) -> None:
    # Nothing is copied while it is read, at any size: the file itself is, after the sync (which then has no copy
    # of it to write out), in the kernel.
    archive = support.tar_bytes([*support.site("1"), support.Member("site/big.bin", os.urandom(300_000))])
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    directory = node.state / "cache" / "site"
    seen = _syncs_seeing(directory, monkeypatch)
    monkeypatch.setattr(cache, "HELD_BYTES", held)
    opened = set(os.listdir("/proc/self/fd"))
    result = _file_deploy(node, artifact)

    assert result.ok, result.error
    assert seen and all(listing == [] for listing in seen)
    assert (directory / "v1.artifact").read_bytes() == archive
    assert stat.S_IMODE(os.stat(directory / "v1.artifact").st_mode) == 0o600
    assert _listing(directory) == ["v1.artifact"]
    assert set(os.listdir("/proc/self/fd")) <= opened  # the artifact file is not held open after the copy


def test_a_file_artifact_replaced_after_it_was_read_is_copied_as_it_was_read(node: support.Node,
                                                                           tmp_path: Path) -> None:
    # Puppet's way of updating a file: a new one renamed over it. The copy is of the file that was deployed.
    archive = support.tar_bytes(support.site("1"))
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    (tmp_path / "new.tar.gz").write_bytes(support.tar_bytes(support.site("2")))
    result = _file_deploy(node, artifact, hooks={"afterDeploy": f"mv {tmp_path / 'new.tar.gz'} {artifact}"})

    assert result.ok, result.error
    assert (node.state / "cache" / "site" / "v1.artifact").read_bytes() == archive


@pytest.mark.parametrize("change", ["append", "rewrite", "chmod"])
def test_a_file_artifact_changed_in_place_after_it_was_read_is_not_copied(
        node: support.Node, tmp_path: Path, caplog: pytest.LogCaptureFixture, change: str) -> None:
    # What the file holds now is not what was deployed: no copy (repair then says to redeploy), and the deployment
    # is good all the same.
    archive = support.tar_bytes(support.site("1"))
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    command = {"append": f"echo more >> {artifact}", "chmod": f"chmod 600 {artifact}",  # (a stat cannot tell)
               "rewrite": f"printf x | dd of={artifact} bs=1 seek=100 conv=notrunc status=none"}[change]
    with caplog.at_level(logging.WARNING):
        result = _file_deploy(node, artifact, hooks={"afterDeploy": command})

    assert result.ok, result.error
    assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")
    assert _listing(node.state / "cache" / "site") == []
    assert "changed after it was read" in caplog.text and "need a redeploy" in caplog.text


def test_a_failed_file_deploy_does_not_keep_the_artifact_open(node: support.Node, tmp_path: Path) -> None:
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(support.tar_bytes(support.site("1")))
    opened = set(os.listdir("/proc/self/fd"))
    result = _file_deploy(node, artifact, hooks={"afterDeploy": "exit 3"})

    assert not result.ok
    assert set(os.listdir("/proc/self/fd")) <= opened
    assert _listing(node.state / "cache" / "site") == []


@pytest.mark.parametrize("refused", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_a_file_artifact_is_copied_another_way_where_the_kernel_refuses_one(
        node: support.Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: tuple[str, ...]) -> None:
    # copy_file_range(2) refuses two filesystems (EXDEV) and some filesystems do neither it nor sendfile(2) (FUSE
    # ones, say): then sendfile, then through memory. The copy is the same.
    archive = support.tar_bytes([*support.site("1"), support.Member("site/big.bin", os.urandom(3 << 20))])
    artifact = tmp_path / "site.tar.gz"
    artifact.write_bytes(archive)
    calls: list[str] = []

    def refusing(name: str, number: int) -> Callable[..., int]:
        def call(*args: object) -> int:
            calls.append(name)
            raise OSError(number, os.strerror(number))
        return call

    for name in refused:
        monkeypatch.setattr(os, name, refusing(name, errno.EXDEV if name == "copy_file_range" else errno.EINVAL))
    result = _file_deploy(node, artifact)

    assert result.ok, result.error
    assert (node.state / "cache" / "site" / "v1.artifact").read_bytes() == archive
    assert calls == list(refused)  # each tried once, before the next way
