"""tether's own reader of a tar stream (ustar, GNU and pax headers), front to back, from one buffer.

It reads a valid archive as Python's tarfile does (tests/test_tar_reading_fuzz.py
holds it to that, with generated archives in every format), at a fraction of
the cost per member: a header is sliced from a large buffer, only the
fields tether uses are decoded (of pax records: path, linkpath, size, mtime),
and a member whose data is in that buffer comes with it (Entry.content, a
view of the buffer: no read calls).
Where tarfile is lenient, or where tar implementations disagree, it refuses:
only tar's end-of-archive block ends the archive (a missing, short or damaged
header is a truncated or corrupt archive, which is how a truncated plain tar or
tar.zst looks); a pax number that is not one; two headers that set the same
field of one member (GNU tar takes the last, tarfile the first); a link or
directory header with data after it (tarfile reads that data as the next
header, GNU tar skips it); a pax global header that sets anything but mtime.
Bytes 345-500 are a name prefix only under POSIX ustar magic (old GNU headers
keep times there). The headers before a member are bounded (MAX_HEADER bytes,
MAX_HEADERS headers; global headers MAX_HEADER bytes per archive) before they
are read. Sparse files, devices and unknown member types are refused.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterator
from typing import IO, TypeVar

from controller import errors
from controller.artifacts import archives, members

BLOCK = 512
CHUNK = 1024 * 1024
ZERO = bytes(BLOCK)
MAX_HEADER = 1024 * 1024  # bytes of pax and GNU long-name headers per member, and of global headers per archive
MAX_HEADERS = 16  # headers before one member
MAX_TIME = 2.0**40  # seconds either side of 1970 (some 35,000 years): a larger modification time is corrupt
FILE_TYPES = (b"0", b"\0", b"7")  # regular, old regular, contiguous (a regular file for every reader)
KINDS = {b"5": "dir", b"2": "symlink", b"1": "hardlink"}
LONG_NAME, LONG_LINK, PAX, PAX_GLOBAL, SOLARIS_PAX, SPARSE = b"L", b"K", b"x", b"g", b"X", b"S"
HEADER_KINDS = {PAX: "pax extended", PAX_GLOBAL: "pax global", SOLARIS_PAX: "Solaris extended",
                LONG_NAME: "GNU long name", LONG_LINK: "GNU long link"}
PAX_RECORD = re.compile(rb"(\d{1,18}) ([^=]+)=")  # bounded digits: int() of a long digit run is slow or refused
PAX_SIZE = re.compile("[0-9]{1,20}", re.ASCII)
PAX_TIME = re.compile("-?[0-9]{1,20}(?:\\.[0-9]{1,20})?(?:[eE][-+]?[0-9]{1,3})?", re.ASCII)  # as str(float)
PAX_USED = (b"path", b"linkpath", b"size", b"mtime")  # the pax keys tether reads; the others are skipped
PAX_FIELDS = {"path": "name", "linkpath": "target", "size": "size", "mtime": "mtime"}
USTAR = b"ustar\0"  # POSIX ustar magic: only then are bytes 345-500 a name prefix
Number = TypeVar("Number", int, float)
SPARSE_MESSAGE = "is a GNU sparse file; tether does not extract sparse files: build the artifact without --sparse"


def entries(source: archives.Readable) -> Iterator[members.Entry]:
    """The members of the tar stream `source`, each to be used (its data read, or not) before the next."""
    return _Reader(source).entries()


def _truncated() -> errors.ArchiveError:
    return errors.ArchiveError("the archive is truncated or not a valid tar file: unexpected end of data")


def _number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (first byte 0x80, or 0xff for a negative number)."""
    if field[0] in (0o200, 0o377):
        value = int.from_bytes(field[1:], "big")
        return value - 256 ** (len(field) - 1) if field[0] == 0o377 else value
    try:  # the usual field, digits then NULs or spaces: where int() takes it, it gives what the long way gives
        return int(field.rstrip(b"\0 "), 8)
    except ValueError:
        pass
    try:
        return int(field.split(b"\0", 1)[0].decode("ascii").strip() or "0", 8)
    except ValueError:
        raise errors.ArchiveError("the archive is not a valid tar file: a header has an invalid number field") from None


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


class _Data:
    """One member's data, read from the reader's buffer (and straight from the stream for large members): each
    read is a view of the buffer, not a copy (bytes-like, which is all os.write and hashlib need)."""

    def __init__(self, reader: _Reader) -> None:
        self._reader = reader

    def __enter__(self) -> _Data:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self, size: int = -1) -> bytes | memoryview:
        return self._reader.data(size)


