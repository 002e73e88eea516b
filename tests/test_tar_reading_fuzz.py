"""tether's tar reading held to tarfile's, by hypothesis: valid archives of every format, damaged ones, extraction.

The oracle is `tarfile.open(mode="r:")` reading the same bytes. tether's reader
(tar_reader.entries) must report every member of a valid USTAR, GNU or pax
archive as tarfile does, whatever the names (1-300 bytes, non-ASCII, not UTF-8,
right at the ustar name/prefix limits), link targets (GNU long links, pax
linkpath), modes, modification times (negative, base-256, fractional pax) and
extra pax records; damaged archives must be read to the end or refused with an
ArchiveError, nothing else, in bounded time; and extracting.extract must write a
valid archive as exactly the tree tarfile describes. Only tar_reader.entries,
members.Entry, errors.ArchiveError and extracting.extract are called, so that
these tests hold whichever reader is behind them.

Reproducible: derandomize=True and no example database, so CI runs the same
examples every time. Each test has a time bound (a SIGALRM that raises a
BaseException, which no reader's `except Exception` can swallow) on top of
hypothesis's deadline, so a reader that hangs fails instead of stalling the run.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import math
import os
import random
import re
import signal
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from controller import errors
from controller.artifacts import archives, extracting, member_names, members, modes, tar_reader
from controller.manifests import model

Draw = Callable[..., Any]  # hypothesis's draw function (st.DrawFn is newer than Debian 12's hypothesis 6.36)
FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
ENCODING = tarfile.ENCODING
BLOCK = tarfile.BLOCKSIZE
SETTINGS: dict[str, Any] = {
    "derandomize": True,  # the same examples on every run: CI is reproducible
    "database": None,
    "deadline": datetime.timedelta(seconds=10),  # one example takes milliseconds; 10 s is a stall even on 2 busy cores
    "suppress_health_check": [hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large,
                              hypothesis.HealthCheck.function_scoped_fixture],
}
BOUND = 30.0  # seconds for one example before it counts as a hang
SIZES = [0, 1, 100, 511, 512, 513, 1023, 1024, 1025, 1536, 1537]
MTIMES = [0, -1, 1, 8**11 - 1, 8**11, 8**11 + 1, 2**33 + 0.5, -(8**11), 2**39, -(2**39), 1e-05, 0.5, -0.25,
          1_700_000_000.123456]
CHARS = "abz09-_.=, é中🙂"  # ASCII, two-, three- and four-byte UTF-8; '=' and ' ' as pax records have them
PAX_KEYWORDS = ["TETHER.note", "comment", "LIBARCHIVE.creationtime", "x", "SCHILY.fflags", "a.b.c"]


class Hung(BaseException):
    """Raised by the alarm: an example took longer than BOUND seconds (a BaseException: readers cannot catch it)."""


@contextlib.contextmanager
def within(seconds: float = BOUND) -> Iterator[None]:
    def alarm(signum: int, frame: object) -> None:
        raise Hung(f"tether's tar reading is still busy after {seconds} s: it hangs on this archive")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- generated archives


def _fill(prefix: str, length: int) -> str:
    """`prefix` extended with 'a' to exactly `length` bytes (cut on a character boundary, then filled)."""
    raw = prefix.encode(ENCODING, "surrogateescape")[:length].decode(ENCODING, "ignore")
    return raw + "a" * (length - len(raw.encode(ENCODING, "surrogateescape")))


@st.composite
def names(draw: Draw) -> str:
    """Member names: random paths of 1-300 bytes, exact lengths around the ustar limits, prefix splits, deep paths."""
    shape = draw(st.sampled_from(["random", "length", "split", "deep"]))
    if shape == "random":
        parts = draw(st.lists(st.text(CHARS, min_size=1, max_size=40), min_size=1, max_size=12))
        raw = "/".join(parts).encode(ENCODING)[: draw(st.integers(1, 300))]
        if draw(st.integers(0, 9)) == 0:  # not UTF-8: tarfile keeps such bytes as surrogates
            raw = raw[:-1] + b"\xff"
        name = raw.decode(ENCODING, "surrogateescape")
    elif shape == "length":
        name = _fill(draw(st.text(CHARS, max_size=20)) + "/d/", draw(st.sampled_from([99, 100, 101, 155, 156, 157, 256])))
    elif shape == "split":  # prefix/name exactly at or beyond ustar's 155 + 100
        prefix = _fill("p" * 60 + "/" + "q" * 60 + "/", draw(st.sampled_from([154, 155, 156])))
        name = prefix + "/" + _fill(draw(st.text(CHARS, max_size=10)), draw(st.sampled_from([99, 100, 101])))
    else:
        name = "/".join(["d"] * draw(st.integers(2, 120))) + "/" + draw(st.text(CHARS, min_size=1, max_size=5))
    return ("./" if draw(st.booleans()) else "") + name


@st.composite
def tar_infos(draw: Draw, fmt: int) -> tuple[tarfile.TarInfo, bytes]:
    kind = draw(st.sampled_from([tarfile.REGTYPE, tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE,
                                 tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]))
    name = draw(names())
    if kind != tarfile.DIRTYPE:  # tarfile reads a file named 'x/' as a directory, and then takes its data for a header
        name = name.rstrip("/") or "f"
    if kind == tarfile.AREGTYPE and len(name.encode(ENCODING, "surrogateescape")) >= 100:
        kind = tarfile.REGTYPE  # the same for a long name whose first 100 bytes end in '/' (tarfile's own reading)
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = draw(st.integers(0, 0o7777))
    info.mtime = draw(st.one_of(st.sampled_from(MTIMES), st.integers(-(2**39), 2**39),
                                st.floats(-(2**39), 2**39, allow_nan=False, allow_infinity=False)))
    info.uid = draw(st.one_of(st.integers(0, 8**7 - 1), st.integers(8**7, 2**40)))
    info.gid = draw(st.integers(0, 2**32))
    info.uname = draw(st.text(CHARS, max_size=32))
    info.gname = draw(st.text(CHARS, max_size=8))
    data = b""
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = draw(st.one_of(names(), st.text(CHARS, max_size=20),
                                       st.integers(99, 300).map(lambda n: _fill("../" * 3 + "t/", n))))
    elif kind != tarfile.DIRTYPE:
        data = random.Random(draw(st.integers(0, 2**32))).randbytes(draw(st.one_of(st.sampled_from(SIZES),
                                                                                   st.integers(0, 2048))))
        info.size = len(data)
    if fmt == tarfile.PAX_FORMAT and draw(st.booleans()):
        info.pax_headers = draw(st.dictionaries(st.sampled_from(PAX_KEYWORDS), st.text(CHARS + "\n", max_size=40),
                                                max_size=3))
    return info, data


def _header(info: tarfile.TarInfo, fmt: int) -> bytes | None:
    """The member's header blocks in `fmt`, or None when the format cannot hold it (a ustar name too long...)."""
    try:
        return info.tobuf(fmt, ENCODING, "surrogateescape")
    except ValueError:
        return None


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


