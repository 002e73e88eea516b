"""Format versions of the files tether writes, and the one check every reader makes.

Every JSON document tether keeps on disk (deployment and activation records and digest lists in
`<path>/.tether/`, the running-hook file, status documents, overrides) carries `"format": N`. A reader
accepts the versions up to its own: a document without the key is one written before formats were
versioned (tether 0.1.0) and reads as it always did. A document of a newer format was written by a
newer tether, whose meaning this one cannot know: the application it belongs to is left alone, and
the file is never rewritten or removed, so that upgrading tether again picks up where it was.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from controller import errors, fsutil

KEY = "format"
CURRENT = 1  # the format of every document this version writes


class NewerFormat(errors.PermanentError):
    """A file written by a newer tether (or of a format this one does not know)."""

    def __init__(self, file: str, found: object) -> None:
        shown = found if isinstance(found, int) and not isinstance(found, bool) else repr(found)
        super().__init__(f"written by a newer tether (format {shown}; this tether reads formats up to {CURRENT}); "
                         f"upgrade tether or remove {file}")
        self.file = file
        self.found = found


def check(document: Any, file: str) -> Any:
    """`document` (read from `file`) if this tether understands its format; NewerFormat otherwise.

    Anything but a JSON object (a damaged file) passes as it is: the reader's own checks treat it."""
    if isinstance(document, dict) and KEY in document:
        found = document[KEY]
        if not (isinstance(found, int) and not isinstance(found, bool) and 1 <= found <= CURRENT):
            raise NewerFormat(file, found)
    return document


def read(file: str) -> Any:
    """The JSON in `file` (None when missing or unreadable, as fsutil.read_json), its format checked."""
    return check(fsutil.read_json(file), file)


class Understood:
    """Files known to be of a format this tether reads, by (inode, size, mtime, ctime): a pass asks about the same
    status document several times, and parsing it each time would cost more than the pass's own work."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, int, int]] = {}
        self._guard = threading.Lock()

    @staticmethod
    def _key(file: str) -> tuple[int, int, int, int] | None:
        try:
            st = os.lstat(file)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def refusal(self, file: str) -> str | None:
        """Why `file` must be left alone (its format is newer), or None (also when it is missing)."""
        key = self._key(file)
        if key is None:
            return None
        with self._guard:
            if self._seen.get(file) == key:
                return None
        try:
            read(file)
        except NewerFormat as exc:
            return str(exc)
        self.understood(file, key)
        return None

    def understood(self, file: str, key: tuple[int, int, int, int] | None = None) -> None:
        """Remember `file` as it is now (just written by this tether, say) as one of a format it reads."""
        key = key or self._key(file)
        with self._guard:
            if key is None:
                self._seen.pop(file, None)
            else:
                self._seen[file] = key


UNDERSTOOD = Understood()


def refusal(file: str, known: Understood = UNDERSTOOD) -> str | None:
    """Why `file` must be left alone (its format is newer), or None."""
    return known.refusal(file)


def stamped(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with this version's format."""
    return {**document, KEY: CURRENT}
