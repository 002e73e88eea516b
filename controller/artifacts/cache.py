"""Verified artifacts kept under the state dir, one per existing deployment, for repair.

The copy is taken as the artifact downloads. An artifact of up to HELD_BYTES is
held in memory and written only once the deployment's tree is durable
(`store`), without an fsync: the syncfs that makes the tree durable then does
not also wait for the copy to reach the disk. The copy need not survive a power
cut: its sha256 is checked against the deployment's record before repair uses
it, and a missing or damaged copy is reported with what to do. A larger
artifact goes to a file in the cache directory as it downloads. A file://
artifact is not copied as it is read at all: `store` copies the file itself
(sendfile(2), in the kernel), if it still looks like the file that was read
(`_same_file`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Collection, Iterator
from typing import IO

from controller import fsutil

log = logging.getLogger(__name__)
SUFFIX = ".artifact"
HELD_BYTES = 64 * 1024 * 1024
CHUNK_COST = 128  # bytes of memory a held chunk costs besides its data (object, list slot, allocator)


def cache_dir(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "cache", name)


class Sink:
    """Where the download is copied: memory, and past `held` bytes a partial file in `directory`.

    Memory is charged per chunk as well as per byte (a server that sends a byte at a time must not make the
    held copy cost tens of times its size). It never raises: a copy that cannot be written (the cache
    directory unusable, its disk full) is dropped with a warning, and the download goes on without it.
    """

    def __init__(self, directory: str, held: int) -> None:
        self.directory = directory
        self.chunks: list[bytes] = []
        self.partial: str | None = None
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
            fsutil.makedirs(self.directory, 0o700)
            fd, self.partial = tempfile.mkstemp(prefix=".partial-", dir=self.directory)
            self._file = os.fdopen(fd, "wb")
            self._file.writelines(self.chunks)
            self.chunks.clear()
        except OSError as exc:
            self.drop(exc)

    def drop(self, exc: OSError) -> None:
        log.warning("Could not copy the artifact into the cache (%s): %s; the deployment goes on without the copy, "
                    "and `tether repair` of it will need a redeploy.", self.directory, exc)
        self.discard()
        self.dropped = True

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()  # (its last write can fail here)

    def discard(self) -> None:
        """Drop what was copied: the chunks held, the partial file."""
        with contextlib.suppress(OSError):
            self.close()
        self.chunks = []
        if self.local is not None:
            os.close(self.local[0])
            self.local = None
        if self.partial is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.partial)
            self.partial = None


class Entry:
    """The cached artifact of one deployment, copied while it downloads."""

    def __init__(self, state_dir: str, name: str, deployment: str, held: int | None = None) -> None:
        self.directory = cache_dir(state_dir, name)
        self.path = os.path.join(self.directory, deployment + SUFFIX)
        self._held = HELD_BYTES if held is None else held
        self._sink: Sink | None = None
        self._kept: list[bytes] | tuple[int, os.stat_result] | None = None  # held (or the local file) until `store`

    @contextlib.contextmanager
    def writer(self) -> Iterator[Sink]:
        """A sink to copy the download into; discarded unless `keep` is called before the block ends."""
        self.close()  # what an earlier attempt kept
        self._sink = Sink(self.directory, self._held)
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
        if sink.partial is None:
            self._kept, sink.chunks = sink.chunks, []
            return
        try:
            sink.close()
            os.replace(sink.partial, self.path)
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
            fsutil.makedirs(self.directory, 0o700)
            if isinstance(kept, list):
                fsutil.atomic_write(self.path, kept, 0o600, durable=False)
            else:
                _copy_local(*kept, self.path)
        except OSError as exc:
            log.warning("Could not keep the artifact in the cache (%s): %s; `tether repair` of this deployment will "
                        "need a redeploy.", self.path, exc)
        finally:
            if isinstance(kept, tuple):
                os.close(kept[0])

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


def _copy_local(source: int, read: os.stat_result, path: str) -> None:
    """Copy the file a download read (`source`, as fstat saw it then) to `path`, if it has not changed since (repair
    checks the copy's sha256 in any case); without an fsync."""
    if not _same_file(os.fstat(source), read):
        raise OSError(errno.ESTALE, "the artifact file changed after it was read")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        try:
            offset = _send(fd, source, read.st_size)
        finally:
            os.close(fd)
        if offset != read.st_size or not _same_file(os.fstat(source), read):
            raise OSError(errno.ESTALE, "the artifact file changed while it was copied")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def prune(state_dir: str, name: str, keep: Collection[str]) -> None:
    """Remove cached artifacts of deployments not in `keep`, and partial downloads."""
    directory = cache_dir(state_dir, name)
    if not os.path.isdir(directory):
        return
    for entry in os.listdir(directory):
        deployment = entry[: -len(SUFFIX)] if entry.endswith(SUFFIX) else None
        if deployment not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, entry))


def _send(fd: int, source: int, size: int) -> int:
    """Copy up to `size` bytes of `source` into `fd`: in the kernel, else (a filesystem without sendfile) through
    memory; the bytes copied."""
    offset = 0
    try:
        while offset < size and (sent := os.sendfile(fd, source, offset, size - offset)):
            offset += sent
        return offset
    except OSError as exc:
        if offset or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
    while offset < size and (chunk := os.pread(source, min(size - offset, 1 << 20), offset)):
        offset += os.write(fd, chunk)  # a regular file: the whole chunk, or an error
    return offset
