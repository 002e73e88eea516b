"""Content digests taken while extracting (issue 16): the recorded digest list is the tree's, not the archive's.

The writer hashes each file as its bytes pass; tree.digests takes that digest
only while the file keeps the inode, size, mtime and ctime the writer left, and
reads it back otherwise. These tests make the tree differ from the archive in
every way a hook or a person could, and check the list against a full read-back.
"""

from __future__ import annotations

import io
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from controller import errors, fsutil
from controller.artifacts import archives, extracting, member_writer, readahead
from controller.engine import reconciling
from controller.manifests import loading, model
from controller.tree import digests, drift
from tests import support

HOOK = """\
printf 'rewritten by the hook, same size!' > index.html.new && touch -r index.html index.html.new
cat index.html.new > index.html && touch -r index.html.new index.html && rm index.html.new
printf 'x' >> css/site.css
rm bin/run && printf 'new file' > bin/run
printf 'added' > added.txt
"""


def _files(count: int) -> list[support.Member]:
    return [support.Member("release/", type="dir"), support.Member("release/css/", type="dir"),
            support.Member("release/bin/", type="dir"),
            support.Member("release/index.html", b"<h1>the shipped index page</h1>\n"),
            support.Member("release/css/site.css", b"body { color: black }\n"),
            support.Member("release/bin/run", b"#!/bin/sh\necho run\n", mode=0o755),
            support.Member("release/same.txt", b"shipped"),
            support.Member("release/link.txt", type="symlink", target="same.txt"),
            *[support.Member(f"release/css/f{index}.css", os.urandom(index * 37)) for index in range(count)]]


def _recorded(path: Path, deployment: str) -> dict[str, digests.Entry]:
    document = json.loads(Path(digests.digests_path(str(path), deployment)).read_text())
    return dict(document["entries"])


def _deployed(node: support.Node, http: support.HttpServer, count: int, **spec: Any) -> tuple[Path, dict[str, digests.Entry]]:
    """`tether reconcile` of v1 (the `_files(count)` artifact, `spec` in the manifest): the path and the list."""
    app = node.apps / "site"
    http.serve("/site.tar.gz", support.tar_bytes(_files(count)))
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v1", source={"url": http.url("/site.tar.gz")}, **spec))
    run = node.tether("reconcile")
    assert run.returncode == 0, run.stdout + run.stderr
    return app, _recorded(app, "v1")


def test_the_digest_list_after_a_deploy_equals_a_full_read_back_of_the_tree(
        node: support.Node, http: support.HttpServer) -> None:
    app, recorded = _deployed(node, http, 50)
    assert recorded == digests.scan(str(app / "v1"), lambda rel: False, {})
    assert recorded["index.html"]["sha256"] == support.sha256(b"<h1>the shipped index page</h1>\n")
    assert len([e for e in recorded.values() if e["type"] == "file"]) == 54


