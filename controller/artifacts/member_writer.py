"""The writer of extracting.py: each member of an archive, checked, made below a fresh staging directory.

`Writer.add` takes the members one by one, as extracting.py reads them from
the tar stream or the zip. It refuses what could escape the staging directory or
surprise whoever reads the tree (duplicates, a member below a file or through
a symlink, setuid and setgid files, hardlinks to anything but an earlier file,
absolute or escaping symlinks), and makes each directory, file and link
itself, below descriptors of the directories it made. It records what it made
(`Written`: a file's digest and the stat fields that change with its content)
for the digest list. Large files are hashed on a thread of their own
(digest_thread.py); past OFFLOAD_AFTER small files, the rest go to a second
process (file_offload.py).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import stat
import tarfile
import typing
from collections.abc import Callable
from typing import IO

from controller import errors
from controller.artifacts import archives, digest_thread, file_offload, file_process, member_names, members, modes

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024
FLUSH_BYTES = 32 * 1024 * 1024  # written between two asks to flush
THREAD_HASH_SIZE = 128 * 1024  # a file this large is hashed on its own thread (digest_thread.py)
OFFLOAD_AFTER = 256  # smaller files written here before the rest go to a second process (file_offload.py)
FILE_COST = 4096  # what a file counts for that, besides its bytes: its inode and directory entry
DIR_FLAGS, FILE_FLAGS = file_process.DIR_FLAGS, file_process.FILE_FLAGS
Owner = tuple[int, int] | None
SET_ID = stat.S_ISUID | stat.S_ISGID
NAME_ERRORS = (errno.ENAMETOOLONG, errno.EILSEQ, errno.ELOOP, errno.EEXIST)  # the archive's names cause these


class Written(typing.NamedTuple):
    """A regular file as the writer left it: its content digest and mode, and the stat fields that change with its
    content.

    tree.digests takes the digest instead of reading the file back when the file
    still has the same inode, size, mtime and ctime (any write changes ctime).
    """

    sha256: str
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mode: int  # permission bits, as fstat saw them last



class Writer:
    """Writes entries below `dest`, refusing anything that could escape or surprise.

    Everything is created relative to descriptors of directories the writer made
    itself (each opened O_NOFOLLOW below the last), with O_EXCL|O_NOFOLLOW: the
    staging directory is tether's own and fresh, so an entry can only collide
    with what the archive itself created, which the writer's sets know.
    """

    def __init__(self, dest: str, strip: int | None, owner: Owner, budget: archives.Budget,
                 checkpoint: Callable[[str], None], flush: Callable[[], None] = lambda: None,
                 offload_after: int | None = OFFLOAD_AFTER) -> None:
        self.dest = dest
        self.offload_after = offload_after  # None: never
        self.flush = flush  # asked every FLUSH_BYTES written: start writing them out (fsutil.Flusher.kick)
        self._unflushed = 0
        self.strip = strip
        self.owner = owner
        self.budget = budget
        self.checkpoint = checkpoint
        self.dirs: dict[str, int] = {}  # directory -> mode to apply at the end
        self.files: set[str] = set()
        self.symlinks: dict[str, str] = {}  # symlink -> target
        self.hardlinks: dict[str, str] = {}  # hardlink -> the file it links to
        self.written: dict[str, Written] = {}  # regular file -> its digest as written
        self._hasher = digest_thread.Hasher()  # large files' digests: complete in `written` after close()
        self._hashing: list[tuple[str, typing.Any, os.stat_result]] = []
        self._root = os.open(dest, DIR_FLAGS)
        self._dirs = file_process.Directories(self._root)
        self._dir_fd = self._dirs.fd
        self._offload: file_offload.Offload | None = None
        self._small = 0  # small files written here

    def close(self) -> None:
        if self._offload is not None:
            self._offload.close()
        self._dirs.close()
        os.close(self._root)
        self._hasher.close()
        for name, digest, st in self._hashing:
            self.written[name] = _written(digest.hexdigest(), st)
        self._hashing.clear()
        for name, target in self.hardlinks.items():  # the same inode: the same digest and mode
            if target in self.written:  # (not when writing it failed)
                self.written[name] = self.written[target]

    def _chown(self, base: str, dir_fd: int) -> None:
        if self.owner is not None:
            os.chown(base, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def _mkdir(self, name: str) -> None:
        parent, _, base = name.rpartition("/")
        dir_fd = self._dir_fd(parent)
        os.mkdir(base, 0o700, dir_fd=dir_fd)
        self._chown(base, dir_fd)

    def _parents(self, name: str, raw: str) -> None:
        """Create the missing parents of `name`."""
        parts = name.split("/")[:-1]
        for index in range(len(parts)):
            above = "/".join(parts[: index + 1])
            if above in self.symlinks:
                raise errors.ArchiveError(f"member {raw!r} would be written through the symlink {above!r}")
            if above in self.files:
                raise errors.ArchiveError(f"member {raw!r} is below {above!r}, which is a file")
            if above not in self.dirs:
                self._mkdir(above)
                self.dirs[above] = 0o755

    def add(self, entry: members.Entry) -> None:
        try:
            self._add(entry)
        except OSError as exc:
            if exc.errno not in NAME_ERRORS:
                raise
            raise errors.ArchiveError(f"member {entry.name[:200]!r} cannot be written: {exc.strerror}") from exc

    def _add(self, entry: members.Entry) -> None:
        self.budget.add_member(entry.name)
        kind = entry.type
        if entry.mode & SET_ID and kind != "dir":  # on directories: cleared
            raise errors.ArchiveError(f"member {entry.name!r} is setuid or setgid; tether does not install such files")
        strip = self.strip or 0
        name = member_names.clean_name(entry.name, strip)
        if name is None:
            if kind != "dir":
                raise errors.ArchiveError(f"member {entry.name!r} is not below {strip} leading directories (stripComponents)")
            return
        if name in self.files or name in self.symlinks or (kind != "dir" and name in self.dirs):
            raise errors.ArchiveError(f"member {entry.name!r} appears twice in the archive")
        parent = name.rpartition("/")[0]
        if parent and parent not in self.dirs:  # not a directory the writer made (which has all its parents)
            self._parents(name, entry.name)
        base = name[len(parent) + 1:] if parent else name
        if kind == "file":
            mode = _file_mode(entry.mode & 0o7777)
            offload = self._offloading() if 0 <= entry.size < THREAD_HASH_SIZE else None
            if offload is not None and offload.accepting():
                data = entry.content
                if data is None:
                    assert entry.data is not None
                    data = _all_data(entry.data, entry.size)
                offload.file(name, entry.name, mode, entry.mtime, data)
                self._written_bytes(entry.size)
            else:
                if self._offload is not None and entry.size >= THREAD_HASH_SIZE:
                    self._offload.check()  # before a large file, which can take a while
                self._write_file(name, self._dir_fd(parent), base, entry, mode)
            if not self.files:
                self.checkpoint("extracting")
            self.files.add(name)
            return
        link = self._hardlink_target(entry, strip) if kind == "hardlink" else entry.target
        mode = _filtered_mode(entry, name, link, self.dest)
        if kind == "dir":
            if name not in self.dirs:
                self._mkdir(name)
            self.dirs[name] = mode
        elif kind == "symlink":
            self._symlink(self._dir_fd(parent), base, name, entry)
        else:
            target = link
            if target not in self.files:
                raise errors.ArchiveError(
                    f"member {entry.name!r} is a hardlink to {entry.target!r}, which is not an earlier file of the archive"
                )
            if self._offload is not None:  # the target may still be on its way there
                self._offload.link(name, entry.name, target)
            else:
                above, _, target_base = target.rpartition("/")
                source = os.dup(self._dir_fd(above))  # looking up `parent` may close the cached descriptor
                try:
                    os.link(target_base, base, src_dir_fd=source, dst_dir_fd=self._dir_fd(parent),
                            follow_symlinks=False)
                finally:
                    os.close(source)
            self.files.add(name)
            self.hardlinks[name] = target

    def _offloading(self) -> file_offload.Offload | None:
        """The second process for a small file, started after `offload_after` of them; None: written here."""
        if self._offload is not None:
            return self._offload
        if self.offload_after is None or self._small < self.offload_after:
            self._small += 1
            return None
        try:
            self._offload = file_offload.Offload(self._root, self.owner)
        except OSError as exc:
            log.warning("Could not start tether's file-writing process (%s); this extraction writes every file "
                        "itself, which is slower.", exc)
            self.offload_after = None
        return self._offload

    def _written_bytes(self, size: int, cost: int = FILE_COST) -> None:
        self._unflushed += size + cost
        if self._unflushed > FLUSH_BYTES:
            self._unflushed = 0
            self.flush()
            if self._offload is not None:  # every 32 MiB: has it failed meanwhile?
                self._offload.check()

    @staticmethod
    def _hardlink_target(entry: members.Entry, strip: int) -> str:
        try:
            return member_names.clean_name(entry.target, strip) or ""
        except errors.ArchiveError as exc:
            raise errors.ArchiveError(
                f"member {entry.name!r} is a hardlink to {entry.target!r}, which is outside the deployment or not a "
                "valid name; hardlinks may only point to earlier files of the archive"
            ) from exc

    def _write_file(self, name: str, dir_fd: int, base: str, entry: members.Entry, mode: int) -> None:
        assert entry.data is not None
        fd = os.open(base, FILE_FLAGS, mode, dir_fd=dir_fd)  # the staging tree is tether's alone: no reader yet
        try:
            digest = hashlib.sha256()
            left = entry.size  # -1 when the archive does not say: then read to the end
            threaded = left >= THREAD_HASH_SIZE
            with entry.data() as source:
                while left and (chunk := source.read(CHUNK)):  # a small member: one read, one write
                    left -= len(chunk)
                    if threaded:
                        self._hasher.update(digest, chunk)
                    else:
                        digest.update(chunk)
                    file_process.write_all(fd, chunk)
                    self._written_bytes(len(chunk), 0)  # a large file: its writing-out starts as it is written
            st = file_process.settle(fd, self.owner, entry.mtime, mode)
        finally:
            os.close(fd)
        if threaded:
            self._hashing.append((name, digest, st))
        else:
            self.written[name] = _written(digest.hexdigest(), st)
        self._written_bytes(0)

    def _symlink(self, dir_fd: int, base: str, name: str, entry: members.Entry) -> None:
        target = entry.target
        if target.startswith("/"):
            raise errors.ArchiveError(
                f"member {entry.name!r} is a symlink to the absolute path {target!r}; only relative symlinks are allowed"
            )
        if not target or "\0" in target or not member_names.utf8(target):
            raise errors.ArchiveError(f"member {entry.name!r} is a symlink to {target!r}; only relative symlinks are allowed")
        resolved = os.path.normpath(os.path.join(os.path.dirname(name), target))
        if resolved == ".." or resolved.startswith("../"):
            raise errors.ArchiveError(f"member {entry.name!r} is a symlink to {target!r}, outside the deployment")
        os.symlink(target, base, dir_fd=dir_fd)
        self._chown(base, dir_fd)
        self.symlinks[name] = target

    def finish(self, auto_strip: bool) -> str:
        """Wait for the files sent to the second process, check symlinks, apply directory modes; return the root
        of the extracted tree."""
        if self._offload is not None:
            self._offloaded(self._offload)
        root = self.dest
        if auto_strip:
            top = os.listdir(self.dest)
            if len(top) == 1 and top[0] in self.dirs:
                root = os.path.join(self.dest, top[0])
        steps = [member_names.MAX_LINK_STEPS]  # shared by all symlinks: each can be made to cost tens of thousands of lstats
        for name in self.symlinks:
            if member_names.resolves_outside(root, os.path.relpath(os.path.join(self.dest, name), root), steps):
                raise errors.ArchiveError(f"member {name!r} is a symlink that resolves outside the deployment")
        for name in sorted(self.dirs, key=lambda d: -d.count("/")):
            os.chmod(os.path.join(self.dest, name), self.dirs[name])
        return root

    def earlier_error(self, exc: errors.ArchiveError) -> None:
        """Raise the error the second process met, if it met one: it was at an earlier member than `exc` (its
        files are behind the archive). Otherwise return, and the caller raises `exc`."""
        if self._offload is not None and self._offload.running:
            try:
                self._offloaded(self._offload)
            except (OSError, errors.ArchiveError) as first:  # (not its having ended: then `exc` is the error)
                raise first from exc

    def _offloaded(self, offload: file_offload.Offload) -> None:
        try:
            names, fields = offload.finish()
            self.written.update(zip(names, map(Written._make, fields), strict=True))
        except OSError as exc:
            if exc.errno not in NAME_ERRORS:
                raise
            raise errors.ArchiveError(f"member {str(exc.filename)[:200]!r} cannot be written: {exc.strerror}") from exc


def _all_data(data: Callable[[], IO[bytes]], size: int) -> bytes | memoryview:
    """All `size` bytes of a member's data (one read, unless the reader's buffer ends inside them)."""
    with data() as source:
        chunk: bytes | memoryview = source.read(size)
        if len(chunk) == size:
            return chunk
        pieces = [chunk]
        left = size - len(chunk)
        while left and (chunk := source.read(left)):
            pieces.append(chunk)
            left -= len(chunk)
        return b"".join(pieces)


def _written(digest: str, st: os.stat_result) -> Written:
    return Written(digest, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, stat.S_IMODE(st.st_mode))


@functools.cache
def _file_mode(mode: int) -> int:  # a regular file's mode on disk, remembered: one of 4096
    return modes.on_disk("file", mode)


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
