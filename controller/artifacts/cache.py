"""Verified artifacts kept under the state dir, one per existing deployment, for repair.

The copy is taken as the artifact downloads. An artifact of up to HELD_BYTES is
held in memory and written only once the deployment's tree is durable
(`store`), without an fsync: the syncfs that makes the tree durable then does
not also wait for the copy to reach the disk. The copy need not survive a power
cut: its sha256 is checked against the deployment's record before repair uses
it, and a missing or damaged copy is reported with what to do. A larger
artifact goes to a file in the cache directory as it downloads. A file://
artifact is not copied as it is read at all: `store` copies the file itself
(in the kernel, sharing its blocks where the filesystem can), if it still looks
like the file that was read (`_same_file`).

Everything in `<state-dir>/cache/<name>` is written, renamed and removed through
a descriptor of that directory, opened without following a symlink: one planted
there is refused, never written through or pruned through.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Callable, Collection, Iterator
from typing import IO

from controller.artifacts import file_process

log = logging.getLogger(__name__)
SUFFIX = ".artifact"
HELD_BYTES = 64 * 1024 * 1024
CHUNK_COST = 128  # bytes of memory a held chunk costs besides its data (object, list slot, allocator)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def cache_dir(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "cache", name)


def open_dir(state_dir: str, name: str, make: bool = True) -> int:
    """A descriptor of `<state_dir>/cache/<name>` (made, mode 0700, when `make`), neither step through a symlink."""
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # (the state dir itself may be a link)
    try:
        for part in ("cache", name):
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            try:
                child = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise OSError(exc.errno, f"{cache_dir(state_dir, name)} is a symlink or not a directory; tether "
                                         "keeps artifacts only in a directory of its own: remove it") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _new_file(dir_fd: int, prefix: str) -> tuple[int, str]:
    name = prefix + os.urandom(6).hex()
    return os.open(name, NEW_FILE, 0o600, dir_fd=dir_fd), name


def _write_as(dir_fd: int, name: str, write: Callable[[int], None]) -> None:
    """Write the file `name` in `dir_fd` with `write(fd)` through a temporary name, then rename it into place;
    without an fsync."""
    fd, tmp = _new_file(dir_fd, ".tmp-")
    try:
        try:
            write(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


class Sink:
    """Where the download is copied: memory, and past `held` bytes a partial file in the cache directory (opened
    by `open_directory`).

    Memory is charged per chunk as well as per byte (a server that sends a byte at a time must not make the
    held copy cost tens of times its size). It never raises: a copy that cannot be written (the cache
    directory unusable, its disk full) is dropped with a warning, and the download goes on without it.
    """

    def __init__(self, open_directory: Callable[[], int], held: int, where: str) -> None:
        self._open_directory = open_directory
        self._where = where
        self.dir_fd: int | None = None  # the cache directory's descriptor, once a partial file is there
        self.chunks: list[bytes] = []
        self.partial: str | None = None  # its name there
        self.dropped = False
        self._left = held
        self._file: IO[bytes] | None = None
        self.local: tuple[int, os.stat_result] | None = None  # the file a file:// download reads, and its stat
        self.passed = 0  # bytes read from it

    def read_from(self, fd: int) -> None:
        """The download reads the local file `fd`: nothing is copied as it passes, the file itself is (`store`)."""
        if self.dropped or self.chunks or self._file is not None:
            return
        try:
            copy = os.dup(fd)
        except OSError as exc:
            self.drop(exc)
            return
        try:
            self.local = copy, os.fstat(copy)
        except OSError as exc:
            os.close(copy)
            self.drop(exc)

    def write(self, data: bytes) -> None:
        if self.dropped:
            return
        if self.local is not None:
            self.passed += len(data)
            return
        try:
            if self._file is not None:
                self._file.write(data)
                return
            self._left -= len(data) + CHUNK_COST
            self.chunks.append(data)  # the download's own bytes object: no copy
            if self._left >= 0:
                return
            self.dir_fd = self._open_directory()
            fd, self.partial = _new_file(self.dir_fd, ".partial-")
            self._file = os.fdopen(fd, "wb")
            self._file.writelines(self.chunks)
            self.chunks.clear()
        except OSError as exc:
            self.drop(exc)

    def drop(self, exc: OSError) -> None:
        log.warning("Could not copy the artifact into the cache (%s): %s; the deployment goes on without the copy, "
                    "and `tether repair` of it will need a redeploy.", self._where, exc)
        self.discard()
        self.dropped = True

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()  # (its last write can fail here)

    def discard(self) -> None:
        """Drop what was copied: the chunks held, the partial file, the descriptors."""
        with contextlib.suppress(OSError):
            self.close()
        self.chunks = []
        if self.local is not None:
            os.close(self.local[0])
            self.local = None
        if self.dir_fd is not None:
            if self.partial is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.partial, dir_fd=self.dir_fd)
            os.close(self.dir_fd)
        self.dir_fd = self.partial = None


class Entry:
    """The cached artifact of one deployment, copied while it downloads."""

    def __init__(self, state_dir: str, name: str, deployment: str, held: int | None = None) -> None:
        self.state_dir, self.name = state_dir, name
        self.directory = cache_dir(state_dir, name)
        self.file_name = deployment + SUFFIX
        self.path = os.path.join(self.directory, self.file_name)
        self._held = HELD_BYTES if held is None else held
        self._sink: Sink | None = None
        self._kept: list[bytes] | tuple[int, os.stat_result] | None = None  # held (or the local file) until `store`

    @contextlib.contextmanager
    def writer(self) -> Iterator[Sink]:
        """A sink to copy the download into; discarded unless `keep` is called before the block ends."""
        self.close()  # what an earlier attempt kept
        self._sink = Sink(lambda: open_dir(self.state_dir, self.name), self._held, self.directory)
        try:
            yield self._sink
        finally:
            self._sink.discard()  # what `keep` did not take (a failed attempt's bytes: not held through a back-off)
            self._sink = None

    def keep(self) -> None:
        """Keep what was written as this deployment's artifact: in the cache now if it went to a file (made durable
        with the tree), else at `store`; nothing if the copy was dropped."""
        sink = self._sink
        assert sink is not None
        if sink.dropped:
            return
        if sink.local is not None:
            if sink.passed != sink.local[1].st_size:  # a /proc file, say: its size is not what it holds
                sink.drop(OSError(errno.ESTALE, f"the artifact file says it has {sink.local[1].st_size} bytes but "
                                                f"{sink.passed} were read"))
                return
            self._kept, sink.local = sink.local, None
            return
        if sink.partial is None or sink.dir_fd is None:
            self._kept, sink.chunks = sink.chunks, []
            return
        try:
            sink.close()
            os.replace(sink.partial, self.file_name, src_dir_fd=sink.dir_fd, dst_dir_fd=sink.dir_fd)
        except OSError as exc:
            sink.drop(exc)
            return
        sink.partial = None

    def store(self) -> None:
        """Write the artifact held in memory into the cache (call it once the deployment is durable). A failure is
        logged, not raised: the deployment is good, only its repair would need a redeploy."""
        kept, self._kept = self._kept, None
        if kept is None:
            return
        try:
            directory = open_dir(self.state_dir, self.name)
            try:
                if isinstance(kept, list):
                    def write(fd: int) -> None:
                        for chunk in kept:
                            file_process.write_all(fd, chunk)

                    _write_as(directory, self.file_name, write)
                else:
                    _copy_local(*kept, directory, self.file_name)
            finally:
                os.close(directory)
        except OSError as exc:
            log.warning("Could not keep the artifact in the cache (%s): %s; `tether repair` of this deployment will "
                        "need a redeploy.", self.path, exc)
        finally:
            if isinstance(kept, tuple):
                os.close(kept[0])

    def open(self) -> IO[bytes]:
        """The cached artifact, to read (for repair): a regular file, neither its directory nor itself through a
        symlink, never waiting on a FIFO planted there."""
        directory = open_dir(self.state_dir, self.name, make=False)
        try:
            fd = os.open(self.file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
        finally:
            os.close(directory)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, f"{self.path} is not a regular file")
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Close the local file kept for `store` if it was not called (the deployment failed)."""
        if isinstance(self._kept, tuple):
            os.close(self._kept[0])
        self._kept = None


