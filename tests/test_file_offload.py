"""The second process that writes an extraction's small files (controller/artifacts/file_offload.py).

It must change nothing about what an extraction accepts, refuses or makes, and
it must never outlive its extraction or keep writing after it failed: every
hostile archive is refused the same way whether it writes or not, an error it
meets fails the extraction naming the member, its death fails the extraction
as something to retry, and it ends with the process that started it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller import errors
from controller.artifacts import archives, extracting, file_offload, member_writer
from controller.manifests import model
from tests import support
from tests import test_hostile_review as hostile

M = support.Member
PADDING = [M("pad/", type="dir"), *(M(f"pad/f{i}", os.urandom(i * 37)) for i in range(6))]


def _extract(data: bytes, dest: Path, offload_after: int | None, owner: member_writer.Owner = None,
             checkpoint: Callable[[str], None] = lambda step: None, made: extracting.Made | None = None,
             flush: Callable[[], None] = lambda: None) -> str:
    dest.mkdir()
    source = io.BytesIO(data)
    return extracting.extract(source, str(dest), fmt="auto", strip=None, owner=owner, made=made,
                              budget=archives.Budget(model.Limits(max_ratio=1e9), lambda: source.tell()),
                              spool_dir=str(dest.parent), checkpoint=checkpoint, offload_after=offload_after,
                              flush=flush)


def _outcome(data: bytes, dest: Path, offload_after: int | None) -> str | dict[str, tuple[str, str]]:
    """The error an extraction ends in, or the tree it made."""
    try:
        _extract(data, dest, offload_after)
    except (errors.ArchiveError, errors.TemporaryError) as exc:
        return f"{type(exc).__name__}: {exc}".replace(str(dest), "DEST")
    return support.snapshot(dest)


def _children() -> list[int]:
    """This process's children that are still running."""
    found = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/self/task/{task}/children") as listing:
            found += [int(pid) for pid in listing.read().split()]  # (a thread may end meanwhile)
    return [pid for pid in found if _running(pid)]


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("case", sorted(hostile.TARS))
def test_a_hostile_archive_is_refused_alike_whether_the_second_process_writes_and_leaves_no_process(
        tmp_path: Path, case: str) -> None:
    data = support.tar_bytes([*PADDING, *hostile.TARS[case]])

    alone = _outcome(data, tmp_path / "alone", None)
    offloaded = _outcome(data, tmp_path / "offloaded", 0)

    assert offloaded == alone
    assert _children() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone", "offloaded"]


def test_a_tree_of_every_member_kind_is_made_alike_whether_the_second_process_writes(tmp_path: Path) -> None:
    members = [M("site/", type="dir", mode=0o750), *(M(f"site/d{i % 7}/f{i}", os.urandom(i * 13 % 5000),
                                                       mode=(0o644, 0o755, 0o600, 0o444)[i % 4]) for i in range(400)),
               M("site/big", os.urandom(member_writer.THREAD_HASH_SIZE + 1)), M("site/empty", b""),
               *(M(f"site/h{i}", type="hardlink", target=f"site/d{i % 7}/f{i}") for i in range(0, 400, 50)),
               M("site/hbig", type="hardlink", target="site/big"), M("site/l", type="symlink", target="d1/f1"),
               M("site/d3/", type="dir", mode=0o700)]
    data = support.tar_bytes(members)
    for offload_after in (None, 0, 100):
        dest, made = tmp_path / f"after-{offload_after}", extracting.Made()
        root = Path(_extract(data, dest, offload_after, made=made))

        assert support.snapshot(dest) == support.snapshot(tmp_path / "after-None")
        assert {name: written.sha256 for name, written in made.files.items()} == {
            str(path.relative_to(root)): support.sha256(path.read_bytes()) for path in support.walk_files(root)
            if not path.is_symlink()}
    assert (tmp_path / "after-0/site/h50").stat().st_ino == (tmp_path / "after-0/site/d1/f50").stat().st_ino


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_the_second_process_gives_its_files_to_the_deployment_owner(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    owner = (nobody.pw_uid, nobody.pw_gid)
    _extract(support.tar_bytes([M("site/", type="dir"), *(M(f"site/f{i}", b"x" * i) for i in range(20))]),
             tmp_path / "tree", 0, owner=owner)

    for path in support.walk_files(tmp_path / "tree"):
        assert (path.stat().st_uid, path.stat().st_gid) == owner, path


def test_an_error_the_second_process_meets_fails_the_extraction_naming_the_member(tmp_path: Path) -> None:
    """A file larger than RLIMIT_FSIZE: write(2) fails with EFBIG (Python ignores SIGXFSZ) in the second process."""
    archive = tmp_path / "a.tar"
    archive.write_bytes(support.tar_bytes([M("site/", type="dir"), *(M(f"site/f{i}", b"x" * 100) for i in range(50)),
                                           M("site/too-big", b"y" * 70_000), M("site/after", b"z")]))
    script = textwrap.dedent(f"""
        import io, resource, sys
        from controller import errors
        from controller.artifacts import archives, extracting
        from controller.manifests import model
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
        source = io.BytesIO(open({str(archive)!r}, "rb").read())
        try:
            extracting.extract(source, {str(tmp_path / "tree")!r}, fmt="auto", strip=None, owner=None,
                               budget=archives.Budget(model.Limits(), lambda: source.tell()),
                               spool_dir={str(tmp_path)!r}, offload_after=0)
        except OSError as exc:
            print(exc.errno, exc.filename)
    """)
    (tmp_path / "tree").mkdir()

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent.parent)

    assert run.stdout.split() == [str(errno.EFBIG), "site/too-big"], run.stdout + run.stderr


