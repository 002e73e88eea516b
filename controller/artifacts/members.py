"""Archive members in one form for tar and zip, read front to back; the zip side (tar: tar_reader.py)."""

from __future__ import annotations

import dataclasses
import re
import stat
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import IO

from controller import errors
from controller.artifacts import archives, zip_directory

MAX_LINK = 4096
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
    content: bytes | memoryview | None = None  # all of the data, where the reader had it at hand (else read `data`)


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