def _same_file(now: os.stat_result, read: os.stat_result) -> bool:
    """Whether the file's content looks unchanged since it was read: the same size and mtime, and the same ctime
    unless it lost a name (a new file renamed over it, or its deletion: its content is still what was read). A
    rewrite that puts the mtime back (`cp -p`, `rsync -t --inplace`) changes the ctime."""
    return (now.st_size, now.st_mtime_ns) == (read.st_size, read.st_mtime_ns) and \
        (now.st_ctime_ns == read.st_ctime_ns or now.st_nlink < read.st_nlink)


def _copy_local(source: int, read: os.stat_result, dir_fd: int, name: str) -> None:
    """Copy the file a download read (`source`, as fstat saw it then) to `name` in `dir_fd`, if it has not changed
    since (repair checks the copy's sha256 in any case); without an fsync."""
    if not _same_file(os.fstat(source), read):
        raise OSError(errno.ESTALE, "the artifact file changed after it was read")

    def copy(fd: int) -> None:
        if _send(fd, source, read.st_size) != read.st_size or not _same_file(os.fstat(source), read):
            raise OSError(errno.ESTALE, "the artifact file changed while it was copied")

    _write_as(dir_fd, name, copy)


REFUSED = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)  # this pair of files cannot be copied so
IN_KERNEL: tuple[Callable[[int, int, int, int], int], ...] = (  # (to, source, offset, count) -> bytes copied
    lambda fd, source, offset, count: os.copy_file_range(source, fd, count, offset, offset),
    lambda fd, source, offset, count: os.sendfile(fd, source, offset, count),
)


