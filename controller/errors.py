"""Errors sorted by what the caller should do about them.

Every error tether raises on purpose derives from :class:`TetherError`.
:class:`PermanentError` means the input is wrong and retrying cannot help;
:class:`TemporaryError` means the same action may succeed later and should be
retried with back-off. Messages are full sentences that say what to do.
"""

from __future__ import annotations

import os
import re


class TetherError(Exception):
    """Base of every error tether raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PermanentError(TetherError):
    """Invalid input or a refused action: do not retry until the input changes."""


class TemporaryError(TetherError):
    """A transient failure: retry with back-off."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ManifestError(PermanentError):
    """A manifest is invalid; carries the file, line and JSON pointer."""

    def __init__(self, file: str, message: str, line: int | None = None, pointer: str = "") -> None:
        where = f"{shown_path(file)}:{line}" if line is not None else shown_path(file)
        at = f" (at {printable(pointer)})" if pointer else ""
        super().__init__(f"{where}: {message}{at}")
        self.file = file
        self.line = line
        self.pointer = pointer
        self.detail = message


class ArchiveError(PermanentError):
    """An artifact was refused: unsafe, malformed or over its limits."""


class FetchError(TemporaryError):
    """Downloading an artifact failed in a way that may pass."""


class FetchRefused(PermanentError):
    """Downloading an artifact failed in a way that retrying cannot fix."""


class ChecksumMismatch(PermanentError):
    """The artifact's sha256 is not the one the manifest asks for."""


class LockBusy(TemporaryError):
    """Another tether process holds the application's lock."""


# Control characters (C0, DEL, C1), Unicode line breaks and lone surrogates (not UTF-8): no message, log line
# or scrape should carry them as they are.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` with every control character, line break and lone surrogate shown as an escape (\\x00, \\udcff)."""
    return CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def shown_path(path: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 (kept by Python as surrogates) become
    escapes such as \\xff, and so do control characters."""
    try:
        return printable(os.fsencode(path).decode("utf-8", "backslashreplace"))
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return printable(path)


def unexpected(exc: BaseException) -> str:
    """What a status or a command says of an exception tether did not raise on purpose: a bug (the log has its
    traceback). The daemon retries the pass with back-off, as after a TemporaryError."""
    return (f"unexpected {type(exc).__name__}: {printable(str(exc))}; this is a bug in tether: please report it "
            "with the traceback from tether's log")


class Cancelled(TemporaryError):
    """A pass gave up because its desired state changed; the next pass applies the new one."""
