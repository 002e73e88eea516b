"""A watchdog for one download: cancel, stall and deadline, even while a read blocks.

A thread wakes every `tick` seconds and, when the pass was cancelled (the desired
state changed), the download made no progress, or its deadline passed, shuts the
socket down, which ends a blocked recv(2) at once. The reader then asks
:meth:`Watch.check` why its read ended and raises that error.

Progress is defined like curl's --speed-limit/--speed-time: a download is stalled
when fewer than `min_bytes` arrived during the last `stall_seconds` that the reader
spent waiting for the server (time spent extracting what already arrived does not
count), so a server trickling a few bytes a second is stalled too.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from controller import errors

if TYPE_CHECKING:
    import socket  # a file:// download has no socket: it starts without the module

log = logging.getLogger(__name__)
MIN_BYTES = 1024


class Watch:
    def __init__(self, where: str, *, cancel: threading.Event | None, stall_seconds: float, deadline: float,
                 clock: Callable[[], float], tick: float = 0.2, min_bytes: int = MIN_BYTES) -> None:
        self.where = where
        self._cancel = cancel
        self._stall = stall_seconds
        self._deadline = deadline
        self._clock = clock
        self._tick = min(tick, max(0.05, stall_seconds / 4))
        self._min_bytes = min_bytes
        self.sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._busy = False
        self._received = 0
        self._waited = 0.0
        self._last = clock()
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(0.0, 0)])
        self._lock = threading.Lock()
        self.error: errors.TetherError | None = None

    def attach(self, sock: socket.socket | None) -> None:
        """Watch `sock` (the current connection's); the thread starts with the first one."""
        self.sock = sock
        if self._thread is None and sock is not None:
            self._thread = threading.Thread(target=self._run, name=f"watch {self.where}", daemon=True)
            self._thread.start()

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Mark the reader as blocked on the server (the only time that counts towards a stall)."""
        self.check()
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
        self.check()

    def progress(self, count: int) -> None:
        self._received += count

    def check(self) -> None:
        """Raise the reason the download must end, if there is one."""
        if self._judge() is not None:
            raise self.error  # type: ignore[misc]

    def close(self) -> None:
        self._closed.set()

    def _judge(self) -> errors.TetherError | None:
        with self._lock:
            if self.error is None:
                self.error = self._verdict()
            return self.error

    def _verdict(self) -> errors.TetherError | None:
        now = self._clock()
        if self._busy:
            self._waited += now - self._last
            self._samples.append((self._waited, self._received))
        self._last = now
        if self._cancel is not None and self._cancel.is_set():
            return errors.Cancelled(f"the download from {self.where} was cancelled: the desired state changed or tether is stopping")
        if now > self._deadline:
            return errors.FetchError(f"downloading {self.where} took longer than its deadline")
        samples = self._samples
        while len(samples) > 1 and samples[1][0] <= self._waited - self._stall:
            samples.popleft()
        if self._waited - samples[0][0] >= self._stall and self._received - samples[0][1] < self._min_bytes:
            return errors.FetchError(
                f"the download from {self.where} stalled: {self._received - samples[0][1]} bytes in the last "
                f"{self._stall:g} seconds (source.stallSeconds); the next attempt starts it again"
            )
        return None

    def _run(self) -> None:
        while not self._closed.wait(self._tick):
            if self._judge() is not None:
                sock = self.sock
                if sock is not None:
                    import socket  # loaded with the connection that attached `sock`

                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return
