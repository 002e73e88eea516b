"""Reading a stream ahead on a second thread: decompression (and what the source does as it is read: the
artifact's sha256, the artifact-cache copy, the network) overlaps the member loop.

zlib, bz2, lzma, zstandard, hashlib and file and socket I/O release the GIL, so
the thread runs on another core while the main thread parses headers and writes
files, as tar gets gzip in a separate process. The queue is bounded (DEPTH
chunks): the thread is never more than DEPTH * CHUNK bytes ahead, so a
decompression bomb still meets the archive's limits, which the consumer charges.
An exception the thread meets is raised to the consumer at the point of the
stream where it happened.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from controller.artifacts import archives

CHUNK = 1024 * 1024
DEPTH = 8
POLL = 0.1  # seconds between the thread's checks that the consumer is still there


class Reader(archives.Chunks):
    """`source` (made by `open_source` on the thread) read ahead by a thread; close() stops and joins it."""

    def __init__(self, open_source: Callable[[], archives.Readable], chunk: int = CHUNK, depth: int = DEPTH) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(depth)
        self._stop = threading.Event()
        self._pending = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(open_source, chunk), name="tether-readahead",
                                        daemon=True)
        self._thread.start()

    def _put(self, item: bytes | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, open_source: Callable[[], archives.Readable], chunk: int) -> None:
        try:
            source = open_source()
            while not self._stop.is_set():
                data = source.read(chunk)
                if not self._put(data) or not data:
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def read(self, size: int = -1, /) -> bytes:  # a whole chunk as the thread read it, when it fits: no copy
        if not self._pending:
            if self._done:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if not item:
                self._done = True
                return b""
            if size < 0 or size >= len(item):
                return item
            self._pending = memoryview(item)
        count = len(self._pending) if size < 0 else min(size, len(self._pending))
        data = self._pending[:count].tobytes()
        self._pending = self._pending[count:]
        return data

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
        super().close()
