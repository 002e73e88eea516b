"""Verified artifacts kept under the state dir, one per existing deployment, for repair.

The copy is taken as the artifact downloads. An artifact of up to HELD_BYTES is
held in memory and written only once the deployment's tree is durable
(`store`), without an fsync: the syncfs that makes the tree durable then does
not also wait for the copy to reach the disk. The copy need not survive a power
cut: its sha256 is checked against the deployment's record before repair uses
it, and a missing or damaged copy is reported with what to do. A larger
artifact goes to a file in the cache directory as it downloads.
"""

from __future__ import annotations

import contextlib
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

    def write(self, data: bytes) -> None:
        if self.dropped:
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
        self._kept: list[bytes] | None = None  # held in memory until `store`

    @contextlib.contextmanager
    def writer(self) -> Iterator[Sink]:
        """A sink to copy the download into; discarded unless `keep` is called before the block ends."""
        self._sink, self._kept = Sink(self.directory, self._held), None
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
        chunks, self._kept = self._kept, None
        if chunks is None:
            return
        try:
            fsutil.makedirs(self.directory, 0o700)
            fsutil.atomic_write(self.path, chunks, 0o600, durable=False)
        except OSError as exc:
            log.warning("Could not keep the artifact in the cache (%s): %s; `tether repair` of this deployment will "
                        "need a redeploy.", self.path, exc)


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
