"""Archive members in one form for tar and zip, read front to back."""

from __future__ import annotations

import dataclasses
import math
import re
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import IO, Self

from controller import errors
from controller.artifacts import archives, zip_directory

MAX_LINK = 4096
MAX_HEADER = 1024 * 1024  # bytes of pax and GNU long-name headers per member, and of global headers per archive
MAX_HEADERS = 16  # headers before one member
MAX_TIME = 2.0**40  # seconds either side of 1970 (some 35,000 years): a larger modification time is corrupt
HEADER_TYPES = {tarfile.XHDTYPE: "pax extended", tarfile.XGLTYPE: "pax global", tarfile.SOLARIS_XHDTYPE: "Solaris extended",
                tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link"}
DRIVE = re.compile(r"[A-Za-z]:")


@dataclasses.dataclass
class Entry:
    """One archive member in a form common to tar and zip."""

    name: str
    type: str  # file | dir | symlink | hardlink
    mode: int
    mtime: float = 0.0
    target: str = ""  # link target for symlink and hardlink
    data: Callable[[], IO[bytes]] | None = None
    size: int = -1  # bytes of data, when the archive says (-1: unknown)


class _StrictTarInfo(tarfile.TarInfo):
    """Takes only tar's end-of-archive blocks for the end of the archive, and bounds every header.

    tarfile quietly ends an archive at a missing, short or damaged header; in
    a stream that is how a truncated plain tar or tar.zst looks (zstd and tar
    have no end marker of their own that the readers check). It also reads a
    pax or GNU long-name header whole, whatever size it claims: the headers of
    one member, and the global headers of the whole archive, are refused beyond
    MAX_HEADER bytes before they are read.
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(archive)
        except tarfile.HeaderError as exc:
            if isinstance(exc, tarfile.EOFHeaderError):  # type: ignore[attr-defined]  # the end-of-archive blocks
                raise
            raise tarfile.ReadError(f"{exc} where a member header or tar's end-of-archive blocks should be") from exc

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size < 0:
            raise errors.ArchiveError(f"member {self.name[:80]!r} has a negative size; the archive is corrupt")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise errors.ArchiveError(f"member {self.name[:80]!r} is a GNU sparse file; tether does not extract "
                                      "sparse files: build the artifact without --sparse")
        kind = HEADER_TYPES.get(self.type)
        if kind is None:
            return super()._proc_member(archive)  # type: ignore[misc, no-any-return]
        held, count = getattr(archive, "_tether_header", (0, 0))
        spent = getattr(archive, "_tether_global", 0) + (self.size if self.type == tarfile.XGLTYPE else 0)
        if held + self.size > MAX_HEADER or spent > MAX_HEADER or count >= MAX_HEADERS:
            raise errors.ArchiveError(
                f"the archive has a {kind} header of {self.size} bytes, after {count} headers of {held} bytes for "
                f"the same member; tether reads at most {MAX_HEADERS} headers and {MAX_HEADER} bytes of them per member "
                f"(and {MAX_HEADER} bytes of global headers): refusing a likely header bomb"
            )
        archive._tether_header = (held + self.size, count + 1)  # type: ignore[attr-defined]
        archive._tether_global = spent  # type: ignore[attr-defined]
        try:
            return super()._proc_member(archive)  # type: ignore[misc, no-any-return]
        finally:
            archive._tether_header = (held, count)  # type: ignore[attr-defined]

    def _proc_gnusparse_10(self, *args: object) -> None:  # its map is read from the data, unbounded
        raise errors.ArchiveError(f"member {self.name[:80]!r} is a GNU sparse file; tether does not extract sparse "
                                  "files: build the artifact without --sparse")


def tar_entries(stream: IO[bytes]) -> Iterator[Entry]:
    """The members of a tar stream, read once, front to back."""
    with archives.untrusted("tar file"):
        tar = tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictTarInfo)  # noqa: SIM115  # closed below
    with tar:
        while True:
            with archives.untrusted("tar file"):
                member = tar.next()
            if member is None:
                return
            tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every member it read; tether needs only this one
            yield _tar_entry(tar, member)


def _tar_entry(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Entry:
    if member.issparse():
        raise errors.ArchiveError(f"member {member.name!r} is a sparse file; tether does not extract sparse files: "
                                  "build the artifact without --sparse")
    if member.isreg():
        kind, data = "file", _once(tar, member)
    elif member.isdir():
        kind, data = "dir", None
    elif member.issym():
        kind, data = "symlink", None
    elif member.islnk():
        kind, data = "hardlink", None
    else:
        raise errors.ArchiveError(
            f"member {member.name!r} is a device, FIFO or other special file; only files, "
            "directories and links are allowed"
        )
    mtime = float(member.mtime)
    if not math.isfinite(mtime) or abs(mtime) > MAX_TIME:
        raise errors.ArchiveError(f"member {member.name!r} has the invalid modification time {member.mtime!r}; "
                                  "the archive is corrupt or hostile")
    return Entry(member.name, kind, member.mode, mtime, member.linkname, data, member.size if data else -1)


class _Data:
    """A member's data, read straight from the tar stream (where tarfile's stream mode leaves it after the
    header); short data is a truncated archive. tarfile's next() skips whatever is left unread."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self._stream, self._left = stream, size

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self, size: int = -1) -> bytes:
        count = self._left if size < 0 else min(size, self._left)
        if count <= 0:
            return b""
        with archives.untrusted("tar file"):
            data = self._stream.read(count)
        if len(data) < count:
            raise errors.ArchiveError("the archive is truncated or not a valid tar file: unexpected end of data")
        self._left -= count
        return data