def test_the_digest_list_is_made_durable_by_the_sync_of_the_tree_not_by_fsyncs_of_its_own(
        node: support.Node, http: support.HttpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Written just before the sync that makes the deployment durable, on the same file system: that sync covers it.
    listed: list[bool] = []  # whether the whole list was there at each sync
    fsynced: list[str] = []
    sync, fsync = fsutil.sync_filesystem, os.fsync

    def observed_sync(path: str) -> None:
        listed.append(Path(digests.digests_path(str(app), "v1")).is_file())
        sync(path)

    def observed_fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    app = node.apps / "site"
    http.serve("/site.tar.gz", support.tar_bytes(_files(5)))
    support.write_manifest(node.manifests, support.application("site", app, deployment="v1",
                                                               source={"url": http.url("/site.tar.gz")}))
    monkeypatch.setattr(fsutil, "sync_filesystem", observed_sync)
    monkeypatch.setattr(os, "fsync", observed_fsync)
    result = reconciling.Engine(str(node.state)).reconcile(loading.load([str(node.manifests)]).applications["site"])

    assert result.ok, result.error
    assert listed[-1] and len(_recorded(app, "v1")) > 5  # the last sync of the tree came after the list was complete
    assert not [path for path in fsynced if "/digests" in path]


def test_files_an_after_deploy_hook_rewrites_replaces_or_adds_are_recorded_as_the_hook_left_them(
        node: support.Node, http: support.HttpServer) -> None:
    app, recorded = _deployed(node, http, 3, hooks={"afterDeploy": HOOK})
    assert recorded == digests.scan(str(app / "v1"), lambda rel: False, {})
    assert recorded["index.html"]["sha256"] == support.sha256(b"rewritten by the hook, same size!")
    assert recorded["css/site.css"]["sha256"] == support.sha256(b"body { color: black }\nx")
    assert recorded["bin/run"]["sha256"] == support.sha256(b"new file")
    assert recorded["added.txt"]["sha256"] == support.sha256(b"added")
    assert recorded["same.txt"]["sha256"] == support.sha256(b"shipped")


def test_what_a_before_deploy_hook_puts_in_the_new_deployment_is_recorded_with_the_extracted_tree(
        node: support.Node, http: support.HttpServer) -> None:
    # the hook runs in the empty deployment directory before the artifact is moved in: the list is walked then
    app, recorded = _deployed(node, http, 3,
                              hooks={"beforeDeploy": "mkdir made-early && printf early > made-early/by-hook.txt"})
    assert recorded == digests.scan(str(app / "v1"), lambda rel: False, {})
    assert recorded["made-early/by-hook.txt"]["sha256"] == support.sha256(b"early")
    assert recorded["index.html"]["sha256"] == support.sha256(b"<h1>the shipped index page</h1>\n")


@pytest.mark.parametrize("hooked", [False, True])
def test_what_another_process_writes_into_a_deployment_while_it_is_made_is_drift_unless_a_hook_ran(
        node: support.Node, http: support.HttpServer, hooked: bool) -> None:
    # The deployment belongs to spec.user from its creation: a write of theirs before completion is not what
    # tether made. With no hook the list is what the extraction made, so it is drift from the start; after a
    # hook the tree is walked (what the hooks made belongs to the deployment), and it is in the list.
    app = node.apps / "site"
    http.serve("/site.tar.gz", support.tar_bytes(_files(3)))
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v1", source={"url": http.url("/site.tar.gz")},
        **({"hooks": {"afterDeploy": "true"}} if hooked else {})))
    application = loading.load([str(node.manifests)]).applications["site"]

    def meanwhile(step: str) -> None:
        if step == "extracted":  # the artifact is in place, the record not written yet
            (app / "v1" / "cache.db").write_bytes(b"written by the application")
            with (app / "v1" / "index.html").open("ab") as page:
                page.write(b"<!-- edited -->")

    result = reconciling.Engine(str(node.state), checkpoint=meanwhile).reconcile(application)
    assert result.ok, result.error

    content = drift.check_content(str(app), "v1", [])
    if hooked:
        assert content.paths == []
        assert _recorded(app, "v1")["cache.db"]["sha256"] == support.sha256(b"written by the application")
    else:
        assert content.changed == ["index.html"] and content.added == ["cache.db"]


def _extract(tmp_path: Path, data: bytes) -> tuple[Path, dict[str, member_writer.Written]]:
    dest = tmp_path / "tree"
    dest.mkdir()
    made = extracting.Made()
    source = io.BytesIO(data)
    root = extracting.extract(source, str(dest), fmt="auto", strip=None,
                              budget=archives.Budget(model.Limits(), lambda: source.tell()), owner=None,
                              spool_dir=str(tmp_path), made=made)
    return Path(root), made.files


@pytest.mark.parametrize("change", ["same size, mtime put back", "appended", "replaced by a new file",
                                    "chmod only", "hardlinked elsewhere"])
def test_a_digest_from_the_writer_is_used_only_while_the_file_is_untouched(tmp_path: Path, change: str) -> None:
    root, written = _extract(tmp_path, support.tar_bytes(_files(2)))
    assert written["index.html"].sha256 == support.sha256(b"<h1>the shipped index page</h1>\n")
    fake = {rel: file._replace(sha256="planted") for rel, file in written.items()}
    assert digests.scan(str(root), lambda rel: False, {}, fake)["same.txt"]["sha256"] == "planted"  # not read

    target = root / "same.txt"
    before = target.stat()
    if change == "same size, mtime put back":
        target.write_bytes(b"SHIPPED")
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif change == "appended":
        with target.open("ab") as handle:
            handle.write(b"!")
    elif change == "replaced by a new file":
        target.unlink()
        target.write_bytes(b"shipped")
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    elif change == "chmod only":
        target.chmod(0o600)
    else:
        os.link(target, root / "other-name")
    found = digests.scan(str(root), lambda rel: False, {}, fake)

    assert found["same.txt"]["sha256"] != "planted"
    assert found["same.txt"] == digests.scan(str(root), lambda rel: False, {})["same.txt"]


def test_a_failure_on_the_read_ahead_thread_is_raised_to_the_reader_after_the_data_before_it() -> None:
    class Failing:
        def __init__(self) -> None:
            self.chunks = [b"first", b"second"]

        def read(self, size: int = -1) -> bytes:
            if self.chunks:
                return self.chunks.pop(0)
            raise EOFError("the stream ended early")

    reader = readahead.Reader(Failing)
    try:
        assert reader.read(100) == b"first"
        assert reader.read(100) == b"second"
        with pytest.raises(EOFError, match="ended early"):
            reader.read(100)
    finally:
        reader.close()


