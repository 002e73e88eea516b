"""Status files written only when what they say changes, and flushed in batches (design sections 7 and 9).

A pass that changes nothing writes nothing: the new document is compared with what the status file holds
(known from the last write or read, checked with one stat: a command such as `tether deploy` may have
replaced it), leaving out the fields that move at every pass (`VOLATILE`): `updatedAt` and `lastSuccessAt`.
The daemon keeps those fresh in memory, where the metrics read them; on disk they say when the status last
changed. An invalid manifest is the exception: its `updatedAt` says when tether last read that manifest
(tools such as the Ansible module wait for it), so its status is written at each rescan, as before.

Status files are derived data: the next pass rebuilds them from the tree and its records. So they are
written without an fsync each; `sync` flushes a batch with one syncfs(2). After a crash a status file may
be older than the tree, or empty: the next pass reads what is on disk, finds it differs, and writes it again.
Records, activation and `current` keep their own fsyncs (docs/design.md, section 7).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller import formats, fsutil
from controller.engine import status

log = logging.getLogger(__name__)
VOLATILE = frozenset({"updatedAt", "lastSuccessAt", formats.KEY})  # the format key: stamped when written
Identity = tuple[int, int, int, int]


def content(document: Mapping[str, Any]) -> dict[str, Any]:
    """What a status says, without the fields that move at every pass (see the module's docstring)."""
    ready = next((c for c in document.get("conditions", []) if isinstance(c, dict) and c.get("type") == "Ready"), {})
    volatile = VOLATILE - {"updatedAt"} if ready.get("reason") == "InvalidManifest" else VOLATILE
    return {key: value for key, value in document.items() if key not in volatile}


def _identity(path: str) -> Identity | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclasses.dataclass(frozen=True)
class _Known:
    document: dict[str, Any] | None  # what the file holds (None: missing or unreadable)
    identity: Identity | None


class Store:
    """The status files of one state dir, as one process writes them; safe to use from many threads."""

    def __init__(self, state_dir: str, sync: Callable[[str], None] = fsutil.sync_filesystem,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.state_dir, self._sync, self._monotonic = state_dir, sync, monotonic
        self._known: dict[str, _Known] = {}
        self._lock = threading.Lock()
        self.unsynced_since: float | None = None  # when the oldest write that no sync flushed yet was made
        self.writes = 0  # status files written so far (for tests and benchmarks)

    def read(self, name: str) -> tuple[dict[str, Any] | None, bool]:
        """(what the status file of `name` holds, whether someone else wrote it since this store last saw it).
        The file is read only when its identity (inode, size, times) is not the one this store knows."""
        path = status.status_path(self.state_dir, name)
        identity = _identity(path)
        with self._lock:
            known = self._known.get(name)
        if known is not None and known.identity == identity:
            return known.document, False
        document = status.read(self.state_dir, name) if identity is not None else None
        with self._lock:
            self._known[name] = _Known(document, identity)
        return document, known is None or known.identity != identity

    def write(self, name: str, document: dict[str, Any]) -> bool:
        """Write `document` unless the status file says the same already (see `content`); True when written.
        Not flushed: call `sync` (the daemon does once its queue is empty)."""
        on_disk, _ = self.read(name)
        if on_disk is not None and content(on_disk) == content(document):
            return False
        if not status.write(self.state_dir, name, document, durable=False):
            return False  # a newer tether's file, left as it is
        identity = _identity(status.status_path(self.state_dir, name))
        with self._lock:
            self._known[name] = _Known(document, identity)
            self.writes += 1
            if self.unsynced_since is None:
                self.unsynced_since = self._monotonic()
        return True

    def remove(self, name: str) -> None:
        """Remove the status file of `name` (no longer managed)."""
        with self._lock:
            self._known.pop(name, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(status.status_path(self.state_dir, name))

    def sync(self) -> None:
        """Make every status written so far durable, with one syncfs(2) of the state dir's filesystem."""
        with self._lock:
            if self.unsynced_since is None:
                return
            self.unsynced_since = None
        try:
            self._sync(self.state_dir)
        except OSError as exc:  # statuses are derived data: the next pass writes them again
            log.warning("Flushing the status files in %s to disk failed (%s); the next passes write them again.",
                        self.state_dir, exc.strerror or exc)