@st.composite
def archives_(draw: Draw) -> tuple[str, bytes]:
    """A valid archive in one format, as tarfile writes one: headers, padded data, two zero blocks."""
    name = draw(st.sampled_from(list(FORMATS)))
    fmt = FORMATS[name]
    parts, written = [], 0
    if fmt == tarfile.PAX_FORMAT and draw(st.booleans()):
        parts.append(tarfile.TarInfo.create_pax_global_header(
            draw(st.dictionaries(st.sampled_from(PAX_KEYWORDS), st.text(CHARS, max_size=30), min_size=1, max_size=3))))
    for info, data in draw(st.lists(tar_infos(fmt), min_size=1, max_size=8)):
        header = _header(info, fmt)
        if header is None:
            continue
        if parts and fmt == tarfile.PAX_FORMAT and draw(st.integers(0, 5)) == 0:  # a global header between members
            parts.append(tarfile.TarInfo.create_pax_global_header({draw(st.sampled_from(PAX_KEYWORDS)): "v"}))
        parts.append(header + _pad(data))
        written += 1
    hypothesis.assume(written)  # tarfile cannot read a global header that only the end of the archive follows
    raw = b"".join(parts) + b"\0" * (2 * BLOCK)
    if draw(st.booleans()):
        raw += b"\0" * (-len(raw) % tarfile.RECORDSIZE)
    return name, raw


# ---------------------------------------------------------------- the readers side by side