class _Reader:
    def __init__(self, source: archives.Readable) -> None:
        self._source = source
        self._buf = b""
        self._pos = 0
        self._left = 0  # bytes of the current member's data not read yet
        self._padding = 0  # bytes of padding after them
        self._globals: dict[str, str | int | float] = {}  # of pax global headers: only mtime is allowed
        self._global_bytes = 0
        data: IO[bytes] = _Data(self)  # type: ignore[assignment]  # the part of IO that the writer uses
        self._data = lambda: data  # every file member's data: the current member's

    def _fill(self, count: int) -> bool:
        """Make `count` bytes available from the position; False at the end of the stream before that."""
        have = len(self._buf) - self._pos
        if have >= count:
            return True
        pieces: list[bytes | memoryview] = [memoryview(self._buf)[self._pos:]] if have else []
        while have < count:
            with archives.untrusted("tar file"):
                chunk = self._source.read(max(CHUNK, count - have))
            if not chunk:
                self._buf, self._pos = b"".join(pieces), 0
                return False
            pieces.append(chunk)
            have += len(chunk)
        self._buf, self._pos = chunk if len(pieces) == 1 else b"".join(pieces), 0
        return True

    def _take(self, count: int) -> bytes:
        if not self._fill(count):
            raise _truncated()
        start = self._pos
        self._pos = start + count
        return self._buf[start:self._pos]

    def _skip(self, count: int) -> None:
        while count:
            have = len(self._buf) - self._pos
            if have >= count:
                self._pos += count
                return
            count -= have
            self._buf, self._pos = b"", 0
            if not self._fill(min(count, CHUNK)):
                raise _truncated()

    def data(self, size: int) -> bytes | memoryview:
        """Up to `size` bytes (all if negative) of the current member's data, a view of the buffer; b"" once it is
        all read."""
        count = self._left if size < 0 else min(size, self._left)
        if count <= 0:
            return b""
        have = len(self._buf) - self._pos
        if have == 0:
            if not self._fill(min(count, CHUNK)) and len(self._buf) == 0:
                raise _truncated()
            have = len(self._buf)
        count = min(count, have)
        start = self._pos
        self._pos = start + count
        self._left -= count
        return self._view(start, self._pos)

    def _view(self, start: int, end: int) -> bytes | memoryview:
        """Bytes `start` to `end` of the buffer, without a copy (the buffer itself when that is all of it)."""
        return self._buf if start == 0 and end == len(self._buf) else memoryview(self._buf)[start:end]

    def entries(self) -> Iterator[members.Entry]:
        first = True
        while True:
            left = self._left + self._padding  # what the caller did not read of the last member, and padding
            if left:
                if len(self._buf) - self._pos >= left:
                    self._pos += left
                else:
                    self._skip(left)
                self._left = self._padding = 0
            entry = self._member(first)
            if entry is None:
                return
            first = False
            yield entry

    def _member(self, first: bool) -> members.Entry | None:
        fields: dict[str, str | int | float] = {}  # what the headers before the member set: name, target, size, mtime
        held = count = described_by = 0  # described_by: headers that describe the member to come (not global)
        while True:
            if len(self._buf) - self._pos < BLOCK and not self._fill(BLOCK):
                if first and not count and len(self._buf) == self._pos:
                    raise errors.ArchiveError("the archive is empty: it holds no tar data")
                raise errors.ArchiveError("the archive is truncated or not a valid tar file: it ends where a member "
                                          "header or tar's end-of-archive blocks should be")
            start = self._pos
            self._pos = start + BLOCK
            header = self._buf[start:self._pos]
            if header == ZERO:
                if described_by:
                    raise errors.ArchiveError("the archive is not a valid tar file: it ends after a pax or GNU "
                                              "long-name header, without the member it describes")
                return None
            _check_sum(header)
            kind = header[156:157]
            size = _number(header[124:136])
            if size < 0:
                raise errors.ArchiveError(f"member {_text(header[0:100])[:80]!r} has a negative size; the archive "
                                          "is corrupt")
            described = HEADER_KINDS.get(kind)
            if described is None:
                return self._entry(header, kind, size, fields)
            spent = self._global_bytes + (size if kind == PAX_GLOBAL else 0)
            if held + size > MAX_HEADER or spent > MAX_HEADER or count >= MAX_HEADERS:
                raise errors.ArchiveError(
                    f"the archive has a {described} header of {size} bytes, after {count} headers of {held} "
                    f"bytes for the same member; tether reads at most {MAX_HEADERS} headers and {MAX_HEADER} bytes of "
                    f"them per member (and {MAX_HEADER} bytes of global headers): refusing a likely header bomb"
                )
            held, count, self._global_bytes = held + size, count + 1, spent
            described_by += kind != PAX_GLOBAL
            body = self._take(size)
            self._skip(-size % BLOCK)
            if kind == LONG_NAME:
                _set(fields, "name", _text(body))
            elif kind == LONG_LINK:
                _set(fields, "target", _text(body))
            elif kind == PAX_GLOBAL:
                records = _pax_records(body)
                if set(records) - {"mtime"}:
                    raise errors.ArchiveError("the archive's pax global header sets a path, link or size for every "
                                              "member; no tar writer does that: the archive is corrupt or hostile")
                self._globals.update(records)
            else:
                for key, value in _pax_records(body).items():
                    _set(fields, PAX_FIELDS[key], value)

    def _entry(self, header: bytes, kind: bytes, size: int, fields: dict[str, str | int | float]) -> members.Entry:
        """The member of `header`, with what its pax and GNU long-name headers and the global pax headers set."""
        name = _text(header[0:100])
        if kind == b"\0" and name.endswith("/"):
            kind = b"5"  # old tar: a directory is a file with a trailing slash
        if kind == SPARSE:
            raise errors.ArchiveError(f"member {name[:80]!r} {SPARSE_MESSAGE}")
        if header[345] and header[257:263] == USTAR:  # the name's prefix (old GNU headers keep times there)
            name = _text(header[345:500]) + "/" + name
        target = _text(header[157:257]) if header[157] else ""
        if fields or self._globals:
            name = str(fields.get("name", name))
            target = str(fields.get("target", target))
            size = int(fields.get("size", size))  # a pax size is digits only: never negative
            mtime = float(fields.get("mtime", self._globals.get("mtime", _number(header[136:148]))))
        else:
            mtime = float(_number(header[136:148]))
        if kind in FILE_TYPES:
            kind_name = "file"
        else:
            kind_name = KINDS.get(kind, "")
            if not kind_name:
                raise errors.ArchiveError(f"member {name!r} is a device, FIFO or other special file; only files, "
                                          "directories and links are allowed")
            if size:
                raise errors.ArchiveError(f"member {name[:80]!r} is a {kind_name} with {size} bytes of data; tar "
                                          "implementations disagree on what follows such a header: the archive is "
                                          "corrupt or hostile")
            if kind_name == "dir":
                name = name.rstrip("/")
        if not math.isfinite(mtime) or abs(mtime) > MAX_TIME:
            raise errors.ArchiveError(f"member {name!r} has the invalid modification time {mtime!r}; "
                                      "the archive is corrupt or hostile")
        mode = _number(header[100:108])
        if kind_name != "file":
            return members.Entry(name, kind_name, mode, mtime, target)
        self._left, self._padding = size, -size % BLOCK
        end = self._pos + size  # a member whose data is in the buffer comes with it (what is not read is skipped)
        content = self._view(self._pos, end) if end <= len(self._buf) else None
        return members.Entry(name, kind_name, mode, mtime, target, self._data, size, content)


