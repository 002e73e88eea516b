"""Safe extraction of tar and zip archives into a fresh directory.

Every member goes through tether's own filter first (names, types, links,
modes, limits), then through `tarfile.data_filter` where Python has it, and
is written with O_EXCL|O_NOFOLLOW below a directory that tether just created
and that no archive member can redirect.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from typing import IO

from controller import archives, errors

MAX_NAME = 4096
MAX_COMPONENT = 255
CHUNK = 1024 * 1024
Owner = tuple[int, int] | None


@dataclasses.dataclass
class Entry:
    """One archive member in a form common to tar and zip."""

    name: str
    type: str  # file | dir | symlink | hardlink
    mode: int
    mtime: float = 0.0
    target: str = ""  # link target for symlink and hardlink
    data: Callable[[], IO[bytes]] | None = None


def clean_name(raw: str, strip: int) -> str | None:
    """The relative path a member may be written to, or None for the archive root."""
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise errors.ArchiveError(f"member {raw!r} has a control character in its name")
    if raw.startswith("/"):
        raise errors.ArchiveError(f"member {raw!r} has an absolute name; archives must be relative")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise errors.ArchiveError(f"member {raw!r} has '..' in its name; it would escape the deployment")
    if len(raw.encode("utf-8", "surrogateescape")) > MAX_NAME or any(
        len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT for p in parts
    ):
        raise errors.ArchiveError(f"member {raw[:80]!r}... has a name longer than the filesystem allows")
    parts = parts[strip:]
    return "/".join(parts) if parts else None


class Writer:
    """Writes entries below `dest`, refusing anything that could escape or surprise."""

    def __init__(self, dest: str, strip: int | None, owner: Owner, budget: archives.Budget,
                 checkpoint: Callable[[str], None]) -> None:
        self.dest = dest
        self.strip = strip
        self.owner = owner
        self.budget = budget
        self.checkpoint = checkpoint
        self.dirs: dict[str, int] = {}  # directory -> mode to apply at the end
        self.files: set[str] = set()
        self.symlinks: set[str] = set()

    def _chown(self, path: str) -> None:
        if self.owner is not None:
            os.chown(path, *self.owner, follow_symlinks=False)

    def _parents(self, name: str, raw: str) -> None:
        parts = name.split("/")[:-1]
        for index in range(len(parts)):
            parent = "/".join(parts[: index + 1])
            if parent in self.symlinks:
                raise errors.ArchiveError(f"member {raw!r} would be written through the symlink {parent!r}")
            if parent in self.files:
                raise errors.ArchiveError(f"member {raw!r} is below {parent!r}, which is a file")
            if parent not in self.dirs:
                path = os.path.join(self.dest, parent)
                os.mkdir(path, 0o700)
                self._chown(path)
                self.dirs[parent] = 0o755

    def add(self, entry: Entry) -> None:
        self.budget.add_member(entry.name)
        if entry.mode & (stat.S_ISUID | stat.S_ISGID):
            raise errors.ArchiveError(f"member {entry.name!r} is setuid or setgid; tether does not install such files")
        strip = self.strip or 0
        name = clean_name(entry.name, strip)
        if name is None:
            if entry.type != "dir":
                raise errors.ArchiveError(f"member {entry.name!r} is not below {strip} leading directories (stripComponents)")
            return
        if name in self.files or name in self.symlinks or (name in self.dirs and entry.type != "dir"):
            raise errors.ArchiveError(f"member {entry.name!r} appears twice in the archive")
        self._parents(name, entry.name)
        link = (clean_name(entry.target, strip) or "") if entry.type == "hardlink" else entry.target
        mode = _filtered_mode(entry, name, link, self.dest)
        path = os.path.join(self.dest, name)
        if entry.type == "dir":
            if name not in self.dirs:
                os.mkdir(path, 0o700)
                self._chown(path)
            self.dirs[name] = mode
        elif entry.type == "file":
            self._write_file(path, entry, mode)
            self.files.add(name)
        elif entry.type == "symlink":
            self._symlink(path, name, entry)
        else:
            target = link
            if target not in self.files:
                raise errors.ArchiveError(
                    f"member {entry.name!r} is a hardlink to {entry.target!r}, which is not an earlier file of the archive"
                )
            os.link(os.path.join(self.dest, target), path, follow_symlinks=False)
            self.files.add(name)

    def _write_file(self, path: str, entry: Entry, mode: int) -> None:
        assert entry.data is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb", buffering=0) as out, entry.data() as source:
            shutil.copyfileobj(source, out, CHUNK)
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            os.fchmod(fd, mode)
            os.utime(fd, (entry.mtime, entry.mtime))
        if len(self.files) == 0:
            self.checkpoint("extracting")

    def _symlink(self, path: str, name: str, entry: Entry) -> None:
        target = entry.target
        if not target or target.startswith("/") or "\0" in target:
            raise errors.ArchiveError(f"member {entry.name!r} is a symlink to {target!r}; only relative symlinks are allowed")
        resolved = os.path.normpath(os.path.join(os.path.dirname(name), target))
        if resolved == ".." or resolved.startswith("../"):
            raise errors.ArchiveError(f"member {entry.name!r} is a symlink to {target!r}, outside the deployment")
        os.symlink(target, path)
        self._chown(path)
        self.symlinks.add(name)

    def finish(self, auto_strip: bool) -> str:
        """Check symlinks, apply directory modes; return the root of the extracted tree."""
        root = self.dest
        if auto_strip:
            top = os.listdir(self.dest)
            if len(top) == 1 and top[0] in self.dirs:
                root = os.path.join(self.dest, top[0])
        real_root = os.path.realpath(root)
        for name in self.symlinks:
            resolved = os.path.realpath(os.path.join(self.dest, name))
            if resolved != real_root and not resolved.startswith(real_root + "/"):
                raise errors.ArchiveError(f"member {name!r} is a symlink that resolves outside the deployment")
        for name in sorted(self.dirs, key=lambda d: -d.count("/")):
            os.chmod(os.path.join(self.dest, name), self.dirs[name])
        return root


def _filtered_mode(entry: Entry, name: str, link: str, dest: str) -> int:
    """The member's mode after tarfile.data_filter (or an equivalent where Python lacks it)."""
    default = 0o755 if entry.type == "dir" else 0o644
    mode = stat.S_IMODE(entry.mode) or default
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None:
        return (mode & 0o755) | (0o700 if entry.type == "dir" else 0o600)
    info = tarfile.TarInfo(name)
    info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                 "hardlink": tarfile.LNKTYPE}[entry.type]
    info.mode = mode
    info.linkname = link
    try:
        filtered = data_filter(info, dest)
    except tarfile.FilterError as exc:
        raise errors.ArchiveError(f"member {entry.name!r} was refused by tarfile's data filter: {exc}") from exc
    return stat.S_IMODE(filtered.mode if filtered.mode is not None else default)