def _read_all(source: Any) -> bytes:
    chunks = []
    while chunk := source.read(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def tarfile_reading(raw: bytes) -> list[tuple[Any, ...]]:
    """Every member as tarfile reports it, in tether's terms (mode & 0o7777, mtime as a float)."""
    kinds = {"file": tarfile.TarInfo.isreg, "dir": tarfile.TarInfo.isdir, "symlink": tarfile.TarInfo.issym,
             "hardlink": tarfile.TarInfo.islnk}
    found = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            kind = next(k for k, test in kinds.items() if test(info))
            data = None
            if kind == "file":
                extracted = tar.extractfile(info)
                assert extracted is not None
                data = extracted.read()
            found.append((info.name, kind, info.mode & 0o7777, float(info.mtime), info.linkname,
                          info.size if kind == "file" else -1, data))
        rest = raw[tar.offset:]
    assert rest and rest.count(0) == len(rest), "tarfile stopped before the end-of-archive blocks: a bad example"
    return found


def tether_reading(raw: bytes) -> list[tuple[Any, ...]]:
    found = []
    for entry in tar_reader.entries(io.BytesIO(raw)):
        assert isinstance(entry, members.Entry)
        data = None
        if entry.data is not None:
            with entry.data() as source:
                data = _read_all(source)
        found.append((entry.name, entry.type, entry.mode & 0o7777, entry.mtime, entry.target, entry.size, data))
    return found


@hypothesis.settings(max_examples=200, **SETTINGS)
@hypothesis.given(archive=archives_())
def test_every_member_of_a_valid_ustar_gnu_or_pax_archive_reads_as_tarfile_reads_it(archive: tuple[str, bytes]) -> None:
    _, raw = archive
    expected = tarfile_reading(raw)
    with within():
        assert tether_reading(raw) == expected


@pytest.mark.parametrize(("fmt", "size"), [
    ("ustar", 8**11 - 1),  # the largest an octal size field holds
    ("gnu", 8 * 1024**3), ("gnu", 8 * 1024**3 + 3), ("gnu", 2**62 + 1),  # base-256
    ("pax", 8 * 1024**3 + 3), ("pax", 10**18 + 7),  # a pax size record
])
def test_a_member_declaring_8_gib_or_more_reads_as_tarfile_reads_its_header_and_its_short_data_is_an_archive_error(
        fmt: str, size: int) -> None:
    info = tarfile.TarInfo("big/" + "b" * (90 if fmt == "ustar" else 120))  # a GNU long name or pax path too
    info.size, info.mtime, info.mode = size, 1_700_000_000, 0o644
    header = _header(info, FORMATS[fmt])
    assert header is not None
    raw = header + b"x" * 3000  # far less than declared: nothing of that size is ever allocated
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        told = tar.next()
    assert told is not None and told.size == size

    with within():
        entries = tar_reader.entries(io.BytesIO(raw))
        entry = next(entries)
        assert (entry.name, entry.type, entry.size, entry.mtime) == (told.name, "file", size, 1_700_000_000.0)
        assert entry.data is not None
        with pytest.raises(errors.ArchiveError), entry.data() as source:
            _read_all(source)


@pytest.mark.parametrize("size", [
    8 * 1024**3 + 3,
    2**50,  # tarfile's stream mode skipped unread data 10 KiB at a time, even past the end of the stream: hours
])
def test_an_unread_member_whose_size_runs_past_the_end_is_an_archive_error_in_bounded_time(size: int) -> None:
    info = tarfile.TarInfo("skipped")
    info.size = size
    header = _header(info, tarfile.PAX_FORMAT)
    assert header is not None
    with within(5), pytest.raises(errors.ArchiveError):
        for _ in tar_reader.entries(io.BytesIO(header + b"x" * 3000)):
            pass  # the data is not read: the reader must skip it to find the next header


def _ar_member(name: str, data: bytes) -> bytes:
    header = name.encode().ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
    return header + str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")


def test_a_package_member_outside_debroot_whose_size_runs_past_the_end_is_an_archive_error_in_bounded_time(
        tmp_path: Path) -> None:
    inside = b""
    for name, kind in [("./opt/", tarfile.DIRTYPE), ("./opt/acme/", tarfile.DIRTYPE), ("./opt/acme/a", tarfile.REGTYPE)]:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, 2 if kind == tarfile.REGTYPE else 0
        inside += _pad((_header(info, tarfile.PAX_FORMAT) or b"") + (b"ab" if kind == tarfile.REGTYPE else b""))
    skipped = tarfile.TarInfo("./usr/share/big")
    skipped.size = 2**50
    data = inside + (_header(skipped, tarfile.PAX_FORMAT) or b"") + b"x" * 3000
    control = tarfile.TarInfo("./control")
    control.size = 4
    package = b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n") + _ar_member(
        "control.tar", _pad((_header(control, tarfile.PAX_FORMAT) or b"") + b"x\n\n\n") + b"\0" * 1024) + \
        _ar_member("data.tar", data)
    dest = tmp_path / "tree"
    dest.mkdir()
    with within(5), pytest.raises(errors.ArchiveError):
        extracting.extract(io.BytesIO(package), str(dest), fmt="auto", strip=None, owner=None, deb_root="opt/acme",
                           budget=archives.Budget(model.Limits(), lambda: len(package)), spool_dir=str(tmp_path))


