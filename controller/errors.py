"""Errors sorted by what the caller should do about them.

Every error tether raises on purpose derives from :class:`TetherError`.
:class:`PermanentError` means the input is wrong and retrying cannot help;
:class:`TemporaryError` means the same action may succeed later and should be
retried with back-off. Messages are full sentences that say what to do.
"""

from __future__ import annotations


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
        where = f"{file}:{line}" if line is not None else file
        at = f" (at {pointer})" if pointer else ""
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


class Cancelled(TemporaryError):
    """A pass gave up because its desired state changed; the next pass applies the new one."""
