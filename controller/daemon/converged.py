"""Applications still converged: a no-op pass without the observe and plan (design section 9, P4).

After a pass that ended Ready with nothing to do, the daemon remembers what the pass depended on: the
inputs held in memory (the validated manifest, its kind and override, this node's identity) and the
fingerprint of the tree and status file it read (controller/tree/fingerprint.py). The next pass of that
application compares both, holding the application's lock as a full pass does; when nothing differs it
concludes "still converged" and publishes the status it published last with fresh times, having read
nothing but one lstat per path. Anything else is a full pass: a command (`tether deploy`, `rollback`,
`pin`, an override edit) changes the override or the records, an operator's change to `current`, a
deployment or a record changes an identity, and so do a hook's.

A fingerprint stands for what a pass read only if nothing changed while the pass read it: it is taken
after the pass, so a pass is remembered only when the same paths had the same identities just before it
read them (the lstats of what the pass before it read). That holds whatever the clocks say (a network
filesystem's timestamps come from its server); the ctime margin of fingerprint.settled is then only
for two changes within one tick of the filesystem's clock. So the first no-op pass after any change, or
after the daemon starts, is a full one, and the next is remembered. After a pass that changed the tree,
and after the first no-op pass of an application since the daemon started, the daemon asks for that
next full pass itself, once the change has settled (passes.READ_BACK_SECONDS): the resync that follows
then costs one lstat per path.

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


@dataclasses.dataclass(frozen=True)
class Started:
    """What `Converged.started` took before a full pass read anything."""

    ns: int  # the filesystem's clock then
    read: tuple[tuple[str, ...], tuple[str, ...]] | None  # the paths the pass before it read
    identities: tuple[fingerprint.Identity, ...] | None  # and their identities then


def _same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    """Equal inputs; the same objects (a manifest unchanged since the last scan) need no deep comparison."""
    return len(a) == len(b) and all(x is y or x == y for x, y in zip(a, b, strict=True))


class Converged:
    """What each remembered application's last no-op pass depended on; safe to use from many threads."""

    def __init__(self, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._clock_ns = clock_ns  # the filesystem's clock: ctimes are compared with it
        self._known: dict[str, _Remembered] = {}
        self._read: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}  # the paths each last full pass read
        self._lock = threading.Lock()
        self.skipped = 0  # passes concluded "still converged" (for tests and benchmarks)

    def started(self, name: str) -> Started:
        """Before a full pass of `name` reads anything: the moment, and one lstat of each path its last pass read
        (for `passed`)."""
        with self._lock:
            read = self._read.get(name)
        return Started(self._clock_ns(), read, None if read is None else fingerprint.take(*read))

    def passed(self, name: str, inputs: tuple[object, ...], observed: records.Observed, status_file: str,
               started: Started, no_op: bool) -> bool:
        """After a full pass of `name` that read `observed`: remember it if it was a no-op and its fingerprint can
        stand for what it read. That is when the pass read the same paths as the pass before it, each exactly as
        it was before this one read it (nothing changed while it read, whatever the clocks of the filesystem and
        the node say), and each changed last well before (fingerprint.settled: two changes within one tick of
        the filesystem's clock can look the same). False, and forgotten, otherwise."""
        found = fingerprint.paths(observed, status_file)
        with self._lock:
            if found is None:
                self._read.pop(name, None)
            else:
                self._read[name] = found
        if no_op and found is not None and found == started.read:
            identities = fingerprint.take(*found)
            if identities == started.identities and fingerprint.settled(*found, identities, started.ns):
                with self._lock:
                    self._known[name] = _Remembered(inputs, *found, identities)
                return True
        self.forget(name)
        return False

    def has_read(self, name: str) -> bool:
        """Whether the next full pass of `name` has the paths of one before it to compare with."""
        with self._lock:
            return name in self._read

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

    def forget(self, name: str, unmanaged: bool = False) -> None:
        with self._lock:
            self._known.pop(name, None)
            if unmanaged:
                self._read.pop(name, None)