# ---------------------------------------------------------------- damaged archives


def _foreign_headers() -> list[bytes]:
    """Header blocks to splice in: extension headers, links out of the tree, a lone zero block."""
    blocks = [b"\0" * BLOCK, tarfile.TarInfo.create_pax_global_header({"path": "../../etc/passwd", "comment": "x"})]
    for fmt in FORMATS.values():
        for name, kind, target in [("l" * 150 + "/long", tarfile.REGTYPE, ""), ("up", tarfile.SYMTYPE, "../" * 40),
                                   ("hard", tarfile.LNKTYPE, "/etc/shadow"), ("dir/", tarfile.DIRTYPE, ""),
                                   ("fifo", tarfile.FIFOTYPE, ""), ("sparse", tarfile.GNUTYPE_SPARSE, "")]:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, target, 600 if kind == tarfile.REGTYPE else 0
            header = _header(info, fmt)
            if header is not None:
                blocks.append(header)
    return blocks


FOREIGN = _foreign_headers()
FIELDS = [(100, 8), (108, 8), (124, 12), (136, 12), (148, 8), (156, 1), (345, 155), (0, 100), (157, 100)]
FIELD_VALUES = [b"\x80" + b"\xff" * 11, b"\xff" * 12, b"\x80" + b"\0" * 10 + b"\x01", b"7" * 12, b"0000 12 34\0",
                b"-0000001\0", b"\0" * 12, b"9" * 12, b"../../../../etc/passwd\0", b"/abs\0", b"x" * 155]
PAX_VALUES = [b"99999999999999999999999", b"-5", b"1e400", b"nan", b"inf", b"../../x", b"/etc/passwd", b"\xff\xfe",
              b"0", b"", b"\n", b"18446744073709551616"]
PAX_RECORD = re.compile(rb"\d+ (path|linkpath|size|mtime|hdrcharset|GNU\.sparse\.[a-z]+)=")


