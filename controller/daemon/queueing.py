"""A de-duplicated, per-application work queue, the workers that empty it, and the failure back-off."""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)


class WorkQueue:
    """Names waiting for a pass. A name is queued once, and never handed to two workers
    at a time; asked for again while it runs, it is queued again when it finishes."""

    def __init__(self) -> None:
        self._ready: list[str] = []
        self._running: set[str] = set()
        self._again: set[str] = set()
        self._closed = False
        self._changed = threading.Condition()

    def put(self, name: str) -> None:
        with self._changed:
            if name in self._running:
                self._again.add(name)
            elif name not in self._ready:
                self._ready.append(name)
                self._changed.notify()

    def get(self) -> str | None:
        """The next name to work on; None once the queue is closed."""
        with self._changed:
            while not self._ready and not self._closed:
                self._changed.wait()
            if self._closed:
                return None
            name = self._ready.pop(0)
            self._running.add(name)
            return name

    def claim(self, name: str) -> bool:
        """Take `name` as a worker would, unless it is queued or running; True when taken (call `done`)."""
        with self._changed:
            if name in self._running or name in self._ready:
                return False
            self._running.add(name)
            return True

    def done(self, name: str) -> None:
        with self._changed:
            self._running.discard(name)
            if name in self._again:
                self._again.discard(name)
                self._ready.append(name)
                self._changed.notify()

    def idle(self) -> bool:
        with self._changed:
            return not self._ready and not self._running

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def wall_time(due: float | None, monotonic: Callable[[], float] = time.monotonic,
              wall: Callable[[], float] = time.time) -> float | None:
    """The wall-clock time of a `due` time on the monotonic clock (for status: now plus what remains)."""
    return None if due is None else wall() + (due - monotonic())


@dataclasses.dataclass
class BackOff:
    """Exponential back-off with jitter per application, reset when its desired state changes.

    Callers give `now` on the monotonic clock, and get due times on it: a wall clock that steps back
    (an NTP correction) must not keep an application waiting for as long as it stepped.
    """

    base_seconds: float = 5.0
    cap_seconds: float = 300.0
    jitter: Callable[[], float] = random.random
    _state: dict[str, tuple[Hashable, int, float]] = dataclasses.field(default_factory=dict)

    def failed(self, name: str, key: Hashable, now: float) -> float:
        """Record a failure under desired state `key`; return when to try next."""
        previous_key, failures, _ = self._state.get(name, (key, 0, 0.0))
        failures = failures + 1 if previous_key == key else 1
        delay = min(self.cap_seconds, self.base_seconds * 2.0 ** min(failures - 1, 30))
        due = now + delay * (0.5 + self.jitter() / 2)
        self._state[name] = (key, failures, due)
        return due

    def succeeded(self, name: str) -> None:
        self._state.pop(name, None)

    def due(self, name: str, key: Hashable) -> float | None:
        """When the next attempt may start, or None if now (no failure under this key)."""
        state = self._state.get(name)
        if state is None or state[0] != key:
            return None
        return float(state[2])

    def pending(self) -> dict[str, float]:
        return {name: due for name, (_, _, due) in self._state.items()}


class Workers:
    """`count` threads that run `work(name)` for each name from `queue`, then call `after()`."""

    def __init__(self, queue: WorkQueue, count: int, work: Callable[[str], None], after: Callable[[], None]) -> None:
        self.queue, self.work, self.after = queue, work, after
        self.threads = [threading.Thread(target=self._run, name=f"worker-{i}", daemon=True) for i in range(count)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, grace_seconds: float, monotonic: Callable[[], float] = time.monotonic) -> bool:
        """Take no new work; wait up to `grace_seconds` for running passes. True when all have finished."""
        self.queue.close()
        deadline = monotonic() + grace_seconds
        for thread in self.threads:
            thread.join(timeout=max(0.0, deadline - monotonic()))
        return not any(thread.is_alive() for thread in self.threads)

    def _run(self) -> None:
        while (name := self.queue.get()) is not None:
            try:
                self.work(name)
            except Exception:  # a bug must not kill the worker; the next pass tries again
                log.exception("The pass of %s failed unexpectedly.", name)
            finally:
                self.queue.done(name)
                self.after()
