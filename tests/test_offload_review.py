"""Review of the second file-writing process of an extraction (controller/artifacts/file_offload.py): hostile
archives, faults and the pipe protocol.

It found four problems, fixed since, whose tests are here with the rest: directory lookups that recursed once per
level (a tree deeper than Python's recursion limit), a dead second process noticed only at the end, the staging
descriptor taking a closed standard descriptor's number, and an error of the second process reported after a
later archive error.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller import errors, fsutil
from controller.artifacts import archives, extracting, member_writer
from controller.manifests import model
from tests import support
from tests import test_file_offload as offload_tests
from tests import test_hostile_review as hostile

M = support.Member
SMALL = member_writer.THREAD_HASH_SIZE  # below this, a file goes to the second process
SIZES = [0, 1, 511, 512, 513, 4096, SMALL - 1, SMALL, SMALL + 1]


def _extract(data: bytes, dest: Path, offload_after: int | None, *, max_depth: int = 256,
             flush: Callable[[], None] = lambda: None, made: extracting.Made | None = None) -> str:
    dest.mkdir()
    source = io.BytesIO(data)
    return extracting.extract(source, str(dest), fmt="auto", strip=None, owner=None, made=made, flush=flush,
                              budget=archives.Budget(model.Limits(max_ratio=1e9, max_depth=max_depth),
                                                     lambda: source.tell()),
                              spool_dir=str(dest.parent), offload_after=offload_after)


def _outcome(data: bytes, dest: Path, offload_after: int | None) -> object:
    """The error an extraction ends in (any exception), or the tree it made with the digests and modes it
    recorded."""
    made = extracting.Made()
    try:
        _extract(data, dest, offload_after, made=made)
    except Exception as exc:  # any difference counts, a traceback-class one too
        return f"{type(exc).__name__}: {exc}".replace(str(dest), "DEST")
    return (support.snapshot(dest), {name: (w.sha256, w.mode) for name, w in made.files.items()}, made.dirs,
            made.symlinks)


def _fds(pid: int | str = "self") -> dict[int, str]:
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # the descriptor listdir itself used
            found[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return found


def _reading_stdin(pid: int) -> bool:
    with open(f"/proc/{pid}/syscall") as syscall:
        return syscall.read().split()[:2] == ["0", "0x0"]  # x86-64's read(2), on descriptor 0


def _remove(path: Path) -> None:
    """shutil.rmtree (pytest's clean-up) recurses once per level: fsutil's removal is iterative."""
    fsutil.remove_tree(str(path))


# -- the two processes must agree on every archive -------------------------------------------------------------

NAMES = ["a", "a/b", "a/b/c", "d", "a/e", "d/f"]
_member = st.one_of(
    st.builds(lambda n, s, mode: M(n, os.urandom(8) * (s // 8) + os.urandom(s % 8), mode=mode),
              st.sampled_from(NAMES), st.sampled_from(SIZES), st.sampled_from([0o644, 0o755, 0o400, 0o000])),
    st.builds(lambda n, mode: M(n + "/", type="dir", mode=mode), st.sampled_from(NAMES),
              st.sampled_from([0o755, 0o500, 0o000])),
    st.builds(lambda n, t: M(n, type="hardlink", target=t), st.sampled_from(NAMES), st.sampled_from(NAMES)),
    st.builds(lambda n, t: M(n, type="symlink", target=t), st.sampled_from(NAMES),
              st.sampled_from(["b", "..", "../d", "c", "../../x"])),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(members=st.lists(_member, min_size=1, max_size=12))
def test_any_archive_of_files_directories_and_links_over_few_names_ends_alike_whether_the_second_process_writes(
        tmp_path_factory: pytest.TempPathFactory, members: list[M]) -> None:
    """Duplicates, a directory member after files in it, hardlinks to files still in the pipe, to directories and
    to links, symlinks in the way, sizes on both sides of the offload threshold and of the tar block size."""
    base = tmp_path_factory.mktemp("drawn")
    data = support.tar_bytes([M("s/", type="dir"), *(M("s/" + m.name, m.data, m.type,
                                                      m.target and ("s/" + m.target if m.type == "hardlink"
                                                                    else m.target), m.mode) for m in members)], "")

    alone = _outcome(data, base / "alone", None)
    for offload_after in (0, 1):
        assert _outcome(data, base / f"after-{offload_after}", offload_after) == alone
    assert offload_tests._children() == []


def test_files_whose_data_spans_every_read_buffer_boundary_are_written_byte_for_byte(tmp_path: Path) -> None:
    """Files just under the threshold, one after another, so that members start and end at every offset of the
    1 MiB buffers of the tar reader and of the read-ahead thread."""
    files = {f"s/f{i}": os.urandom(SMALL - 1 - i * 511) for i in range(60)}
    files.update({f"s/z{i}": b"" for i in range(5)})
    data = support.tar_bytes([M("s/", type="dir"), *(M(n, d) for n, d in files.items())])

    root = Path(_extract(data, tmp_path / "tree", 0))

    for name, content in files.items():
        assert (root / name.removeprefix("s/")).read_bytes() == content, name


# -- deep trees ------------------------------------------------------------------------------------------------

def test_a_file_deeper_than_pythons_recursion_limit_is_written_alike_whether_the_second_process_writes(
        tmp_path: Path) -> None:
    deep = "/".join(["d"] * 1100)
    data = support.tar_bytes([M("s/", type="dir"), M(f"s/{deep}/file", b"deep")], "")
    try:
        root = Path(_extract(data, tmp_path / "alone", None, max_depth=2000))
        assert (root / deep / "file").read_bytes() == b"deep"  # the extracting process alone manages

        root = Path(_extract(data, tmp_path / "offloaded", 0, max_depth=2000))
        assert (root / deep / "file").read_bytes() == b"deep"
    finally:
        _remove(tmp_path / "alone")
        _remove(tmp_path / "offloaded")


@pytest.mark.parametrize("offload_after", [None, 0])
def test_a_hardlink_to_a_file_deeper_than_pythons_recursion_limit_is_made(tmp_path: Path,
                                                                          offload_after: int | None) -> None:
    deep = "/".join(["d"] * 1100)
    members = [M("s/", type="dir"), M(f"s/{deep}/file", b"deep"), *(M(f"s/x{i}/g", b"x") for i in range(100)),
               M("s/link", type="hardlink", target=f"s/{deep}/file")]
    try:
        root = Path(_extract(support.tar_bytes(members, ""), tmp_path / "tree", offload_after, max_depth=2000))
        assert (root / "link").read_bytes() == b"deep"
    finally:
        _remove(tmp_path / "tree")


# -- faults ----------------------------------------------------------------------------------------------------

def test_an_extraction_stops_soon_after_its_second_process_dies(tmp_path: Path) -> None:
    """The second process is killed at the first flush (32 MiB written); what the extracting process writes
    after that is bounded by one batch, not by the rest of the archive."""
    big = [M(f"s/big{i}", os.urandom(1024 * 1024)) for i in range(80)]
    data = support.tar_bytes([M("s/", type="dir"), *(M(f"s/f{i}", b"x" * 100) for i in range(300)), *big], "")
    killed: list[int] = []
    written_before: list[int] = []

    def written() -> int:
        return sum(1 for m in big if (tmp_path / "tree" / m.name).exists())

    def kill_it() -> None:
        if not killed:
            written_before.append(written())
            for pid in offload_tests._children():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            deadline = time.monotonic() + 10
            while any(offload_tests._running(pid) for pid in killed) and time.monotonic() < deadline:
                time.sleep(0.001)  # until it has exited (its pipes closed): the next check must see it

    with pytest.raises(errors.TemporaryError, match="file-writing process"):
        _extract(data, tmp_path / "tree", 0, flush=kill_it)

    assert killed
    after = written() - written_before[0]
    assert after <= 2, f"{after} large files (1 MiB each) were written after the second process died"


@pytest.mark.parametrize("where", ["after 1000 offloaded files", "at the first offloaded file"])
def test_an_archive_error_mid_way_leaves_no_process_and_no_descriptor_and_fails_alike(tmp_path: Path,
                                                                                      where: str) -> None:
    count = 1000 if where.startswith("after") else 0
    members = [M("s/", type="dir"), *(M(f"s/f{i}", os.urandom(i % 700)) for i in range(count)),
               M("s/bad", type="hardlink", target="/etc/shadow"), *(M(f"s/g{i}", b"late") for i in range(50))]
    data = support.tar_bytes(members)
    before = _fds()

    alone = _outcome(data, tmp_path / "alone", None)
    offloaded = _outcome(data, tmp_path / "offloaded", 0)

    assert isinstance(alone, str) and alone.startswith("ArchiveError")
    assert offloaded == alone
    assert offload_tests._children() == []
    assert _fds() == before
    assert not list((tmp_path / "offloaded").glob("s/g*"))  # nothing after the bad member


def test_the_second_process_holds_no_descriptor_but_its_pipes_stderr_and_the_root(tmp_path: Path) -> None:
    seen: dict[int, str] = {}
    parent_before = _fds()

    def look(step: str) -> None:  # at the first file; the second process runs from the start (offload_after=0)
        children = offload_tests._children()
        assert len(children) == 1
        deadline = time.monotonic() + 30  # until it has started and waits for its first request: read(0, ...)
        while not _reading_stdin(children[0]) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.update(_fds(children[0]))

    dest = tmp_path / "tree"
    dest.mkdir()
    source = io.BytesIO(support.tar_bytes([M("s/", type="dir"), *(M(f"s/f{i}", b"x") for i in range(20))]))
    extracting.extract(source, str(dest), fmt="auto", strip=None, owner=None,
                       budget=archives.Budget(model.Limits(), lambda: source.tell()), spool_dir=str(tmp_path),
                       checkpoint=look, offload_after=0)

    assert [target for fd, target in seen.items() if fd > 2] == [str(dest)]
    assert seen[0].startswith("pipe:") and seen[1].startswith("pipe:")
    assert _fds() == parent_before


def test_signals_arriving_during_every_write_to_the_pipe_change_nothing(tmp_path: Path) -> None:
    """A signal with a Python handler (the daemon's SIGHUP) cuts writev short after some bytes; the rest must
    follow, in order."""
    files = {f"s/d{i % 5}/f{i}": os.urandom(i * 97 % SMALL) for i in range(600)}
    data = support.tar_bytes([M("s/", type="dir"), *(M(n, d) for n, d in files.items())], "")
    hits = [0]

    def count(signum: int, frame: object) -> None:
        hits[0] += 1

    previous = signal.signal(signal.SIGALRM, count)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        root = Path(_extract(data, tmp_path / "tree", 0))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    assert hits[0] > 10
    for name, content in files.items():
        assert (root / name.removeprefix("s/")).read_bytes() == content, name
    assert offload_tests._children() == []


def test_several_extractions_at_once_on_threads_each_make_their_own_tree(tmp_path: Path) -> None:
    """As the daemon's workers do: each second process writes below its own root only, none is left, no
    descriptor leaks from one extraction into another's second process."""
    archives_ = {n: support.tar_bytes([M("s/", type="dir"), *(M(f"s/t{n}/f{i}", f"{n}:{i}".encode() * (i % 50))
                                                             for i in range(800))]) for n in range(4)}
    before = _fds()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        roots = dict(zip(archives_, pool.map(lambda n: _extract(archives_[n], tmp_path / f"x{n}", 0), archives_), strict=True))

    for n, root in roots.items():
        assert sorted(p.name for p in Path(root).iterdir()) == [f"t{n}"]
        assert (Path(root) / f"t{n}/f7").read_bytes() == f"{n}:7".encode() * 7
    assert offload_tests._children() == []
    assert _fds() == before


# -- the daemon stopped mid-extraction -------------------------------------------------------------------------

def _file_process_of(pid: int) -> int | None:
    """The file-writing process among the children of `pid`, if it runs."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                children = [int(child) for child in listing.read().split()]
        except FileNotFoundError:
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as cmdline:
                    if b"file_process.py" in cmdline.read() and offload_tests._running(child):
                        return child
            except FileNotFoundError:
                pass
    return None


def _wait_until(condition: Callable[[], object], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_daemon_stopped_mid_extraction_leaves_no_file_writing_process_and_the_next_run_converges(
        node: support.Node, http: support.HttpServer, signum: int) -> None:
    from tests import test_daemon

    files = {f"site/d{i % 50}/f{i}": os.urandom(64) for i in range(12_000)}
    http.serve("/v1.tar.gz", support.tar_bytes([M("site/", type="dir"), *(M(n, d) for n, d in files.items())]))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}))
    daemon = test_daemon.Daemon(node, (), None)
    try:
        found: list[int] = []
        _wait_until(lambda: (child := _file_process_of(daemon.pid)) and found.append(child) is None)
        daemon.signal(signum)
        code = daemon.process.wait(60)
        _wait_until(lambda: not offload_tests._running(found[0]), timeout=20)
        if signum == signal.SIGTERM:
            assert code == 0, daemon.log()
            staging = node.apps / "site/.tether/staging"
            assert not staging.exists() or not any(p.is_dir() for p in staging.iterdir()), list(staging.iterdir())
    finally:
        daemon.stop()

    deployed = node.tether("reconcile", timeout=300)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert node.tether("verify", "site", timeout=300).returncode == 0
    assert (node.apps / "site/current/d7/f7").read_bytes() == files["site/d7/f7"]


@pytest.mark.parametrize("closed", [0, 1, 2])
def test_an_extraction_whose_process_has_a_standard_descriptor_closed_writes_its_files(tmp_path: Path,
                                                                                       closed: int) -> None:
    archive, result = tmp_path / "a.tar", tmp_path / "result"
    archive.write_bytes(support.tar_bytes([M("s/", type="dir"), *(M(f"s/f{i}", b"x") for i in range(20))]))
    (tmp_path / "tree").mkdir()
    script = textwrap.dedent(f"""
        import io, os
        from controller.artifacts import archives, extracting
        from controller.manifests import model
        source = io.BytesIO(open({str(archive)!r}, "rb").read())
        os.close({closed})  # the lowest free descriptor: the next os.open, the writer's root, gets it
        try:
            extracting.extract(source, {str(tmp_path / "tree")!r}, fmt="auto", strip=None, owner=None,
                               budget=archives.Budget(model.Limits(), lambda: source.tell()),
                               spool_dir={str(tmp_path)!r}, offload_after=0)
            outcome = "ok"
        except Exception as exc:
            outcome = repr(exc)
        with open({str(result)!r}, "w") as out:
            out.write(outcome)
    """)

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent.parent)

    assert result.read_text() == "ok", run.stderr
    assert sorted(p.name for p in (tmp_path / "tree/s").iterdir()) == sorted(f"f{i}" for i in range(20))


# -- names and zip archives ------------------------------------------------------------------------------------

NAMED = {
    "a non-UTF-8 byte in a file name": [M("s/ok", b"1"), M("s/bad\udcff", b"2")],
    "a non-UTF-8 byte in a directory name": [M("s/d\udce9/", type="dir"), M("s/d\udce9/f", b"x")],
    "a hardlink to a name with a non-UTF-8 byte": [M("s/f", b"x"), M("s/h", type="hardlink", target="s/f\udcff")],
    "UTF-8 names": [M("s/é/ü", b"x"), M("s/é/日本", b"y"), M("s/h", type="hardlink", target="s/é/日本")],
    "a 255-byte component": [M("s/" + "n" * 255, b"x"), M("s/h", type="hardlink", target="s/" + "n" * 255)],
    "a 256-byte component": [M("s/" + "n" * 256, b"x")],
    "a 255-byte UTF-8 component": [M("s/" + "é" * 127 + "n", b"x")],
    "a name of 3900 bytes (a longer one makes the test's own paths too long)": [
        M("s/" + "/".join(["d" * 254] * 16)[:3898], b"x")],
    "a name of 4097 bytes": [M("s/" + "/".join(["d" * 254] * 17)[:4095], b"x")],
    "dots and doubled slashes naming one file twice": [M("s/a/b", b"1"), M("s/a/./b", b"2")],
    "doubled slashes naming one file twice": [M("s/a/b", b"1"), M("s//a//b", b"2")],
    "a newline in a name": [M("s/a\nb", b"x")],
    "a file then a directory of its name with a slash": [M("s/a", b"x"), M("s/a/", type="dir")],
    "a directory then a file of its name": [M("s/a/", type="dir"), M("s/a", b"x")],
    "a hardlink before its target": [M("s/h", type="hardlink", target="s/f"), M("s/f", b"x")],
    "a hardlink to a hardlink": [M("s/f", b"x"), M("s/h1", type="hardlink", target="s/f"),
                                 M("s/h2", type="hardlink", target="s/h1")],
    "a hardlink through a symlinked directory": [M("s/d/f", b"x"), M("s/l", type="symlink", target="d"),
                                                 M("s/h", type="hardlink", target="s/l/f")],
    "a file through a symlinked directory": [M("s/d/", type="dir"), M("s/l", type="symlink", target="d"),
                                             M("s/l/f", b"x")],
}


@pytest.mark.parametrize("case", sorted(NAMED))
def test_an_archive_of_odd_names_ends_alike_whether_the_second_process_writes(tmp_path: Path, case: str) -> None:
    data = support.tar_bytes([*offload_tests.PADDING, M("s/", type="dir"), *NAMED[case]])

    alone = _outcome(data, tmp_path / "alone", None)

    assert _outcome(data, tmp_path / "offloaded", 0) == alone
    assert offload_tests._children() == []


ZIPPED = {
    **hostile.ZIPS,
    "a zip of many files": [M(f"s/d{i % 3}/f{i}", os.urandom(i * 31)) for i in range(40)],
    "a zip with an empty file and a file of the threshold less one": [M("s/e", b""), M("s/t", b"t" * (SMALL - 1)),
                                                                      M("s/u", b"u" * SMALL)],
}


@pytest.mark.parametrize("case", sorted(ZIPPED))
def test_a_zip_archive_ends_alike_whether_the_second_process_writes(tmp_path: Path, case: str) -> None:
    data = support.zip_bytes([*(m for m in offload_tests.PADDING if m.type == "file"), *ZIPPED[case]])

    alone = _outcome(data, tmp_path / "alone", None)

    assert _outcome(data, tmp_path / "offloaded", 0) == alone
    assert offload_tests._children() == []


def test_the_first_error_of_an_extraction_is_the_one_reported_whether_the_second_process_writes(
        tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(support.tar_bytes([M("s/", type="dir"), *(M(f"s/f{i}", b"x" * 100) for i in range(50)),
                                           M("s/too-big", b"y" * 70_000), *(M(f"s/g{i}", b"z") for i in range(50)),
                                           M("s/out", type="symlink", target="/etc/passwd")]))
    outcomes = []
    for offload_after in (None, 0):
        tree = tmp_path / f"tree-{offload_after}"
        tree.mkdir()
        script = textwrap.dedent(f"""
            import io, resource
            from controller.artifacts import archives, extracting
            from controller.manifests import model
            resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
            source = io.BytesIO(open({str(archive)!r}, "rb").read())
            try:
                extracting.extract(source, {str(tree)!r}, fmt="auto", strip=None, owner=None,
                                   budget=archives.Budget(model.Limits(), lambda: source.tell()),
                                   spool_dir={str(tmp_path)!r}, offload_after={offload_after})
            except Exception as exc:
                print(type(exc).__name__, getattr(exc, "errno", None))
        """)
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                             cwd=Path(__file__).parent.parent)
        outcomes.append(run.stdout.strip() or run.stderr)

    assert outcomes[0] == f"OSError {errno.EFBIG}", outcomes  # alone
    assert outcomes[1] == outcomes[0]
