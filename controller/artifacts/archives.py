"""Archive formats: detection by magic bytes, streaming decompression, expansion budget."""

from __future__ import annotations

import bz2
import contextlib
import errno
import functools
import gzip
import hashlib
import importlib.util
import io
import lzma
from collections.abc import Callable, Iterator
from typing import IO, Protocol, cast

from controller import errors
from controller.manifests import model


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


FORMATS = ("tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst", "zip", "deb")
HEAD_SIZE = 512


def zstd_available() -> bool:
    return importlib.util.find_spec("zstandard") is not None


@functools.cache
def isal_available() -> bool:
    """Whether the optional isal package (ISA-L's gzip, PyPI only: `pip install tether[fast]`) is there."""
    return importlib.util.find_spec("isal") is not None


def detect(head: bytes) -> str:
    """The archive format of a stream starting with `head`, by magic bytes."""
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if head.startswith(b"BZh"):
        return "tar.bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "tar.xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "tar.zst"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"!<arch>\n"):
        return "deb"
    if head[257:262] == b"ustar" or (len(head) == HEAD_SIZE and _old_tar_header(head)):
        return "tar"
    raise errors.ArchiveError(
        "the artifact is not an archive tether knows (tar, tar.gz, tar.bz2, tar.xz, tar.zst, zip, deb); "
        "check the URL, or set source.format"
    )


def _old_tar_header(head: bytes) -> bool:
    try:
        stored = int(head[148:156].rstrip(b"\x00 ").decode() or "-1", 8)
    except ValueError:
        return False
    return stored == sum(head[:148]) + 8 * 32 + sum(head[156:512])


class Prefixed(io.RawIOBase):
    """A readable stream that returns `head` first, then the rest of `source`."""

    def __init__(self, head: bytes, source: Readable) -> None:
        self._head = memoryview(head)
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def read_head(source: Readable) -> bytes:
    """Read up to HEAD_SIZE bytes, fewer only at the end of the stream."""
    head = b""
    while len(head) < HEAD_SIZE:
        chunk = source.read(HEAD_SIZE - len(head))
        if not chunk:
            break
        head += chunk
    return head


class Budget:
    """Counts expanded bytes and members against an archive's limits."""

    def __init__(self, limits: model.Limits, compressed: Callable[[], int],
                 progress: Callable[[Budget], None] | None = None) -> None:
        self.limits = limits
        self.compressed = compressed
        self.expanded = 0
        self.members = 0
        self.progress = progress  # hears of each count (a progress line on a terminal); None: nobody listens

    def add_bytes(self, count: int) -> None:
        self.expanded += count
        if self.progress is not None:
            self.progress(self)
        limits = self.limits
        if self.expanded > limits.max_bytes:
            raise errors.ArchiveError(
                f"the archive expands to more than {limits.max_bytes} bytes (limits.maxBytes); "
                "raise the limit if this artifact is really that large"
            )
        if self.expanded > limits.ratio_after_bytes:
            ratio = self.expanded / max(1, self.compressed())
            if ratio > limits.max_ratio:
                raise errors.ArchiveError(
                    f"the archive expands {ratio:.0f} times its compressed size, more than "
                    f"limits.maxRatio {limits.max_ratio:g}; refusing a likely decompression bomb"
                )

    def add_member(self, name: str) -> None:
        self.members += 1
        if self.progress is not None:
            self.progress(self)
        if self.members > self.limits.max_members:
            raise errors.ArchiveError(
                f"the archive has more than {self.limits.max_members} members (limits.maxMembers) "
                f"at {name!r}; raise the limit if this is expected"
            )
        if name.count("/") < self.limits.max_depth:  # fewer separators than levels allowed: not too deep
            return
        depth = sum(1 for part in name.split("/") if part not in ("", "."))
        if depth > self.limits.max_depth:
            raise errors.ArchiveError(
                f"member {name if len(name) <= 80 else name[:80] + '...'!r} is {depth} levels deep, more than limits.maxDepth "
                f"{self.limits.max_depth}; raise the limit if this artifact is really that deep"
            )


MESSAGE_CHARS = 300


def describe(exc: BaseException) -> str:
    """An exception as one short line, for an error message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "..."


@contextlib.contextmanager
def untrusted(what: str) -> Iterator[None]:
    """Turn whatever reading untrusted archive data raises into an ArchiveError naming it.

    Python's tar, zip and decompression readers raise many kinds of errors on malformed input (ValueError,
    OverflowError, UnicodeError, struct.error, EOFError, RecursionError, NotImplementedError, zlib.error,
    LZMAError, BadZipFile, TarError, OSError without an errno, ...). Only an OSError with an errno (real I/O
    on tether's side, such as a full disk or a failed read of its own spool file) passes through.
    """
    try:
        yield
    except errors.TetherError:
        raise
    except OSError as exc:
        if exc.errno is not None and exc.errno != errno.EINVAL:
            raise
        raise errors.ArchiveError(f"the archive is truncated or not a valid {what}: {describe(exc)}") from exc
    except EOFError as exc:
        raise errors.ArchiveError(f"the archive is truncated: {describe(exc)}") from exc
    except Exception as exc:
        raise errors.ArchiveError(f"the archive is truncated or not a valid {what}: {describe(exc)}") from exc


class Chunks(io.RawIOBase):
    """A raw stream whose `read` hands out chunks as they come (no copy through a buffer); `readinto` copies them,
    for io.BufferedReader."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class Hashing:
    """A readable stream that hashes and counts what passes through it; `check` is called before each read (it
    raises to stop the reading)."""

    def __init__(self, raw: Readable, check: Callable[[], None] = lambda: None) -> None:
        self.raw = raw
        self.check = check
        self.digest = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        self.check()
        data = self.raw.read(size)
        self.digest.update(data)
        self.count += len(data)
        return data


class Metered(Chunks):
    """Reads `source`, charging every byte to `budget` and naming truncation plainly."""

    def __init__(self, source: Readable, budget: Budget) -> None:
        self._source = source
        self._budget = budget

    def read(self, size: int = -1, /) -> bytes:  # the source's own bytes, not copied through readinto
        try:
            data = self._source.read(size)
        except errors.TetherError:
            raise
        except EOFError as exc:
            raise errors.ArchiveError(f"the archive is truncated: {describe(exc)}") from exc
        except Exception as exc:
            raise errors.ArchiveError(f"the archive is corrupt: {describe(exc)}") from exc
        self._budget.add_bytes(len(data))
        return data


def decompressed(source: IO[bytes], fmt: str, isal: bool | None = None) -> Readable:
    """A stream of the tar data inside a compressed stream; gzip through isal when it is there (or `isal` says)."""
    if fmt == "tar":
        return source
    if fmt == "tar.gz":
        if isal_available() if isal is None else isal:  # the same stream, CRC and length checks, ~3x faster
            from isal import igzip

            return igzip.IGzipFile(fileobj=source, mode="rb")  # type: ignore[no-untyped-call]
        return gzip.GzipFile(fileobj=source, mode="rb")
    if fmt == "tar.bz2":
        return bz2.BZ2File(source, mode="rb")
    if fmt == "tar.xz":
        return lzma.LZMAFile(source, mode="rb")
    if fmt == "tar.zst":
        if not zstd_available():
            raise errors.ArchiveError(
                "the artifact is zstd-compressed but the Python module zstandard is not installed; "
                "install it (pip install zstandard) or publish tar.gz"
            )
        import zstandard

        return cast(Readable, zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True))
    raise errors.ArchiveError(f"{fmt} is not a tar format")
