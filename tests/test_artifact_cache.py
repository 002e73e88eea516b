"""The artifact cache's copy: held in memory up to a size and written once the deployment is durable, or written
to a partial file as it downloads; never a partial file left behind."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from controller import fsutil
from controller.artifacts import cache
from controller.engine import reconciling
from controller.manifests import loading
from tests import support


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory)) if directory.is_dir() else []


@pytest.mark.parametrize("held", [0, 9, 10, 1000])
def test_the_copy_is_the_downloaded_bytes_whether_held_or_spilled(tmp_path: Path, held: int) -> None:
    entry = cache.Entry(str(tmp_path), "site", "v1", held=held)
    directory = Path(entry.directory)
    with entry.writer() as sink:
        for chunk in (b"abc", b"defg", b"hij"):
            sink.write(chunk)
        spilled = held < 10
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
    seen: list[list[str]] = []  # the cache directory at each sync of the file system
    sync = fsutil.sync_filesystem

    def observed_sync(path: str) -> None:
        seen.append(_listing(directory))
        sync(path)

    monkeypatch.setattr(fsutil, "sync_filesystem", observed_sync)
    monkeypatch.setattr(cache, "HELD_BYTES", held)
    application = loading.load([str(node.manifests)]).applications["site"]
    result = reconciling.Engine(str(node.state)).reconcile(application)

    assert result.ok, result.error
    assert seen, "the deployment was never synced"
    # held: nothing in the cache while the tree is made durable; spilled: written as it came, synced with the tree
    assert seen[-1] == ([] if held else ["v1.artifact"])
    assert (directory / "v1.artifact").read_bytes() == archive
    assert _listing(directory) == ["v1.artifact"]
