"""sha256 of large files on a thread of its own, so that hashing overlaps writing.

The writer's main thread parses headers, checks names and writes files; the
read-ahead thread decompresses. For a large member, hashing its bytes is as much
work as writing them, so its chunks go to this thread (hashlib releases the GIL
on large updates), in the order they were written, through a bounded queue: it
is never more than DEPTH chunks behind. Small members are hashed inline, where
a queue would cost more than the hash.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

DEPTH = 16


class Hasher:
    """Feeds digests on a thread started at the first update; close() waits until every update is done."""

    def __init__(self, depth: int = DEPTH) -> None:
        self._queue: queue.Queue[tuple[Any, bytes] | None] = queue.Queue(depth)
        self._thread: threading.Thread | None = None

    def update(self, digest: Any, chunk: bytes) -> None:  # Any: hashlib's objects have no public type
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tether-digests", daemon=True)
            self._thread.start()
        self._queue.put((digest, chunk))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            item[0].update(item[1])

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
