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


def cache_dir(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "cache", name)


class Sink:
    """Where the download is copied: memory, and past `held` bytes a partial file in `directory`."""

    def __init__(self, directory: str, held: int) -> None:
        self.directory = directory
        self.chunks: list[bytes] = []
        self.partial: str | None = None
        self._left = held
        self._file: IO[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._file is None:
            self._left -= len(data)
            self.chunks.append(data)  # the download's own bytes object: no copy
            if self._left >= 0:
                return
            fsutil.makedirs(self.directory, 0o700)
            fd, self.partial = tempfile.mkstemp(prefix=".partial-", dir=self.directory)
            self._file = os.fdopen(fd, "wb")
            self._file.writelines(self.chunks)
            self.chunks.clear()
            return
        self._file.write(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
            self._sink.close()
            if self._sink.partial is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._sink.partial)
            self._sink = None

    def keep(self) -> None:
        """Keep what was written as this deployment's artifact: in the cache now if it went to a file (made durable
        with the tree), else at `store`."""
        assert self._sink is not None
        if self._sink.partial is None:
            self._kept = self._sink.chunks
            return
        self._sink.close()
        os.replace(self._sink.partial, self.path)
        self._sink.partial = None

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
