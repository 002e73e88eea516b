"""Watching the manifests directory (and the overrides) for changes.

Events are only triggers: every change asks for a rescan, and the rescan compares
content hashes. The directory's parent is watched too, and the directory
holding each symlink on the way to it, so that a manifests directory replaced
by a symlink swap (git-sync and the like, of the directory or of one above it),
or removed and created again, is noticed; after each rescan `refresh` moves the
watches to wherever the path resolves now.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from controller.daemon import scanning

log = logging.getLogger(__name__)
# Reading a manifest must not trigger another rescan: only changes count.
CHANGES = frozenset({"created", "deleted", "modified", "moved", "closed", "attrib"})
# Where watchdog holds a file's IN_MOVED_FROM to pair it with its IN_MOVED_TO: 7.1 (PyPI), 2.2 (Debian 12).
MOVE_PAIRING = (("watchdog.observers.inotify_move_event_grouper", "InotifyMoveEventGrouper"),
                ("watchdog.observers.inotify_buffer", "InotifyBuffer"))


def move_pairing() -> list[Any]:
    """The classes of this watchdog that hold a move to pair it (their `delay`, in seconds)."""
    holders = []
    for module, name in MOVE_PAIRING:
        try:
            holders.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return holders


def unpaired_moves() -> None:
    """Have watchdog hand on a move out of a watched directory at once instead of holding it 0.5 s to pair it
    with its arrival. Its delayed queue sleeps out those 0.5 s whenever its reading thread looks at the queue
    between the two halves of a rename, even when the pair is complete a moment later, and every event behind
    it waits too: a manifest renamed into place was seen 0.5 s late in 1-5% of the changes (design section 9,
    P3: p99 <= 250 ms). tether needs no pairs: every event only asks for a rescan."""
    for holder in move_pairing():
        holder.delay = 0


class _Trigger(FileSystemEventHandler):
    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in CHANGES:
            self._on_change()


class Watcher:
    def __init__(self, paths: Iterable[str], on_change: Callable[[], None], exact: Iterable[str] = ()) -> None:
        """Watch `paths` and their parents, and the directories `exact` alone."""
        self._paths = list(paths)
        self._exact = list(exact)
        self._handler = _Trigger(on_change)
        unpaired_moves()
        self._observer: Any = Observer()
        self._watches: dict[str, tuple[Any, tuple[int, int]]] = {}  # directory -> its watch, and which one it was

    def _wanted(self) -> set[str]:
        """The real directories to watch: each path as it resolves, its parent, and the directory holding each
        symlink on the way to it (a swap of that link, as git-sync makes of /git/current in
        /git/current/manifests, is an event there)."""
        wanted: set[str] = set()
        for path in self._paths:
            absolute = os.path.abspath(path)
            candidates = [os.path.realpath(os.path.dirname(absolute)), os.path.realpath(absolute)]
            parts = absolute.split(os.sep)
            for end in range(2, len(parts) + 1):
                step = os.sep.join(parts[:end])
                if os.path.islink(step):
                    candidates.append(os.path.realpath(os.path.dirname(step)))
            wanted.update(candidate for candidate in candidates if os.path.isdir(candidate))
        return wanted | {os.path.realpath(p) for p in self._exact if os.path.isdir(p)}

    def refresh(self) -> bool:
        """Watch where the paths resolve now; True when a new directory is watched (the caller should
        rescan: what changed there before the watch began raised no event). A directory removed and made again
        under the same name is watched again: the watch of the old one died with it."""
        wanted = {path: scanning.identity(path) for path in self._wanted()}
        for path in [p for p, (watch, seen) in self._watches.items() if wanted.get(p) != seen or self._dead(watch)]:
            with contextlib.suppress(KeyError):  # (already gone with its directory)
                self._observer.unschedule(self._watches.pop(path)[0])
        added = False
        for path, identity in wanted.items():
            if identity is None or path in self._watches:
                continue
            added = True
            try:
                self._watches[path] = self._observer.schedule(self._handler, path, recursive=False), identity
            except OSError as exc:
                log.warning("Cannot watch %s (%s); the periodic resync still sees its changes.", path, exc)
        return added

    def _dead(self, watch: Any) -> bool:
        """Whether watchdog stopped the watch: it does when the directory watched is deleted (a new directory of
        the same name may have the same inode number, so its identity alone does not tell)."""
        emitter = getattr(self._observer, "_emitter_for_watch", {}).get(watch)  # watchdog 2.2 and 7.1 have it
        return emitter is not None and not emitter.should_keep_running()

    def start(self) -> None:
        self.refresh()
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
