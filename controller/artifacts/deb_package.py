"""Debian binary packages (deb(5)): the `ar` container read as a stream, its data member handed on.

A package is `!<arch>\\n` followed by members, each a 60-byte header and its
data padded to an even length: `debian-binary` (the format version, 2.x),
`control.tar[.gz|.xz|.zst]` (the control file and the maintainer scripts) and
`data.tar[.gz|.xz|.zst]` (the files). Every header is validated before its
member is read and no member may claim more than limits.maxBytes; the control
member is skipped unread (tether never runs maintainer scripts), members whose
names start with `_` (signatures, reserved by deb(5)) are skipped, and
anything else, including bytes after the last member, is refused.
"""

from __future__ import annotations

import io
import logging
import re

from controller import errors
from controller.artifacts import archives

log = logging.getLogger(__name__)
MAGIC = b"!<arch>\n"
HEADER_SIZE = 60
MAX_VERSION_BYTES = 4096
SKIP_CHUNK = 1024 * 1024
DATA_FORMATS = {"data.tar": "tar", "data.tar.gz": "tar.gz", "data.tar.xz": "tar.xz", "data.tar.zst": "tar.zst"}
CONTROL = re.compile(r"control\.tar(\.[A-Za-z0-9]+)?")
NAME = re.compile(rb"[\x21-\x7e]+/? *")  # printable, no spaces inside; GNU ar ends names with '/'
DECIMAL = re.compile(rb"[0-9]* *")
OCTAL = re.compile(rb"[0-7]* *")
SIZE = re.compile(rb"[0-9]+ *")
VERSION = re.compile(rb"2\.[0-9]+\n")


class _Member(io.RawIOBase):
    """The data of one member: exactly `size` bytes of the package stream; an early end is an error."""

    def __init__(self, source: archives.Readable, name: str, size: int) -> None:
        self._source, self.name, self.size, self.left = source, name, size, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self.left)
        if want == 0:
            return 0
        data = self._source.read(want)
        if not data:
            raise errors.ArchiveError(f"the package ends inside its member {self.name!r}, after "
                                      f"{self.size - self.left} of the {self.size} bytes its header gives; it is "
                                      "truncated or corrupt")
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)

    def skip(self) -> None:
        while self.read(SKIP_CHUNK):
            pass