def _set(fields: dict[str, str | int | float], key: str, value: str | int | float) -> None:
    if key in fields:
        raise errors.ArchiveError(f"two headers before one member both set its {key} ({str(fields[key])[:80]!r} and "
                                  f"{str(value)[:80]!r}); tar implementations disagree on which one counts: the "
                                  "archive is corrupt or hostile")
    fields[key] = value


def byte_sum(block: bytes) -> int:
    """sum(block) for a 512-byte block, in C: Adler-32's first half is 1 + the sum of the bytes modulo 65521, and
    the sum of 256 bytes is at most 65280."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def _check_sum(header: bytes) -> None:
    stored = _number(header[148:156])
    unsigned = byte_sum(header) - sum(header[148:156]) + 256
    if stored == unsigned:
        return
    signed = unsigned - sum(256 for byte in header[:148] + header[156:] if byte > 127)  # as some old tars sum
    if stored != signed:
        raise errors.ArchiveError("the archive is truncated or not a valid tar file: a member header fails its "
                                  "checksum (bad checksum)")


def _pax_records(body: bytes) -> dict[str, str | int | float]:
    """The records of a pax header ("LENGTH KEYWORD=VALUE\\n") that tether uses (path, linkpath, size, mtime),
    parsed; the rest are skipped. A malformed record or a GNU sparse map is refused.

    Values are UTF-8, undecodable bytes kept as lone surrogates (which is what
    tarfile's hdrcharset handling comes to with a UTF-8 file system encoding);
    extracting refuses such names.
    """
    found: dict[str, str | int | float] = {}
    pos = 0
    while pos < len(body):
        if body[pos] == 0 and body.count(0, pos) == len(body) - pos:  # NUL padding after the last record
            break
        match = PAX_RECORD.match(body, pos)
        end = pos + int(match.group(1)) if match else 0
        if match is None or end <= match.end() or end > len(body) or body[end - 1] != 0x0A:
            raise errors.ArchiveError("the archive is not a valid tar file: a pax header has a malformed record")
        keyword = match.group(2)
        if keyword in PAX_USED:
            key, value = keyword.decode(), body[match.end():end - 1].decode("utf-8", "surrogateescape")
            if key == "size":
                found[key] = _pax_number(key, value, int)
            elif key == "mtime":
                found[key] = _pax_number(key, value, float)
            else:
                found[key] = value.rstrip("/") if key == "path" else value
        elif keyword.startswith(b"GNU.sparse."):
            raise errors.ArchiveError(f"a member {SPARSE_MESSAGE}")
        pos = end
    return found


def _pax_number(key: str, value: str, kind: Callable[[str], Number]) -> Number:
    """A pax size (decimal digits) or mtime (optionally negative, with a fraction or an exponent), as tar
    writers write them; anything else int() or float() would take (signs, spaces, underscores, other digits,
    nan, inf) is refused."""
    if not (PAX_SIZE if key == "size" else PAX_TIME).fullmatch(value):
        raise errors.ArchiveError(f"the archive is not a valid tar file: the pax {key} {value[:40]!r} is not a "
                                  "number")
    return kind(value)
