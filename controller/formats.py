"""Format versions of the files tether writes, and the one check every reader makes.

Every JSON document tether keeps on disk (deployment and activation records and digest lists in
`<path>/.tether/`, the running-hook file, status documents, overrides) carries `"format": N`. A reader
accepts the versions up to its own: a document without the key is one written before formats were
versioned (tether 0.1.0) and reads as it always did. A document of a newer format was written by a
newer tether, whose meaning this one cannot know: the application it belongs to is left alone, and
the file is never rewritten or removed, so that upgrading tether again picks up where it was.
"""

from __future__ import annotations

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


def refusal(file: str) -> str | None:
    """Why `file` must be left alone (its format is newer), or None."""
    try:
        read(file)
    except NewerFormat as exc:
        return str(exc)
    return None


def stamped(document: dict[str, Any]) -> dict[str, Any]:
    """`document` with this version's format."""
    return {**document, KEY: CURRENT}