def tar_entries(stream: IO[bytes]) -> Iterator[Entry]:
    """The members of a tar stream, read once, front to back."""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
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
                        target = link.read(MAX_NAME + 1).decode("utf-8", "surrogateescape")
                yield Entry(info.filename, kind, unix & 0o7777, _zip_time(info), target,
                            _zip_data(archive, info, budget))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise errors.ArchiveError(f"the archive is truncated or not a valid zip file: {exc}") from exc


def _zip_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: archives.Budget) -> Callable[[], IO[bytes]]:
    return lambda: archives.Metered(archive.open(info), budget)  # type: ignore[return-value]


def _zip_time(info: zipfile.ZipInfo) -> float:
    return time.mktime((*info.date_time, 0, 0, -1))


def extract(source: archives.Readable, dest: str, *, fmt: str, strip: int | None, budget: archives.Budget,
            owner: Owner, spool_dir: str, checkpoint: Callable[[str], None] = lambda step: None) -> str:
    """Extract the archive read from `source` into the empty directory `dest`.

    Returns the root of the extracted tree (below `dest` when `strip` is None,
    meaning auto, and the archive has a single top-level directory).
    """
    head = archives.read_head(source)
    detected = archives.detect(head)
    if fmt != "auto" and fmt != detected:
        raise errors.ArchiveError(f"source.format says {fmt} but the artifact is {detected}; fix source.format")
    stream: IO[bytes] = io.BufferedReader(archives.Prefixed(head, source), CHUNK)
    writer = Writer(dest, strip, owner, budget, checkpoint)
    if detected == "zip":
        fd, spool = tempfile.mkstemp(prefix=".zip-", dir=spool_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
            for entry in zip_entries(spool, budget):
                writer.add(entry)
        finally:
            os.unlink(spool)
    else:
        tar_stream = io.BufferedReader(archives.Metered(archives.decompressed(stream, detected), budget), CHUNK)
        for entry in tar_entries(tar_stream):
            writer.add(entry)
        while tar_stream.read(CHUNK):  # the rest: padding, and the compressor's checksum
            pass
    return writer.finish(auto_strip=strip is None)