def test_a_second_process_killed_mid_way_fails_the_extraction_as_one_to_retry(tmp_path: Path) -> None:
    def kill_it(step: str) -> None:  # at the first file, which the second process already has
        for pid in _children():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _children() and time.monotonic() < deadline:
            time.sleep(0.01)

    data = support.tar_bytes([M("site/", type="dir"), *(M(f"site/f{i}", os.urandom(2000)) for i in range(3000))])

    with pytest.raises(errors.TemporaryError, match="file-writing process"):
        _extract(data, tmp_path / "tree", 0, checkpoint=kill_it)
    assert _children() == []


def test_the_second_process_ends_when_the_extracting_process_is_killed(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(support.tar_bytes([M("site/", type="dir"), *(M(f"site/f{i}", b"x") for i in range(50))]))
    script = textwrap.dedent(f"""
        import io, os, sys
        from controller.artifacts import archives, extracting
        from controller.manifests import model
        def hold(step):  # tell the test the second process's pid, then wait to be killed
            for task in os.listdir("/proc/self/task"):
                print(open(f"/proc/self/task/{{task}}/children").read(), flush=True)
            sys.stdin.read()
        source = io.BytesIO(open({str(archive)!r}, "rb").read())
        extracting.extract(source, {str(tmp_path / "tree")!r}, fmt="auto", strip=None, owner=None,
                           budget=archives.Budget(model.Limits(), lambda: source.tell()),
                           spool_dir={str(tmp_path)!r}, offload_after=0, checkpoint=hold)
    """)
    (tmp_path / "tree").mkdir()
    process = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, cwd=Path(__file__).parent.parent)
    assert process.stdout is not None
    child = int(process.stdout.readline().split()[0])
    assert _running(child)

    process.kill()
    process.wait()

    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _running(child)


def test_a_deploy_of_many_small_files_records_the_digests_the_second_process_wrote(
        node: support.Node, http: support.HttpServer) -> None:
    files = {f"site/d{i % 9}/f{i}": os.urandom(i % 3000) for i in range(member_writer.OFFLOAD_AFTER * 3)}
    http.serve("/v1.tar.gz", support.tar_bytes([M("site/", type="dir"), *(M(n, d) for n, d in files.items())]))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}))

    deployed = node.tether("reconcile", timeout=120)
    verified = node.tether("verify", "site", timeout=120)

    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for name, data in files.items():
        assert (node.apps / "site/current" / name.removeprefix("site/")).read_bytes() == data
    (node.apps / "site/current/d4/f4").write_bytes(b"changed")
    assert node.tether("verify", "site", timeout=120).returncode != 0