class Package:
    """One package read front to back: `data()` up to the data member, `finish()` after it."""

    def __init__(self, source: archives.Readable, max_bytes: int) -> None:
        self._source = source
        self._max_bytes = max_bytes
        self._offset = 0
        self._member: _Member | None = None
        self._pending = ("", 0)
        self.data_name = ""
        magic = self._exactly(len(MAGIC))
        if magic != MAGIC:
            raise errors.ArchiveError("the artifact does not start with the ar magic '!<arch>\\n', so it is not a "
                                      "Debian package; check the URL, or set source.format")

    def data(self) -> tuple[io.RawIOBase, str]:
        """The data member's raw stream and its format (tar, tar.gz, tar.xz or tar.zst)."""
        name = self._next()
        if name != "debian-binary":
            raise errors.ArchiveError(f"the package's first member is {name!r}, not 'debian-binary'; it is not a "
                                      "Debian package" if name is not None else "the package has no members")
        member = self._open("debian-binary", MAX_VERSION_BYTES)
        version = member.read(MAX_VERSION_BYTES)
        self._close(member)
        if not VERSION.match(version):
            raise errors.ArchiveError(f"the package's format version is {version[:16]!r}; tether reads Debian "
                                      "packages of format 2.x (as dpkg-deb builds them)")
        control = None
        while True:
            name = self._next()
            if name is None:
                raise errors.ArchiveError("the package has no data member (data.tar, data.tar.gz, data.tar.xz or "
                                          "data.tar.zst); there is nothing to deploy")
            if name.startswith("_"):
                self._close(self._open(name, self._max_bytes))
            elif CONTROL.fullmatch(name) and control is None:
                control = name
                log.info("The package's %s is skipped: tether does not run maintainer scripts (preinst, postinst, "
                         "prerm, postrm) and installs no control files; it deploys the files of the data member "
                         "only.", name)
                self._close(self._open(name, self._max_bytes))
            elif name in DATA_FORMATS and control is not None:
                self.data_name, fmt = name, DATA_FORMATS[name]
                self._member = self._open(name, self._max_bytes)
                head = archives.read_head(self._member)
                try:
                    found: str | None = archives.detect(head)
                except errors.ArchiveError:
                    found = None
                if found != fmt:
                    raise errors.ArchiveError(f"the package's {name} is {found or 'not an archive'}, not the {fmt} its "
                                              "name says; the package is corrupt or hostile")
                return archives.Prefixed(head, self._member), fmt
            elif name.startswith("data.tar"):
                raise errors.ArchiveError(
                    f"the package's data member is {name!r}; tether reads data.tar, data.tar.gz, data.tar.xz and "
                    "data.tar.zst, after a control member" if control else
                    f"the package has {name!r} before any control member; it is not a valid Debian package")
            else:
                raise errors.ArchiveError(f"the package has the unexpected member {name!r} before its data member; "
                                          "tether reads debian-binary, control.tar* and data.tar* only")

    def finish(self) -> None:
        """Read the rest of the data member and the members after it; refuse a second data member or garbage."""
        assert self._member is not None
        self._close(self._member)
        while (name := self._next()) is not None:
            if name.startswith("data.tar") or CONTROL.fullmatch(name):
                what = "a second data member" if name.startswith("data.tar") else "a control member after the data"
                raise errors.ArchiveError(f"the package has {what} ({self.data_name!r}, then {name!r}); tether "
                                          "refuses an ambiguous package")
            if not name.startswith("_"):
                raise errors.ArchiveError(f"the package has the unexpected member {name!r} after its data member; "
                                          "only members whose names start with '_' may follow it")
            self._close(self._open(name, self._max_bytes))

    def _exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self._source.read(count - len(data))
            if not chunk:
                break
            data += chunk
        self._offset += len(data)
        return data

    def _next(self) -> str | None:
        """The name of the next member after validating its header; None at the end of the package."""
        start = self._offset
        header = self._exactly(HEADER_SIZE)
        if not header:
            return None
        if len(header) < HEADER_SIZE:
            raise errors.ArchiveError(f"the package has {len(header)} bytes at offset {start} after its last member "
                                      "that are not a member header; it is truncated or has trailing garbage")
        name, size = header[:16], header[48:58]
        problem = ("its terminator is not '`\\n'" if header[58:60] != b"`\n"
                   else "its name is not printable ASCII" if not NAME.fullmatch(name)
                   else "its size is not a decimal number" if not SIZE.fullmatch(size)
                   else "its time, owner or group is not a decimal number"
                   if not all(DECIMAL.fullmatch(f) for f in (header[16:28], header[28:34], header[34:40]))
                   else "its mode is not an octal number" if not OCTAL.fullmatch(header[40:48])
                   else None)
        if problem:
            raise errors.ArchiveError(f"the package's member header at offset {start} is not a valid ar header "
                                      f"({problem}): {header[:16]!r}...; the package is corrupt or hostile")
        raw = name.rstrip(b" ")
        # GNU ar ends a name with '/'; its symbol table '/' and long-name table '//' keep theirs, to be named plainly
        shown = raw if raw in (b"/", b"//") else raw.removesuffix(b"/")
        self._pending = (shown.decode("ascii"), int(size))
        return self._pending[0]

    def _open(self, name: str, most: int) -> _Member:
        size, limit = self._pending[1], min(most, self._max_bytes)
        if size > limit:
            which = "limits.maxBytes" if limit == self._max_bytes else f"the most a {name} may have"
            raise errors.ArchiveError(f"the package's member {name!r} claims {size} bytes, more than {limit} "
                                      f"({which}); refusing it unread")
        return _Member(self, name, size)

    def read(self, size: int = -1, /) -> bytes:  # what a member reads through, counted
        data = self._source.read(size)
        self._offset += len(data)
        return data

    def _close(self, member: _Member) -> None:
        """Skip what is left of `member` and its padding byte."""
        member.skip()
        if member.size % 2 and self._exactly(1) != b"\n":
            raise errors.ArchiveError(f"the package's member {member.name!r} is not followed by the padding byte "
                                      "'\\n' that ar puts after an odd-sized member; it is truncated or corrupt")
