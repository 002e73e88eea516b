"""Handing the small files of an extraction to a second process (file_process.py), which writes them on the other
core while this one reads and checks the rest of the archive.

The extracting process checks each member, makes its directories and decides
its mode, then sends the file's bytes through a pipe. The second process is
started only for an archive with many small files (extracting.OFFLOAD_AFTER),
where the Python per member is what costs; it writes nothing the extracting
process has not decided, below a descriptor of the staging directory, and is
killed and waited for when the extraction fails, so the caller's clean-up never
races with it. It also dies with its parent (PR_SET_PDEATHSIG), and an end of
its input before END makes it exit without writing more than the pipe held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import typing
from collections.abc import Iterator

from controller import errors
from controller.artifacts import file_process

SCRIPT = file_process.__file__
PIPE_SIZE = 1024 * 1024
SEND_BYTES = 256 * 1024  # requests gathered before one writev
SEND_PIECES = 512  # (below IOV_MAX, 1024)
Fields = tuple[str, int, int, int, int, int]  # sha256, ino, size, mtime_ns, ctime_ns, mode (extracting.Written)


class Offload:
    """A running file_process.py writing below the directory `root` (a descriptor), as `owner` if given."""

    def __init__(self, root: int, owner: tuple[int, int] | None) -> None:
        uid, gid = owner if owner is not None else (-1, -1)
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", SCRIPT, str(root), str(uid), str(gid), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(root,),
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._requests, self._replies = self._process.stdin.fileno(), self._process.stdout
        with contextlib.suppress(OSError):  # above pipe-max-size for an unprivileged user: the default works too
            fcntl.fcntl(self._requests, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._sent: list[tuple[str, str, str | None]] = []  # (name, the member's name in the archive, a file's digest)
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._parent = "", b""  # the last file's directory, encoded

    def file(self, name: str, raw: str, mode: int, mtime: float, data: bytes | memoryview, sha256: str) -> None:
        """Create the file `name` (relative to the root; its directory exists) with `data`, whose digest is
        `sha256`."""
        self._request(file_process.FILE, name, raw, mode, mtime, data, sha256)

    def link(self, name: str, raw: str, target: str) -> None:
        """Make `name` a hardlink to the file `target` (made earlier, by either process)."""
        above, _, base = target.rpartition("/")
        self._request(file_process.LINK, name, raw, 0, 0.0, os.fsencode(above) + b"\0" + os.fsencode(base), None)

    def _request(self, kind: int, name: str, raw: str, mode: int, mtime: float, data: bytes | memoryview,
                 sha256: str | None) -> None:
        parent, _, base = name.rpartition("/")
        if parent != self._parent[0]:  # files come directory by directory
            self._parent = parent, os.fsencode(parent)
        directory, encoded = self._parent[1], os.fsencode(base)
        self._pending += (file_process.REQUEST.pack(kind, len(directory), len(encoded), mode, mtime, len(data)),
                          directory, encoded, data)
        self._pending_bytes += len(data) + len(directory) + len(encoded)
        self._sent.append((name, raw, sha256))
        if self._pending_bytes >= SEND_BYTES or len(self._pending) >= SEND_PIECES:
            self._send()

    def _send(self) -> None:
        pieces, self._pending, self._pending_bytes = self._pending, [], 0
        try:
            while pieces:
                done = os.writev(self._requests, pieces)
                if done == sum(map(len, pieces)):
                    return
                index = 0  # a signal cut the write short: send the rest
                while done >= len(pieces[index]):
                    done -= len(pieces[index])
                    index += 1
                pieces = [memoryview(pieces[index])[done:], *pieces[index + 1:]]
        except BrokenPipeError:
            self._failed()

    def finish(self) -> Iterator[tuple[str, Fields]]:
        """Wait until every file is written; their digests and stat fields, by name. Raises the first error the
        process met: OSError with the member's archive name (errno as the process saw it)."""
        self._pending.append(file_process.REQUEST.pack(file_process.END, 0, 0, 0, 0.0, 0))
        self._send()
        reply = self._reply()
        files = [(name, digest) for name, _, digest in self._sent if digest is not None]
        if reply[:1] != file_process.OK or len(reply) != 1 + len(files) * file_process.RESULT.size:
            self._failed(reply)
        for (name, digest), fields in zip(files, file_process.RESULT.iter_unpack(reply[1:]), strict=True):
            yield name, (digest, *fields)

    def _reply(self) -> bytes:
        self._process.stdin.close()  # type: ignore[union-attr]
        reply = self._replies.read()
        self._process.wait()
        return reply

    def _failed(self, reply: bytes | None = None) -> typing.NoReturn:
        if reply is None:
            reply = self._reply()
        if reply[:1] == file_process.FAILED and len(reply) >= 1 + file_process.FAILURE.size:
            index, number = file_process.FAILURE.unpack_from(reply, 1)
            text = reply[1 + file_process.FAILURE.size:].decode("utf-8", "replace")
            if index < len(self._sent):
                raise OSError(number, text, self._sent[index][1])
        raise errors.TemporaryError(f"tether's file-writing process ended with status {self._process.returncode} "
                                    "before writing every file; the log above may say why. The next pass tries again.")

    def close(self) -> None:
        """Stop the process if it still runs (the extraction failed) and wait for it."""
        if self._process.returncode is None:
            self._process.kill()
            self._process.wait()
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