def _once(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def open_data() -> IO[bytes]:
        stream = tar.fileobj
        assert stream is not None
        with archives.untrusted("tar file"):
            stream.seek(member.offset_data)  # where it is already: a stream seeks forward only
        return _Data(stream, member.size)  # type: ignore[arg-type, return-value]

    return open_data


def zip_entries(path: str, budget: archives.Budget) -> Iterator[Entry]:
    """The members of a zip file; their data is charged to `budget` as it is read."""
    with archives.untrusted("zip file"):
        zip_directory.check(path, budget.limits)
        archive = zipfile.ZipFile(path)
    with archive:
        infos = archive.infolist()
        if len(infos) > budget.limits.max_members:
            budget.add_member(infos[budget.limits.max_members].filename)  # raises
        for info in infos:
            with archives.untrusted("zip file"):
                entry = _zip_entry(archive, info, budget)
            yield entry


def _zip_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: archives.Budget) -> Entry:
    name = info.filename
    if "\\" in name or DRIVE.match(name):
        raise errors.ArchiveError(f"member {name!r} has a backslash or a drive letter in its name; zip names are "
                                  "relative and use '/': repack the artifact")
    if info.flag_bits & 0x1:
        raise errors.ArchiveError(f"member {name!r} is encrypted; tether cannot extract it")
    unix = info.external_attr >> 16 if info.create_system == 3 else 0
    kind = "dir" if info.is_dir() else "file"
    file_type = stat.S_IFMT(unix)
    if file_type == stat.S_IFLNK:
        kind = "symlink"
    elif file_type not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: permission bits only, as zipfile.writestr makes
        raise errors.ArchiveError(f"member {name!r} is a device, FIFO, socket or other special file; only files, "
                                  "directories and links are allowed")
    target = ""
    if kind == "symlink":
        with archives.Metered(archive.open(info), budget) as link:
            target = link.read(MAX_LINK + 1).decode("utf-8", "surrogateescape")
    return Entry(name, kind, unix & 0o7777, _zip_time(info), target, _zip_data(archive, info, budget))


def _zip_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: archives.Budget) -> Callable[[], IO[bytes]]:
    def open_data() -> IO[bytes]:
        with archives.untrusted("zip file"):
            return archives.Metered(archive.open(info), budget)  # type: ignore[return-value]

    return open_data


def _zip_time(info: zipfile.ZipInfo) -> float:
    return time.mktime((*info.date_time, 0, 0, -1))
