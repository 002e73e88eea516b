"""Hostile artifacts and trees: deep trees, header and directory bombs, malformed members (issue 9: 7, 12, 13, 15, 16).

Every case drives the real `tether` command line in a subprocess on a real
filesystem. A refusal is one line naming the problem, exit code 1, never a
traceback, and leaves the application as it was; a tree thousands of levels
deep (from a hook, or left behind) never wedges the application.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from controller import errors
from controller.artifacts import archives, extracting
from controller.manifests import model
from tests import support

NAME = "site"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


@pytest.fixture(autouse=True)
def _no_deep_trees_left(tmp_path: Path) -> Iterator[None]:
    """Remove what a test left, at any depth: pytest's own clean-up of old tmp_paths is recursive."""
    yield
    _remove_all(tmp_path)


def _remove_all(top: Path) -> None:
    """Remove everything below `top`, iteratively and without following links (independent of tether's code)."""
    fd, names = os.open(top, DIR_FLAGS), list[str]()
    try:
        while True:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in os.scandir(fd)]
            below = next((name for name, is_dir in entries if is_dir), None)
            if below is not None:
                child = os.open(below, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
                names.append(below)
                continue
            for name, _ in entries:
                os.unlink(name, dir_fd=fd)
            if not names:
                return
            parent = os.open("..", DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent
            os.rmdir(names.pop(), dir_fd=fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- helpers


@dataclasses.dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    max_rss_mib: float


def _measured(node: support.Node, *args: str) -> Measured:
    """Run the real `tether` like Node.tether, and also report its peak resident memory (support.PEAK_LAUNCHER: not
    the test run's, which a process forked from it starts with)."""
    peak = node.root / "measured.peak"
    command = [sys.executable, "-c", support.PEAK_LAUNCHER, str(peak), sys.executable, "-m", "controller", *args,
               "--manifests", str(node.manifests), "--state-dir", str(node.state)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    out, err = node.root / "measured.out", node.root / "measured.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=node.root)
        process.wait()
    return Measured(process.returncode, out.read_text(), err.read_text(), int(peak.read_text()) / 1024)


def _want(node: support.Node, app: Path, deployment: str, url: str, **spec: Any) -> None:
    source = {"url": url, **spec.pop("source", {})}
    support.write_manifest(node.manifests, support.application(NAME, app, deployment=deployment, source=source,
                                                               **spec))


def _deploy(node: support.Node, http: support.HttpServer, app: Path, deployment: str, artifact: bytes,
            **spec: Any) -> subprocess.CompletedProcess[str]:
    _want(node, app, deployment, http.serve(f"/{deployment}.tar.gz", artifact), **spec)
    return node.tether("reconcile")


def _status_error(node: support.Node) -> str:
    return str(json.loads((node.state / "status" / f"{NAME}.json").read_text())["lastError"])


def _assert_one_line_refusal(run: subprocess.CompletedProcess[str] | Measured, *words: str) -> None:
    """Exit code 1, no traceback, a one-line error naming `words`."""
    assert run.returncode == 1, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, run.stderr
    errors = [line for line in run.stderr.splitlines() if "failed" in line.lower() or "error" in line.lower()]
    assert errors, run.stderr
    for word in words:
        assert word.lower() in run.stderr.lower(), (word, run.stderr)


def _assert_nothing_deployed(app: Path, deployment: str = "v2") -> None:
    assert not (app / deployment).exists()
    assert not (app / ".tether" / "deployments" / f"{deployment}.json").exists()
    staging = app / ".tether" / "staging"
    assert not staging.exists() or os.listdir(staging) == []


def _build_deep(parent: Path | str, depth: int, name: str = "d") -> None:
    """`depth` nested directories `name` below `parent`, with a file at the bottom (paths beyond PATH_MAX)."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


DEEP_HOOK = """#!{python}
import os
if os.environ["DEPLOYMENT_NAME"] in {names!r}:
    fd = os.open(os.environ["DEPLOYMENT_PATH"], os.O_RDONLY)
    for _ in range({depth}):
        os.mkdir("deep", dir_fd=fd)
        child = os.open("deep", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("bottom", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    raise SystemExit({code})
"""


def _deep_hook(names: tuple[str, ...], depth: int, code: int = 0) -> str:
    return DEEP_HOOK.format(python=sys.executable, names=names, depth=depth, code=code)


# ---------------------------------------------------------------- item 7: deep trees


def test_an_artifact_1500_levels_deep_is_refused_naming_max_depth(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    deep = "site/" + "d/" * 1499 + "f"
    artifact = support.tar_bytes([support.Member("site/index.html", b"x"), support.Member(deep, b"deep")])

    run = _deploy(node, http, app, "v2", artifact)

    _assert_one_line_refusal(run, "maxDepth", "levels deep")
    assert "maxDepth" in _status_error(node)
    _assert_nothing_deployed(app)


def test_max_depth_is_a_limit_of_the_manifest_that_refuses_deeper_and_admits_shallower_artifacts(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    four = support.tar_bytes([support.Member("site/a/b/f", b"4")])
    five = support.tar_bytes([support.Member("site/a/b/c/f", b"5")])
    zip_five = support.zip_bytes([support.Member("site/a/b/c/f", b"5")])

    assert _deploy(node, http, app, "v1", four, source={"limits": {"maxDepth": 4}}).returncode == 0
    _assert_one_line_refusal(_deploy(node, http, app, "v2", five, source={"limits": {"maxDepth": 4}}), "maxDepth 4")
    _assert_one_line_refusal(_deploy(node, http, app, "v3", zip_five, source={"limits": {"maxDepth": 4}}),
                             "maxDepth 4")
    assert os.readlink(app / "current") == str(app / "v1")
    assert _deploy(node, http, app, "v4", support.tar_bytes([support.Member("site/" + "d/" * 298 + "f", b"x")]),
                   source={"limits": {"maxDepth": 400}}).returncode == 0
    assert os.readlink(app / "current") == str(app / "v4")


def test_a_tree_3000_levels_deep_made_by_an_after_deploy_hook_deploys_verifies_lets_newer_ones_land_and_is_pruned(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    hooks = {"afterDeploy": _deep_hook(("v1",), 3000)}

    first = _deploy(node, http, app, "v1", support.tar_bytes(support.site("1")), hooks=hooks)
    assert first.returncode == 0, first.stderr
    assert os.readlink(app / "current") == str(app / "v1")
    digests = json.loads((app / ".tether" / "digests" / "v1.json").read_text())["entries"]
    assert "deep/" * 2999 + "deep/bottom" in digests
    verify = node.tether("verify", NAME)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    for version in ("v2", "v3"):
        run = _deploy(node, http, app, version, support.tar_bytes(support.site(version)), hooks=hooks)
        assert run.returncode == 0, run.stderr
        assert os.readlink(app / "current") == str(app / version)
    prune = node.tether("prune", NAME, "--keep", "1")

    assert prune.returncode == 0, prune.stderr
    assert not (app / "v1").exists()
    assert os.listdir(app / ".tether" / "staging") == []
    assert sorted(p for p in os.listdir(app) if p.startswith("v")) == ["v2", "v3"]


def test_an_incomplete_deployment_3000_levels_deep_is_removed_and_a_newer_deployment_lands(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    assert _deploy(node, http, app, "v1", support.tar_bytes(support.site("1"))).returncode == 0
    failing = {"afterDeploy": _deep_hook(("v2",), 3000, code=1)}

    assert _deploy(node, http, app, "v2", support.tar_bytes(support.site("2")), hooks=failing).returncode == 1
    assert (app / "v2" / "deep").is_dir()
    again = node.tether("reconcile")  # cleans the incomplete v2, deploys it again, the hook fails again
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
    assert "RecursionError" not in again.stderr and "RecursionError" not in _status_error(node)
    newer = _deploy(node, http, app, "v3", support.tar_bytes(support.site("3")))

    assert newer.returncode == 0, newer.stderr
    assert os.readlink(app / "current") == str(app / "v3")
    assert not (app / "v2").exists()
    assert os.listdir(app / ".tether" / "staging") == []


def test_leftovers_5000_levels_deep_in_staging_are_removed_by_the_next_pass_without_following_symlinks(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    assert _deploy(node, http, app, "v1", support.tar_bytes(support.site("1"))).returncode == 0
    outside = node.root / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not tether's")
    staging = app / ".tether" / "staging"
    for leftover in ("v2-killed", "pruned-v0-1234"):
        (staging / leftover).mkdir()
        _build_deep(staging / leftover, 5000)
        os.symlink(outside, staging / leftover / "link-out")
    os.symlink(outside, staging / "a-link")

    run = _measured(node, "reconcile")

    assert run.returncode == 0, run.stderr
    assert os.listdir(staging) == []
    assert (outside / "keep").read_text() == "not tether's"
    assert os.readlink(app / "current") == str(app / "v1")


# ---------------------------------------------------------------- raw archive builders

MIB = 1024 * 1024


def _block(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def _header(name: str, size: int, type: bytes = tarfile.REGTYPE, **fields: Any) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mode, info.mtime = size, type, 0o644, 1_700_000_000
    for key, value in fields.items():
        setattr(info, key, value)
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")


def _pax(records: dict[str, bytes]) -> bytes:
    """A pax extended header block (type x) carrying exactly `records` (raw values: any bytes)."""
    body = b""
    for key, value in records.items():
        record = b" " + key.encode() + b"=" + value + b"\n"
        length = len(record) + 1
        while len(str(length).encode()) + len(record) != length:
            length += 1
        body += str(length).encode() + record
    return _header("././@PaxHeader", len(body), tarfile.XHDTYPE) + _block(body)


def _file(name: str, data: bytes, **fields: Any) -> bytes:
    return _header(name, len(data), **fields) + _block(data)


def _tar_gz(*parts: bytes) -> bytes:
    return gzip.compress(b"".join(parts) + b"\0" * 1024)


def _header_bomb(path: Path, type: bytes, claimed: int = 200 * MIB) -> bytes:
    """A tar.gz whose first header (pax, GNU long name, ...) claims `claimed` bytes, all zeros, streamed."""
    with gzip.open(path, "wb", compresslevel=6) as out:
        out.write(_header("././@LongLink" if type in (b"L", b"K") else "././@PaxHeader", claimed, type))
        zeros = b"\0" * MIB
        for _ in range(claimed // MIB):
            out.write(zeros)
        out.write(_file("site/index.html", b"x") + b"\0" * 1024)
    return path.read_bytes()


# ---------------------------------------------------------------- items 12 and 13: memory bombs


@pytest.mark.parametrize("type", [tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                                  tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK])
def test_a_tar_header_claiming_200_mib_is_refused_before_it_is_read(
        node: support.Node, http: support.HttpServer, type: bytes) -> None:
    app = node.apps / NAME
    artifact = _header_bomb(node.root / "bomb.tar.gz", type)
    assert len(artifact) < 400 * 1024
    _want(node, app, "v2", http.serve("/v2.tar.gz", artifact))

    run = _measured(node, "reconcile")

    _assert_one_line_refusal(run, "header", "bomb")
    assert run.max_rss_mib < 150, f"tether used {run.max_rss_mib:.0f} MiB for a {len(artifact)} byte artifact"
    _assert_nothing_deployed(app)


def test_a_chain_of_thousands_of_pax_headers_is_refused_in_one_line(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    artifact = _tar_gz(*[_pax({"comment": b"x"})] * 3000, _file("site/index.html", b"x"))

    run = _deploy(node, http, app, "v2", artifact)

    _assert_one_line_refusal(run, "header")
    assert "RecursionError" not in run.stdout + run.stderr
    _assert_nothing_deployed(app)


def _zip_with_directory_of(path: Path, entries: int) -> None:
    """A zip of one tiny member whose central directory lists it `entries` times (a 46-byte entry each).

    The end record claims 65535 entries (as a zip with more and no zip64 records does): zipfile reads every
    entry of the directory whatever the end record says.
    """
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    entry = struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                        0o100644 << 16, 0)
    chunk = 100_000
    with open(path, "wb") as out:
        out.write(local)
        for done in range(0, entries, chunk):
            out.write(entry * min(chunk, entries - done))
        size = len(entry) * entries
        out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, size, len(local), 0))


def test_a_zip_whose_central_directory_lists_2_million_entries_is_refused_before_zipfile_reads_it(
        node: support.Node) -> None:
    app = node.apps / NAME
    artifact = node.root / "many.zip"
    _zip_with_directory_of(artifact, 2_000_000)
    _want(node, app, "v2", artifact.as_uri())

    run = _measured(node, "reconcile")

    _assert_one_line_refusal(run, "maxMembers", "central directory")
    assert run.max_rss_mib < 200, f"tether used {run.max_rss_mib:.0f} MiB"
    _assert_nothing_deployed(app)


def test_a_zip_with_more_central_directory_entries_than_max_members_is_refused_whatever_its_end_record_claims(
        node: support.Node) -> None:
    app = node.apps / NAME
    artifact = node.root / "many.zip"
    _zip_with_directory_of(artifact, 70_000)
    _want(node, app, "v2", artifact.as_uri(), source={"limits": {"maxMembers": 50_000}})

    run = node.tether("reconcile")

    _assert_one_line_refusal(run, "maxMembers 50000", "central directory")
    _assert_nothing_deployed(app)


# ---------------------------------------------------------------- item 15: malformed members, one-line errors


def _zip(*members: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in members:
            archive.writestr(info, data)
    return buffer.getvalue()


def _patched_zip(data: bytes, offset_of: bytes, patch: Callable[[bytearray, int], None]) -> bytes:
    """`data` with `patch(buffer, index)` applied at every occurrence of the signature `offset_of`."""
    buffer, index = bytearray(data), data.find(offset_of)
    while index >= 0:
        patch(buffer, index)
        index = data.find(offset_of, index + 1)
    return bytes(buffer)


def _zip_version_too_new() -> bytes:
    def patch(buffer: bytearray, index: int) -> None:
        buffer[index + 6] = 99  # version needed to extract: 9.9

    return _patched_zip(support.zip_bytes([support.Member("site/index.html", b"x")]), b"PK\x01\x02", patch)


def _zip_name_not_utf8() -> bytes:
    info = zipfile.ZipInfo("site/\u00e9.html")  # written with the UTF-8 flag
    data = _zip((info, b"x"))
    return data.replace("\u00e9".encode(), b"\xff\xfe")


def _zip_unknown_compression() -> bytes:
    def patch(buffer: bytearray, index: int) -> None:
        where = index + (10 if buffer[index + 2:index + 4] == b"\x01\x02" else 8)
        buffer[where:where + 2] = struct.pack("<H", 99)  # compression method 99 (AES), not supported

    data = support.zip_bytes([support.Member("site/index.html", b"x")])
    return _patched_zip(_patched_zip(data, b"PK\x01\x02", patch), b"PK\x03\x04", patch)


def _sparse_10(numblocks: bytes) -> bytes:
    pax = _pax({"GNU.sparse.major": b"1", "GNU.sparse.minor": b"0", "GNU.sparse.name": b"site/sparse",
                "GNU.sparse.realsize": b"1024"})
    return _tar_gz(pax, _header("site/GNUSparseFile.0/sparse", 512), _block(numblocks + b"\n"))


BAD_TARS: dict[str, bytes] = {
    "pax mtime nan": _tar_gz(_pax({"mtime": b"nan"}), _file("site/index.html", b"x")),
    "pax mtime inf": _tar_gz(_pax({"mtime": b"inf"}), _file("site/index.html", b"x")),
    "pax mtime 1e300": _tar_gz(_pax({"mtime": b"1e300"}), _file("site/index.html", b"x")),
    "pax mtime -1e300": _tar_gz(_pax({"mtime": b"-1e300"}), _file("site/index.html", b"x")),
    "pax mtime 1e20": _tar_gz(_pax({"mtime": b"1e20"}), _file("site/index.html", b"x")),
    "pax path not UTF-8": _tar_gz(_pax({"path": b"site/\xff\xfe.html"}), _file("site/index.html", b"x")),
    "GNU sparse 1.0 map without an end": _sparse_10(b"99999999"),
}
BAD_ZIPS: dict[str, bytes] = {
    "backslashes in a zip name": support.zip_bytes([support.Member("site/index.html", b"x"),
                                                    support.Member("site\\..\\..\\evil", b"x")]),
    "a drive letter in a zip name": support.zip_bytes([support.Member("site/index.html", b"x"),
                                                       support.Member("C:/evil", b"x")]),
    "zip version too new": _zip_version_too_new(),
    "zip name not UTF-8 under the UTF-8 flag": _zip_name_not_utf8(),
    "zip compression method unknown": _zip_unknown_compression(),
}


def _fix_checksum(header: bytes) -> bytes:
    header = header[:148] + b" " * 8 + header[156:]
    return header[:148] + f"{sum(header):06o}\0 ".encode() + header[156:]


BAD_TARS["negative base-256 size"] = _tar_gz(_fix_checksum(_header("site/a", 0)[:124] + b"\xff" * 12
                                                         + _header("site/a", 0)[136:]), b"\0" * 512)


@pytest.mark.parametrize("case", [*BAD_TARS, *BAD_ZIPS])
def test_a_malformed_artifact_ends_in_a_one_line_archive_error(node: support.Node, http: support.HttpServer,
                                                               case: str) -> None:
    app = node.apps / NAME
    artifact = BAD_TARS.get(case) or BAD_ZIPS[case]
    assert _deploy(node, http, app, "v1", support.tar_bytes(support.site("1"))).returncode == 0
    before = support.snapshot(app)

    run = _deploy(node, http, app, "v2", artifact)

    _assert_one_line_refusal(run)
    assert len(_status_error(node).splitlines()) == 1, _status_error(node)
    assert "unexpectedly" not in run.stderr, run.stderr
    _assert_nothing_deployed(app)
    assert support.snapshot(app) == before


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(which=st.sampled_from(["tar.gz", "tar", "zip"]), data=st.data())
def test_random_damage_to_a_valid_archive_is_extracted_or_refused_as_an_archive_error_never_anything_else(
        tmp_path: Path, which: str, data: st.DataObject) -> None:
    members = [*support.site("1"), support.Member("site/big.txt", b"0123456789" * 300)]
    valid = {"tar.gz": support.tar_bytes(members), "tar": support.tar_bytes(members, ""),
             "zip": support.zip_bytes(members)}[which]
    damaged = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(damaged) - 1))
        damaged[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        damaged = damaged[: data.draw(st.integers(1, len(damaged)))]
    dest = Path(tempfile.mkdtemp(dir=tmp_path))

    try:
        extracting.extract(io.BytesIO(bytes(damaged)), str(dest), fmt="auto", strip=None, owner=None,
                           budget=archives.Budget(model.Limits(), lambda: len(damaged)), spool_dir=str(tmp_path))
    except errors.TetherError as exc:
        assert "\n" not in str(exc)


# ---------------------------------------------------------------- item 16: zip member types


def test_a_zip_written_by_zipfile_writestr_deploys_with_and_without_permission_bits(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / NAME
    windows = zipfile.ZipInfo("site/windows.txt")
    windows.create_system = 0  # written on Windows: no unix attributes at all
    artifact = _zip(("site/index.html", b"<h1>zipped</h1>\n"), ("site/css/site.css", b"body {}\n"), (windows, b"w"),
                    ("site/empty/", b""))
    assert zipfile.ZipFile(io.BytesIO(artifact)).getinfo("site/index.html").external_attr == 0o600 << 16

    run = _deploy(node, http, app, "v2", artifact)

    assert run.returncode == 0, run.stderr
    deployment = app / "v2"
    assert (deployment / "index.html").read_bytes() == b"<h1>zipped</h1>\n"
    assert (deployment / "css" / "site.css").is_file() and (deployment / "empty").is_dir()
    assert (deployment / "index.html").stat().st_mode & 0o777 == 0o600  # as zipfile.writestr recorded it
    assert (deployment / "windows.txt").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("file_type", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_a_zip_member_of_a_special_type_is_still_refused(node: support.Node, http: support.HttpServer,
                                                          file_type: int) -> None:
    app = node.apps / NAME
    special = zipfile.ZipInfo("site/special")
    special.create_system, special.external_attr = 3, (file_type | 0o644) << 16

    run = _deploy(node, http, app, "v2", _zip(("site/index.html", b"x"), (special, b"")))

    _assert_one_line_refusal(run, "site/special", "special file")
    _assert_nothing_deployed(app)
