"""A hook's output log, bounded: the head and the tail are kept, the middle is dropped."""

from __future__ import annotations

import os

RECENT = 2048


class BoundedLog:
    """Writes the first `head` bytes to a file, keeps the last `tail` bytes in memory,
    and on close appends a marker and the tail. Memory stays at `tail` bytes whatever
    the hook prints."""

    def __init__(self, path: str, head: int = 512 * 1024, tail: int = 512 * 1024, append: bool = False) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        self._fd = os.open(path, flags, 0o640)
        self._head_left = head
        self._tail_size = tail
        self._tail = bytearray()
        self._recent = bytearray()
        self.dropped = 0
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        self._recent = (self._recent + data[-RECENT:])[-RECENT:]
        if self._head_left:
            part = data[: self._head_left]
            os.write(self._fd, part)
            self._head_left -= len(part)
            data = data[len(part):]
        if data:
            self._tail += data
            excess = len(self._tail) - self._tail_size
            if excess > 0:
                del self._tail[:excess]
                self.dropped += excess

    def note(self, text: str) -> None:
        """A line of tether's own, such as the banner before each hook: in the file, but not part
        of the hook's output, so not in its tail for status."""
        data = text.encode()
        os.write(self._fd, data)
        self._head_left = max(0, self._head_left - len(data))

    def tail_text(self) -> str:
        """The last few KiB the hook printed, as text, for status."""
        return bytes(self._recent).decode("utf-8", "replace")

    def close(self) -> None:
        if self.dropped:
            os.write(self._fd, f"\n[... tether dropped {self.dropped} bytes of output here ...]\n".encode())
        if self._tail:
            os.write(self._fd, bytes(self._tail))
        os.close(self._fd)