def _send(fd: int, source: int, size: int) -> int:
    """Copy up to `size` bytes of `source` into `fd`, the bytes copied: copy_file_range(2) where the filesystem
    shares the blocks (XFS, Btrfs: no data copied at all), else sendfile(2) in the kernel, else through memory."""
    for copy in IN_KERNEL:
        offset = 0
        try:
            while offset < size and (sent := copy(fd, source, offset, size - offset)):
                offset += sent
            return offset
        except OSError as exc:
            if offset or exc.errno not in REFUSED:  # refused before the first byte: the next way
                raise
    offset = 0
    while offset < size and (chunk := os.pread(source, min(size - offset, 1 << 20), offset)):
        offset += os.write(fd, chunk)  # a regular file: the whole chunk, or an error
    return offset


def prune(state_dir: str, name: str, keep: Collection[str]) -> None:
    """Remove cached artifacts of deployments not in `keep`, and partial downloads. A cache directory that is a
    symlink is left alone (with a warning): nothing is removed through it."""
    try:
        directory = open_dir(state_dir, name, make=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("%s: not pruned: %s", cache_dir(state_dir, name), exc)
        return
    try:
        for entry in os.listdir(directory):
            deployment = entry[: -len(SUFFIX)] if entry.endswith(SUFFIX) else None
            if deployment not in keep:
                try:
                    os.unlink(entry, dir_fd=directory)
                except FileNotFoundError:
                    pass
                except OSError as exc:  # a directory put there, say: never a reason for a pass to fail
                    log.warning("%s: not pruned: %s", os.path.join(cache_dir(state_dir, name), entry), exc.strerror)
    finally:
        os.close(directory)
