"""A progress line on a terminal: what `tether reconcile` and `tether deploy --wait` are downloading and extracting.

One line of stderr, rewritten in place ("\\r") at most `per_second` times a second and cleared at the end:
"site v2: 12.3 MiB downloaded (4.1 MiB/s), 1,204 files, 40.2 MiB written". Only on a terminal: a pipe or a
file (a CI log, `--json`) gets nothing, so what is parsed stays as it was.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

from controller.artifacts import archives

CLEAR = "\r\x1b[K"


def size(count: float) -> str:
    """1536 -> "1.5 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class Line:
    """The progress line; `update` is the engine's `on_progress` (called from its worker threads)."""

    def __init__(self, stream: TextIO, per_second: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = 1.0 / per_second
        self.clock = clock
        self._lock = threading.Lock()
        self._shown = False
        self._last = -float("inf")
        self._started: dict[tuple[str, str], tuple[float, int]] = {}  # (name, deployment) -> (start, bytes then)

    def update(self, name: str, deployment: str, budget: archives.Budget) -> None:
        now = self.clock()
        if now - self._last < self.interval:  # the common case, without the lock: it is read once per chunk
            return
        received = budget.compressed()
        with self._lock:
            started, before = self._started.setdefault((name, deployment), (now, received))
            if received < before:  # a new attempt starts again from 0
                started, before = self._started[(name, deployment)] = (now, received)
            if now - self._last < self.interval:
                return
            self._last = now
            rate = (received - before) / (now - started) if now > started else 0.0
            text = (f"{name} {deployment}: {size(received)} downloaded ({size(rate)}/s), {budget.members:,} files, "
                    f"{size(budget.expanded)} written")
            self.stream.write(CLEAR + text)
            self.stream.flush()
            self._shown = True

    def before_log(self, record: logging.LogRecord) -> bool:
        """A logging filter: clear the line before a log line goes to the same stream (the next update redraws it)."""
        self.clear()
        return True

    def clear(self) -> None:
        with self._lock:
            if self._shown:
                self.stream.write(CLEAR)
                self.stream.flush()
                self._shown = False
            self._last = -float("inf")


def wanted(stream: TextIO, json_output: bool) -> bool:
    """A progress line only on a terminal and never with `--json`."""
    try:
        return not json_output and stream.isatty()
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def shown(stream: TextIO, json_output: bool) -> Iterator[Callable[[str, str, archives.Budget], None] | None]:
    """The engine's `on_progress` for `stream` (None where no line is wanted); the line is cleared at the end."""
    if not wanted(stream, json_output):
        yield None
        return
    line = Line(stream)
    handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is stream]
    for handler in handlers:  # a log line (a retried download's warning) starts on a line of its own
        handler.addFilter(line.before_log)
    try:
        yield line.update
    finally:
        for handler in handlers:
            handler.removeFilter(line.before_log)
        line.clear()