def _checksummed(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()


def _header_offsets(raw: bytes | bytearray) -> list[int]:
    """Offsets of the blocks that carry a valid header checksum (member and extension headers)."""
    found = []
    for offset in range(0, len(raw) - BLOCK + 1, BLOCK):
        block = bytes(raw[offset:offset + BLOCK])
        if block.count(0) == BLOCK:
            continue
        try:
            stored = int(block[148:156].rstrip(b"\0 ").decode() or "-1", 8)
        except ValueError:
            continue
        if stored == sum(block[:148]) + 8 * 32 + sum(block[156:]):
            found.append(offset)
    return found


def damage(data: st.DataObject, raw: bytes) -> bytes:
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["bytes", "field", "field", "pax", "splice", "drop", "duplicate", "truncate"]))
        headers = _header_offsets(damaged)
        if op == "bytes" or (op in ("field", "duplicate") and not headers):
            for _ in range(data.draw(st.integers(1, 8))):
                damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
        elif op == "field":  # a numeric or name field of a header set to an extreme, usually with a valid checksum
            offset = data.draw(st.sampled_from(headers))
            start, width = data.draw(st.sampled_from(FIELDS))
            block = damaged[offset:offset + BLOCK]
            block[start:start + width] = data.draw(st.sampled_from(FIELD_VALUES)).ljust(width, b"\0")[:width]
            if start != 148 and data.draw(st.integers(0, 4)):
                _checksummed(block)
            damaged[offset:offset + BLOCK] = block
        elif op == "pax":  # a pax record's value overwritten in place
            records = list(PAX_RECORD.finditer(damaged))
            if records:
                at = data.draw(st.sampled_from(records)).end()
                value = data.draw(st.sampled_from(PAX_VALUES))
                end = damaged.find(b"\n", at)
                room = len(value) if end < 0 else min(len(value), end - at)
                damaged[at:at + room] = value[:room]
        elif op == "splice":  # a foreign header inserted at a block boundary
            at = data.draw(st.integers(0, len(damaged) // BLOCK)) * BLOCK
            damaged[at:at] = data.draw(st.sampled_from(FOREIGN))
        elif op == "drop":
            at = data.draw(st.integers(0, max(0, len(damaged) // BLOCK - 1))) * BLOCK
            del damaged[at:at + BLOCK * data.draw(st.integers(1, 3))]
        elif op == "duplicate":  # a header of this archive again, elsewhere
            source = data.draw(st.sampled_from(headers))
            at = data.draw(st.integers(0, len(damaged) // BLOCK)) * BLOCK
            damaged[at:at] = damaged[source:source + BLOCK]
        else:
            damaged = damaged[: data.draw(st.integers(0, len(damaged)))]
        if not damaged:
            break
    return bytes(damaged)


def _tree(root: Path) -> dict[str, str]:
    """Every path below `root`, without following symlinks: 'dir', 'file' or 'symlink'."""
    found = {}
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(parent, name)
            rel = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            found[rel] = "symlink" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "file"
    return found


def _extract(raw: bytes, dest: Path, spool: Path) -> str:
    return extracting.extract(io.BytesIO(raw), str(dest), fmt="auto", strip=0, owner=None,
                              budget=archives.Budget(model.Limits(), lambda: len(raw)), spool_dir=str(spool))


@hypothesis.settings(max_examples=250, **SETTINGS)
@hypothesis.given(archive=st.one_of(archives_(), st.deferred(lambda: trees())), data=st.data())
def test_a_damaged_archive_is_read_to_the_end_or_refused_as_an_archive_error_never_anything_else_nor_forever(
        tmp_path: Path, archive: tuple[str, bytes], data: st.DataObject) -> None:
    damaged = damage(data, archive[1])
    yielded: list[members.Entry] = []
    refused = False
    with within():
        try:
            for entry in tar_reader.entries(io.BytesIO(damaged)):
                assert entry.type in ("file", "dir", "symlink", "hardlink"), entry
                assert isinstance(entry.name, str) and isinstance(entry.target, str) and isinstance(entry.mode, int)
                assert isinstance(entry.mtime, float) and math.isfinite(entry.mtime)
                assert (entry.data is not None) == (entry.type == "file"), entry
                if entry.data is not None:
                    with entry.data() as source:
                        assert len(_read_all(source)) == entry.size
                yielded.append(entry)
        except errors.ArchiveError as exc:
            assert "\n" not in str(exc)
            refused = True
    kept = []
    for entry in yielded:
        try:
            name = member_names.clean_name(entry.name, 0)
        except errors.ArchiveError:
            continue
        kept.append(name)

    dest = Path(tempfile.mkdtemp(dir=tmp_path))
    with within():
        try:
            _extract(damaged, dest, tmp_path)
        except errors.ArchiveError as exc:
            assert "\n" not in str(exc)
            hypothesis.event(f"read {'refused' if refused else 'to the end'}, extraction refused")
            return
    hypothesis.event("read to the end, extracted")
    assert not refused, "extract wrote an archive that tar_reader.entries refuses"
    on_disk = _tree(dest)
    wanted = {prefix for name in kept if name for prefix in _prefixes(name)}
    assert set(on_disk) == wanted  # nothing but the names tar_reader.entries yielded, each through clean_name
    for rel, kind in on_disk.items():
        path = dest / rel
        if kind == "symlink":
            assert os.path.realpath(path).startswith(str(dest.resolve()) + os.sep) or \
                os.path.realpath(path) == str(dest.resolve()), rel
        else:
            assert path.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o022) == 0, rel


def _prefixes(name: str) -> Iterator[str]:
    parts = name.split("/")
    for index in range(1, len(parts) + 1):
        yield "/".join(parts[:index])


# ---------------------------------------------------------------- extraction of valid archives


COMPONENT = st.text(CHARS.replace(".", "") + "._", min_size=1, max_size=30).filter(lambda c: c not in (".", ".."))
LONG_COMPONENT = st.integers(60, 140).map(lambda n: "c" * n)


@st.composite
def trees(draw: Draw) -> tuple[str, bytes]:
    """A valid archive whose every member tether extracts: clean names, earlier parents, links inside."""
    name = draw(st.sampled_from(list(FORMATS)))
    fmt = FORMATS[name]
    dot = "./" if draw(st.booleans()) else ""
    dirs: list[str] = [""]
    taken: set[str] = set()
    files: list[str] = []
    parts = []
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(dirs))
        below = draw(st.lists(st.one_of(COMPONENT, COMPONENT, LONG_COMPONENT), min_size=1, max_size=4))
        path = "/".join(p for p in [parent, *below] if p)
        if any("/".join(path.split("/")[:i]) in taken for i in range(1, path.count("/") + 2)) or \
                any(other.startswith(path + "/") for other in taken):
            continue
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "hardlink"] if files else ["file", "dir", "symlink"]))
        info = tarfile.TarInfo(dot + path)
        mode = draw(st.integers(0, 0o7777))
        info.mode = mode if kind == "dir" else mode & ~(stat.S_ISUID | stat.S_ISGID)
        info.mtime = draw(st.one_of(st.sampled_from([0, -1, 0.5, 1_700_000_000.25]), st.integers(-(2**31), 2**31 - 1),
                                    st.floats(-(2**31), 2**31 - 1, allow_nan=False)))  # what any file system stores
        data = b""
        if kind == "file":
            info.type = tarfile.REGTYPE
            data = random.Random(draw(st.integers(0, 2**32))).randbytes(draw(st.one_of(st.sampled_from(SIZES),
                                                                                       st.integers(0, 2048))))
            info.size = len(data)
        elif kind == "dir":
            info.type = tarfile.DIRTYPE
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, dot + draw(st.sampled_from(files))
        else:
            info.type = tarfile.SYMTYPE
            here = os.path.dirname(path) or "."
            info.linkname = draw(st.one_of(
                st.sampled_from(sorted(taken) or ["x"]).map(lambda other, here=here: os.path.relpath(other, here)),
                st.integers(1, 250).map(lambda n: _fill("t/", n).rstrip("/") or "t")))  # dangling, long, inside
        header = _header(info, fmt)
        if header is None:
            continue
        parts.append(header + _pad(data))
        taken.add(path)
        if kind == "dir":
            dirs.append(path)
        if kind in ("file", "hardlink"):
            files.append(path)
    hypothesis.assume(parts)
    return name, b"".join(parts) + b"\0" * (2 * BLOCK)


@hypothesis.settings(max_examples=100, **SETTINGS)
@hypothesis.given(archive=trees())
def test_a_valid_archive_extracts_to_exactly_the_tree_tarfile_describes(tmp_path: Path,
                                                                        archive: tuple[str, bytes]) -> None:
    _, raw = archive
    dest = Path(tempfile.mkdtemp(dir=tmp_path))
    with within():
        root = _extract(raw, dest, tmp_path)
    assert root == str(dest)

    wanted: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            name = "/".join(p for p in info.name.split("/") if p not in ("", "."))
            for parent in list(_prefixes(name))[:-1]:
                wanted.setdefault(parent, "dir")
            path = dest / name
            st_ = path.lstat()
            if info.isdir():
                wanted[name] = "dir"
                assert stat.S_IMODE(st_.st_mode) == modes.on_disk("dir", info.mode), name
            elif info.issym():
                wanted[name] = "symlink"
                assert os.readlink(path) == info.linkname, name
            elif info.islnk():
                wanted[name] = "file"
                target = dest / "/".join(p for p in info.linkname.split("/") if p not in ("", "."))
                assert st_.st_ino == target.lstat().st_ino, name
            else:
                wanted[name] = "file"
                extracted = tar.extractfile(info)
                assert extracted is not None
                assert path.read_bytes() == extracted.read(), name
                assert stat.S_IMODE(st_.st_mode) == modes.on_disk("file", info.mode), name
                assert abs(st_.st_mtime_ns / 1e9 - info.mtime) < 1e-5, (name, st_.st_mtime_ns, info.mtime)
    assert _tree(dest) == wanted
    for rel, kind in wanted.items():
        if kind == "dir":
            assert stat.S_IMODE((dest / rel).lstat().st_mode) == 0o755, rel  # implied parents too
