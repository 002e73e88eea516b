"""Applications still converged: a no-op pass without the observe and plan (design section 9, P4).

After a pass that ended Ready with nothing to do, the daemon remembers what the pass depended on: the
inputs held in memory (the validated manifest, its kind and override, this node's identity) and the
fingerprint of the tree and status file it read (controller/tree/fingerprint.py). The next pass of that
application compares both, holding the application's lock as a full pass does; when nothing differs it
concludes "still converged" and publishes the status it published last with fresh times, having read
nothing but one lstat per path. Anything else is a full pass: a command (`tether deploy`, `rollback`,
`pin`, an override edit) changes the override or the records, an operator's change to `current`, a
deployment or a record changes an identity, and so do a hook's.

Not remembered, so always a full pass: an application whose last pass did anything, ran a hook or a
probe, found drift, or did not end Ready; one with a rollout (its decision moves with the clock and the
gate); one whose manifest is invalid now; and any pass when its content check is due (drift_watch).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from controller.tree import fingerprint, records


@dataclasses.dataclass(frozen=True)
class _Remembered:
    inputs: tuple[object, ...]
    up: tuple[str, ...]
    below: tuple[str, ...]
    identities: tuple[fingerprint.Identity, ...]


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Equal inputs; the same objects (a manifest unchanged since the last scan) need no deep comparison."""
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))


class Converged:
    """What each remembered application's last no-op pass depended on; safe to use from many threads."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns  # the filesystem's clock: ctimes are compared with it
        self._known: dict[str, _Remembered] = {}
        self._lock = threading.Lock()
        self.skipped = 0  # passes concluded "still converged" (for tests and benchmarks)

    def started(self) -> int:
        """The moment before a full pass reads anything, for `remember`."""
        return self._clock_ns()

    def ancestors(self, path: str) -> tuple[fingerprint.Identity, ...]:
        """The identities of the ancestors of `path` before a full pass checks them, for `remember`: an ancestor's
        identity holds no time, so the racy margin cannot tell that it changed after the check."""
        return fingerprint.take(tuple(fingerprint.ancestors(path)), ())

    def remember(self, name: str, inputs: tuple[object, ...], observed: records.Observed, status_file: str,
                 before_ns: int, ancestors: tuple[fingerprint.Identity, ...] | None = None) -> bool:
        """Remember the pass of `name` that read `observed` and started reading at `before_ns` (`started`), its
        ancestors being `ancestors` before it checked them (`ancestors`); False (and forgotten) when its fingerprint
        cannot stand for what it read (see fingerprint.settled) or an ancestor changed during the pass."""
        found = fingerprint.paths(observed, status_file)
        if found is not None:
            up, below = found
            identities = fingerprint.take(up, below)
            if (ancestors is None or identities[: len(up)] == ancestors) and \
                    fingerprint.settled(up, below, identities, before_ns):
                with self._lock:
                    self._known[name] = _Remembered(inputs, up, below, identities)
                return True
        self.forget(name)
        return False

    def known(self, name: str) -> bool:
        """Whether the last pass of `name` was remembered."""
        with self._lock:
            return name in self._known

    def still(self, name: str, inputs: tuple[object, ...]) -> bool:
        """Whether nothing `name`'s remembered pass depended on has changed (one lstat per path)."""
        with self._lock:
            known = self._known.get(name)
        if known is None or not _same(known.inputs, inputs):
            return False
        if fingerprint.take(known.up, known.below) != known.identities:
            self.forget(name)
            return False
        with self._lock:
            self.skipped += 1
        return True

    def forget(self, name: str) -> None:
        with self._lock:
            self._known.pop(name, None)