@pytest.mark.parametrize("offload_after", [None, 0])
def test_members_between_directory_chains_deeper_than_the_descriptor_cache_land_where_they_are_named(
        tmp_path: Path, offload_after: int | None) -> None:
    """Two chains 100 levels deep (the writers keep 64 directory descriptors): a hardlink from the end of one to
    the end of the other needs both looked up, and the second lookup closes descriptors the first returned. Every
    directory on the way holds a file of the same name with other content, so a link or file made relative to
    the wrong directory shows."""
    def chain(letter: str, depth: int) -> str:
        return "/".join(f"{letter}{i}" for i in range(depth))

    members = [M("s/", type="dir"), M(f"s/{chain('a', 100)}/file", b"right")]
    members += [M(f"s/{chain('b', depth)}/file", f"b{depth}".encode()) for depth in range(1, 101)]
    members += [M(f"s/{chain('b', 100)}/link", type="hardlink", target=f"s/{chain('a', 100)}/file"),
                M(f"s/{chain('a', 100)}/back", type="hardlink", target=f"s/{chain('b', 100)}/file"),
                M(f"s/{chain('b', 100)}/after", b"after"), M(f"s/{chain('a', 50)}/symlink", type="symlink",
                                                              target="file")]
    root = Path(_extract(support.tar_bytes(members), tmp_path / "tree", offload_after))

    a, b = root / chain("a", 100), root / chain("b", 100)
    assert (b / "link").read_bytes() == b"right" and (b / "link").stat().st_ino == (a / "file").stat().st_ino
    assert (a / "back").read_bytes() == b"b100" and (a / "back").stat().st_ino == (b / "file").stat().st_ino
    assert (b / "after").read_bytes() == b"after"
    assert os.readlink(root / chain("a", 50) / "symlink") == "file"
    found = sorted(str(path.relative_to(root)) for path in support.walk_files(root))
    assert found == sorted(str(Path(m.name).relative_to("s")) for m in members if m.type != "dir")


def test_while_the_second_process_lags_the_extracting_process_writes_files_itself_and_the_tree_is_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second process is stopped from the first file until 4 MiB have been written (the first flush, made
    that early here): its 1 MiB pipe fills, and the extracting process writes the next files itself; then both
    write. Hardlinks to files of either side go through the pipe in order."""
    monkeypatch.setattr(member_writer, "FLUSH_BYTES", 4 * 1024 * 1024)
    stopped: list[int] = []

    def stop(step: str) -> None:
        stopped.extend(_children())
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)

    def resume() -> None:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):  # after the extraction: it has ended
                os.kill(pid, signal.SIGCONT)

    members = [M("site/", type="dir"), *(M(f"site/d{i % 5}/f{i}", os.urandom(100_000 + i)) for i in range(70)),
               *(M(f"site/h{i}", type="hardlink", target=f"site/d{i % 5}/f{i}") for i in range(0, 70, 7)),
               *(M(f"site/late/f{i}", os.urandom(i)) for i in range(300))]
    data = support.tar_bytes(members)
    made = {}
    for offload_after in (None, 0):
        extracted = extracting.Made()
        _extract(data, tmp_path / f"after-{offload_after}", offload_after, checkpoint=stop, made=extracted,
                 flush=resume)
        made[offload_after] = {name: written.sha256 for name, written in extracted.files.items()}
        resume()

    assert stopped, "the second process never ran"
    assert support.snapshot(tmp_path / "after-0") == support.snapshot(tmp_path / "after-None")
    assert made[0] == made[None]
    assert (tmp_path / "after-0/site/h7").stat().st_ino == (tmp_path / "after-0/site/d2/f7").stat().st_ino


@pytest.mark.parametrize("sent", [0, 1, 300])
def test_a_second_process_that_died_before_the_end_fails_the_finish_as_one_to_retry(tmp_path: Path, sent: int) -> None:
    """Killed with 0, 1 or 300 files sent (all still waiting to be written to its pipe, or some written): the
    last, blocking send or the reply says so, as a TemporaryError, and the process is waited for."""
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    offload = file_offload.Offload(root, None)
    try:
        for i in range(sent):
            offload.file(f"f{i}", f"f{i}", 0o644, 0.0, b"x" * 1000)
        for pid in _children():
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _children() and time.monotonic() < deadline:
            time.sleep(0.01)

        with pytest.raises(errors.TemporaryError, match="file-writing process"):
            list(offload.finish())
        assert not offload.running
    finally:
        offload.close()
        os.close(root)
