"""Handing the small files of an extraction to a second process (file_process.py), which writes them on the other
core while this one reads and checks the rest of the archive.

The extracting process checks each member, makes its directories and decides
its mode, then sends the file's bytes through a pipe. The second process is
started only for an archive with many small files (member_writer.OFFLOAD_AFTER),
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
import select
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
Fields = tuple[str, int, int, int, int, int]  # sha256, ino, size, mtime_ns, ctime_ns, mode (member_writer.Written)


class Offload:
    """A running file_process.py writing below the directory `root` (a descriptor), as `owner` if given."""

    def __init__(self, root: int, owner: tuple[int, int] | None) -> None:
        uid, gid = owner if owner is not None else (-1, -1)
        root = fcntl.fcntl(root, fcntl.F_DUPFD_CLOEXEC, 3)  # not 0-2, which the child's pipes take (closed stdio)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", SCRIPT, str(root), str(uid), str(gid), str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(root,),
            )
        finally:
            os.close(root)
        assert self._process.stdin is not None and self._process.stdout is not None
        self._requests, self._replies = self._process.stdin.fileno(), self._process.stdout
        self._watch = select.poll()  # the reply pipe: readable (a failure, or the end) only if the process stopped
        self._watch.register(self._replies.fileno(), select.POLLIN)
        with contextlib.suppress(OSError):  # above pipe-max-size for an unprivileged user: the default works too
            fcntl.fcntl(self._requests, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(self._requests, False)  # a full pipe: the extracting process writes the next file itself
        self._sent: list[tuple[str, str, bool]] = []  # (name, the member's name in the archive, whether a file)
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._parent = "", b""  # the last file's directory, encoded

    def accepting(self) -> bool:
        """Whether the process takes another file now. Not while SEND_BYTES wait here for its full pipe: the
        extracting process then writes the file itself instead of waiting, so both stay busy."""
        if self._pending_bytes < SEND_BYTES and len(self._pending) < SEND_PIECES:
            return True
        self._send(block=False)
        return self._pending_bytes < SEND_BYTES and len(self._pending) < SEND_PIECES

    @property
    def running(self) -> bool:
        return self._process.returncode is None

    def check(self) -> None:
        """Raise now if the process has failed or ended (instead of at the next send, or at finish)."""
        if self._watch.poll(0):
            self._failed()

    def file(self, name: str, raw: str, mode: int, mtime: float, data: bytes | memoryview) -> None:
        """Create the file `name` (relative to the root; its directory exists) with `data` (the process takes its
        digest)."""
        self._request(file_process.FILE, name, raw, mode, mtime, data)

    def link(self, name: str, raw: str, target: str) -> None:
        """Make `name` a hardlink to the file `target` (made earlier, by either process; sent whether accepting or
        not: the target may still be on its way)."""
        above, _, base = target.rpartition("/")
        self._request(file_process.LINK, name, raw, 0, 0.0, os.fsencode(above) + b"\0" + os.fsencode(base))

    def _request(self, kind: int, name: str, raw: str, mode: int, mtime: float, data: bytes | memoryview) -> None:
        parent, _, base = name.rpartition("/")
        if parent != self._parent[0]:  # files come directory by directory
            self._parent = parent, os.fsencode(parent)
        directory, encoded = self._parent[1], os.fsencode(base)
        head = file_process.REQUEST.pack(kind, len(directory), len(encoded), mode, mtime, len(data)) + directory + encoded
        self._pending += (head, data)
        self._pending_bytes += len(head) + len(data)
        self._sent.append((name, raw, kind == file_process.FILE))

    def _send(self, block: bool) -> None:
        """Write what is pending into the pipe: all of it (block), or what the pipe takes now."""
        pieces, ended = self._pending, False
        if block:
            os.set_blocking(self._requests, True)
        try:
            while pieces:
                done = os.writev(self._requests, pieces[:SEND_PIECES])
                self._pending_bytes -= done
                index = 0
                while index < len(pieces) and done >= len(pieces[index]):
                    done -= len(pieces[index])
                    index += 1
                pieces = pieces[index:]
                if done:  # the pipe (or a signal) cut the write short
                    pieces[0] = memoryview(pieces[0])[done:]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            ended = True
        finally:
            self._pending = pieces
            if block:
                os.set_blocking(self._requests, False)
        if ended:
            self._failed()

    def finish(self) -> tuple[list[str], Iterator[Fields]]:
        """Wait until every file is written; their names, and their digests and stat fields in the same order.
        Raises the first error the process met: OSError with the member's archive name (errno as the process
        saw it)."""
        self._pending.append(file_process.REQUEST.pack(file_process.END, 0, 0, 0, 0.0, 0))
        self._send(block=True)
        reply = self._reply()
        names = [name for name, _, is_file in self._sent if is_file]
        if reply[:1] != file_process.OK or len(reply) != 1 + len(names) * file_process.RESULT.size:
            self._failed(reply)
        if not names:
            return names, iter(())
        digests, *columns = zip(*file_process.RESULT.iter_unpack(memoryview(reply)[1:]), strict=True)
        return names, zip(map(bytes.decode, digests), *columns, strict=True)  # columns and back: no Python per file

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