def test_a_reader_closed_early_stops_its_thread_even_when_the_queue_is_full() -> None:
    class Endless:
        def read(self, size: int = -1) -> bytes:
            return b"x" * size

    before = set(threading.enumerate())
    reader = readahead.Reader(Endless, chunk=1024, depth=2)
    assert reader.read(10) == b"x" * 10
    started = [thread for thread in threading.enumerate() if thread not in before and thread.name == "tether-readahead"]
    reader.close()

    # Its own thread, not a count of all: a thread an earlier test left may end meanwhile.
    assert len(started) == 1 and not started[0].is_alive()


def test_a_truncated_member_read_straight_from_the_stream_is_refused(tmp_path: Path) -> None:
    data = support.tar_bytes([support.Member("big.bin", os.urandom(100_000))], compression="")
    with pytest.raises(errors.ArchiveError, match="truncated"):
        _extract(tmp_path, data[:60_000])


def test_extraction_asks_for_a_flush_each_time_enough_has_been_written(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(member_writer, "FLUSH_BYTES", 1024 * 1024)
    size = member_writer.FLUSH_BYTES // 4  # with FILE_COST, four files are just over FLUSH_BYTES
    data = support.tar_bytes([support.Member(f"f{index}.bin", bytes([index]) * size) for index in range(13)],
                             compression="")
    dest = tmp_path / "tree"
    dest.mkdir()
    asked: list[int] = []

    extracting.extract(io.BytesIO(data), str(dest), fmt="auto", strip=None, owner=None,
                       budget=archives.Budget(model.Limits(max_ratio=1e9), lambda: len(data)),
                       spool_dir=str(tmp_path), flush=lambda: asked.append(len(os.listdir(dest))))

    assert asked == [4, 8, 12]  # asked as the fourth, eighth and twelfth file were complete


def test_a_large_file_is_flushed_while_it_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its writing-out overlaps the rest of its extraction, instead of all of it waiting for the last sync.
    monkeypatch.setattr(member_writer, "FLUSH_BYTES", 1024 * 1024)
    size = 5 * member_writer.FLUSH_BYTES + 1000
    data = support.tar_bytes([support.Member("big.bin", os.urandom(size))], compression="")
    dest = tmp_path / "tree"
    dest.mkdir()
    seen: list[int] = []  # the file's size on disk at each ask

    extracting.extract(io.BytesIO(data), str(dest), fmt="auto", strip=None, owner=None,
                       budget=archives.Budget(model.Limits(max_ratio=1e9), lambda: len(data)),
                       spool_dir=str(tmp_path), flush=lambda: seen.append((dest / "big.bin").stat().st_size))

    during = [written for written in seen if written < size]
    assert len(during) >= 2 and during == sorted(set(during))  # asked again and again while it was written
    assert (dest / "big.bin").stat().st_size == size


def test_a_flusher_runs_one_flush_at_a_time_and_its_thread_is_gone_when_left(tmp_path: Path) -> None:
    from controller import fsutil

    before = threading.active_count()
    with fsutil.Flusher(str(tmp_path)) as flusher:
        for _ in range(20):
            flusher.kick()
            assert threading.active_count() <= before + 1
    assert threading.active_count() == before


def test_an_error_a_background_flush_meets_is_raised_when_the_flusher_is_left(tmp_path: Path) -> None:
    # a write-back error is reported once per open file: the one the background flush sees must not be lost
    from controller import fsutil

    with pytest.raises(FileNotFoundError), fsutil.Flusher(str(tmp_path / "missing")) as flusher:
        flusher.kick()
    with pytest.raises(ValueError), fsutil.Flusher(str(tmp_path / "missing")) as flusher:
        flusher.kick()
        raise ValueError("the pass failed first")  # an exception already leaving is not replaced


def test_large_files_hashed_on_their_own_thread_get_the_digests_of_their_bytes(tmp_path: Path) -> None:
    sizes = [0, 1, member_writer.THREAD_HASH_SIZE - 1, member_writer.THREAD_HASH_SIZE, 3 * member_writer.CHUNK + 7, 100]
    files = [support.Member(f"site/f{index}.bin", os.urandom(size)) for index, size in enumerate(sizes)]
    before = threading.active_count()

    root, written = _extract(tmp_path, support.tar_bytes(files))

    assert {rel: file.sha256 for rel, file in written.items()} == {
        member.name.removeprefix("site/"): support.sha256(member.data) for member in files}
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert {rel: digests.sha256(rel, fd, bytearray(1024))[1] for rel in written} == {
            rel: file.sha256 for rel, file in written.items()}
    finally:
        os.close(fd)
    assert threading.active_count() == before  # the digest thread is gone with the writer
