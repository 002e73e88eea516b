"""Verified artifacts kept under the state dir, one per existing deployment, for repair."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Collection, Iterator
from typing import IO

from controller import fsutil

SUFFIX = ".artifact"


def cache_dir(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "cache", name)


class Entry:
    """The cached artifact of one deployment, written while it downloads."""

    def __init__(self, state_dir: str, name: str, deployment: str) -> None:
        self.directory = cache_dir(state_dir, name)
        self.path = os.path.join(self.directory, deployment + SUFFIX)
        self._partial: str | None = None

    @contextlib.contextmanager
    def writer(self) -> Iterator[IO[bytes]]:
        """A file to copy the download into; discarded unless `keep` is called."""
        fsutil.makedirs(self.directory, 0o700)
        fd, self._partial = tempfile.mkstemp(prefix=".partial-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
        finally:
            if self._partial is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._partial)

    def keep(self) -> None:
        """Keep what was written as this deployment's artifact."""
        assert self._partial is not None
        os.replace(self._partial, self.path)
        self._partial = None


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
