"""Archive members in one form for tar and zip, read front to back."""

from __future__ import annotations

import dataclasses
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import IO, Self

from controller import archives, errors

MAX_LINK = 4096


@dataclasses.dataclass
class Entry:
    """One archive member in a form common to tar and zip."""

    name: str
    type: str  # file | dir | symlink | hardlink
    mode: int
    mtime: float = 0.0
    target: str = ""  # link target for symlink and hardlink
    data: Callable[[], IO[bytes]] | None = None


class _StrictTarInfo(tarfile.TarInfo):
    """Takes only tar's end-of-archive blocks for the end of the archive.

    tarfile quietly ends an archive at a missing, short or damaged header; in
    a stream that is how a truncated plain tar or tar.zst looks (zstd and tar
    have no end marker of their own that the readers check).
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> Self:
        try:
            return super().fromtarfile(archive)
        except tarfile.HeaderError as exc:
            if isinstance(exc, tarfile.EOFHeaderError):  # type: ignore[attr-defined]  # the end-of-archive blocks
                raise
            raise tarfile.ReadError(f"{exc} where a member header or tar's end-of-archive blocks should be") from exc


def tar_entries(stream: IO[bytes]) -> Iterator[Entry]:
    """The members of a tar stream, read once, front to back."""
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_StrictTarInfo) as tar:
            for member in tar:
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
                yield Entry(member.name, kind, member.mode, float(member.mtime), member.linkname, data)
    except tarfile.TarError as exc:
        raise errors.ArchiveError(f"the archive is truncated or not a valid tar file: {exc}") from exc


def _once(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def open_data() -> IO[bytes]:
        data = tar.extractfile(member)
        assert data is not None
        return data

    return open_data


def zip_entries(path: str, budget: archives.Budget) -> Iterator[Entry]:
    """The members of a zip file; their data is charged to `budget` as it is read."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > budget.limits.max_members:
                budget.add_member(infos[budget.limits.max_members].filename)  # raises
            for info in infos:
                if info.flag_bits & 0x1:
                    raise errors.ArchiveError(f"member {info.filename!r} is encrypted; tether cannot extract it")
                unix = info.external_attr >> 16 if info.create_system == 3 else 0
                kind = "dir" if info.is_dir() else "file"
                if stat.S_ISLNK(unix):
                    kind = "symlink"
                elif unix and not (stat.S_ISREG(unix) or stat.S_ISDIR(unix)):
                    raise errors.ArchiveError(f"member {info.filename!r} is a special file; only files, directories and links are allowed")
                target = ""
                if kind == "symlink":
                    with archives.Metered(archive.open(info), budget) as link:
                        target = link.read(MAX_LINK + 1).decode("utf-8", "surrogateescape")
                yield Entry(info.filename, kind, unix & 0o7777, _zip_time(info), target,
                            _zip_data(archive, info, budget))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise errors.ArchiveError(f"the archive is truncated or not a valid zip file: {exc}") from exc


def _zip_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: archives.Budget) -> Callable[[], IO[bytes]]:
    return lambda: archives.Metered(archive.open(info), budget)  # type: ignore[return-value]


def _zip_time(info: zipfile.ZipInfo) -> float:
    return time.mktime((*info.date_time, 0, 0, -1))
