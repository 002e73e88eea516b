"""Safe extraction of tar and zip archives into a fresh directory.

Every member goes through tether's own filter first (names, types, links,
modes, limits), then through `tarfile.data_filter` where Python has it, and
is written with O_EXCL|O_NOFOLLOW below a directory that tether just created
and that no archive member can redirect.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable
from typing import IO

from controller import errors
from controller.artifacts import archives, members, modes

MAX_NAME = 4096
MAX_COMPONENT = 255
MAX_SYMLINK_HOPS = 40  # as Linux: a path that needs more does not resolve at all (ELOOP)
CHUNK = 1024 * 1024
Owner = tuple[int, int] | None
NAME_ERRORS = (errno.ENAMETOOLONG, errno.EILSEQ, errno.ELOOP, errno.EEXIST)  # the archive's names cause these


def clean_name(raw: str, strip: int) -> str | None:
    """The relative path a member may be written to, or None for the archive root."""
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise errors.ArchiveError(f"member {raw!r} has a control character in its name")
    if not _utf8(raw):
        raise errors.ArchiveError(f"member {raw!r} has a name that is not valid UTF-8")
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

    def add(self, entry: members.Entry) -> None:
        try:
            self._add(entry)
        except OSError as exc:
            if exc.errno not in NAME_ERRORS:
                raise
            raise errors.ArchiveError(f"member {entry.name[:200]!r} cannot be written: {exc.strerror}") from exc

    def _add(self, entry: members.Entry) -> None:
        self.budget.add_member(entry.name)
        if entry.mode & (stat.S_ISUID | stat.S_ISGID) and entry.type != "dir":  # on directories: cleared
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
        link = self._hardlink_target(entry, strip) if entry.type == "hardlink" else entry.target
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

    @staticmethod
    def _hardlink_target(entry: members.Entry, strip: int) -> str:
        try:
            return clean_name(entry.target, strip) or ""
        except errors.ArchiveError as exc:
            raise errors.ArchiveError(
                f"member {entry.name!r} is a hardlink to {entry.target!r}, which is outside the deployment or not a "
                "valid name; hardlinks may only point to earlier files of the archive"
            ) from exc

    def _write_file(self, path: str, entry: members.Entry, mode: int) -> None:
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

    def _symlink(self, path: str, name: str, entry: members.Entry) -> None:
        target = entry.target
        if target.startswith("/"):
            raise errors.ArchiveError(
                f"member {entry.name!r} is a symlink to the absolute path {target!r}; only relative symlinks are allowed"
            )
        if not target or "\0" in target or not _utf8(target):
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
        for name in self.symlinks:
            if _resolves_outside(root, os.path.relpath(os.path.join(self.dest, name), root)):
                raise errors.ArchiveError(f"member {name!r} is a symlink that resolves outside the deployment")
        for name in sorted(self.dirs, key=lambda d: -d.count("/")):
            os.chmod(os.path.join(self.dest, name), self.dirs[name])
        return root


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by tarfile and zipfile as lone surrogates
        return False
    return True


def _resolves_outside(root: str, name: str) -> bool:
    """Whether `name` below `root`, every symlink in it followed, leads out of `root`.

    Resolved component by component with `root` as the boundary, as it will be
    once it is the deployment: realpath(3) could leave `root` and come back in
    through the name of the top directory that stripComponents removes.
    """
    pending, inside, hops = name.split("/"), list[str](), 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not inside:
                return True
            inside.pop()
        elif os.path.islink(path := os.path.join(root, *inside, part)):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return False  # a loop, or too long a chain: the kernel does not follow it anywhere
            target = os.readlink(path)
            if target.startswith("/"):
                return True
            pending = target.split("/") + pending
        else:
            inside.append(part)
    return False


def _filtered_mode(entry: members.Entry, name: str, link: str, dest: str) -> int:
    """The member's mode on disk (modes.on_disk: tarfile.data_filter's arithmetic); links also go through
    `tarfile.data_filter` itself where Python has it, for its link checks on top of tether's own (links are few:
    its realpath walks cost too much for every file)."""
    mode = modes.on_disk(entry.type, entry.mode)
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is None or entry.type not in ("symlink", "hardlink"):
        return mode
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE if entry.type == "symlink" else tarfile.LNKTYPE
    info.mode = mode
    info.linkname = link
    try:
        data_filter(info, dest)
    except tarfile.FilterError as exc:
        raise errors.ArchiveError(f"member {entry.name!r} was refused by tarfile's data filter: {exc}") from exc
    return mode


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
            for entry in members.zip_entries(spool, budget):
                writer.add(entry)
        finally:
            os.unlink(spool)
    else:
        tar_stream = io.BufferedReader(archives.Metered(archives.decompressed(stream, detected), budget), CHUNK)
        try:
            for entry in members.tar_entries(tar_stream):
                writer.add(entry)
        except tarfile.TarError as exc:  # raised while a member's data is copied
            raise errors.ArchiveError(f"the archive is truncated or not a valid tar file: {exc}") from exc
        while tar_stream.read(CHUNK):  # the rest: padding, and the compressor's checksum
            pass
    return writer.finish(auto_strip=strip is None)
