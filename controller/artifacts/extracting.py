"""Safe extraction of tar and zip archives into a fresh directory.

Every member goes through tether's own filter first (names and link targets
in member_names.py, types, limits), gets the data filter's mode (modes.py;
links also go through `tarfile.data_filter` itself where Python has it), and
is written with O_EXCL|O_NOFOLLOW relative to a descriptor of a directory
that tether just created and that no archive member can redirect (member_writer.py
does all three). Decompression runs ahead on a second thread
(readahead.py); file digests are taken as the bytes pass; past
member_writer.OFFLOAD_AFTER small files, a second process writes the small
ones (file_offload.py).
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import tempfile
import typing
from collections.abc import Callable, Iterator
from typing import IO

from controller import errors, fsutil
from controller.artifacts import (
    archives,
    deb_package,
    file_process,
    member_names,
    member_writer,
    members,
    readahead,
    tar_reader,
)

T = typing.TypeVar("T")



@dataclasses.dataclass
class Made:
    """Everything one extraction made, by path below the root it returned: regular files (a hardlink with its
    target's digest), directories with the modes they were left with, symlinks with their targets. tree.digests
    records it as the deployment's digest list when nothing but tether has touched the tree since."""

    files: dict[str, member_writer.Written] = dataclasses.field(default_factory=dict)
    dirs: dict[str, int] = dataclasses.field(default_factory=dict)
    symlinks: dict[str, str] = dataclasses.field(default_factory=dict)

    def clear(self) -> None:  # a failed attempt's tree is gone
        for made in (self.files, self.dirs, self.symlinks):
            made.clear()

    def add(self, writer: member_writer.Writer, prefix: str) -> None:
        """What `writer` made below `prefix` (the returned root, relative to the writer's destination, "" or with a
        trailing slash), named relative to it."""
        self.files.update(_relative(writer.written, prefix))
        self.dirs.update(_relative(writer.dirs, prefix))
        self.symlinks.update(_relative(writer.symlinks, prefix))


def _relative(made: dict[str, T], prefix: str) -> Iterator[tuple[str, T]] | dict[str, T]:
    if not prefix:
        return made
    return ((name[len(prefix):], value) for name, value in made.items() if name.startswith(prefix))



def _below(entries: Iterator[members.Entry], root: str, budget: archives.Budget) -> Iterator[members.Entry]:
    """The members below `root` (source.debRoot), renamed relative to it; every name is checked, all are counted."""
    prefix, found = root + "/", False
    for entry in entries:
        name = member_names.clean_name(entry.name, 0) or ""
        if name == root and entry.type != "dir":
            raise errors.ArchiveError(f"source.debRoot {root!r} is a {entry.type} in the package, not a directory")
        if not name.startswith(prefix):
            budget.add_member(entry.name)
            found = found or name == root
            continue
        target = entry.target
        if entry.type == "hardlink":
            target = member_names.clean_name(target, 0) or ""
            if not target.startswith(prefix):
                raise errors.ArchiveError(f"member {entry.name!r} is a hardlink to {entry.target!r}, outside "
                                          f"source.debRoot {root!r}")
            target = target[len(prefix):]
        found = True
        yield dataclasses.replace(entry, name=name[len(prefix):], target=target)
    if not found:
        raise errors.ArchiveError(f"there is nothing below source.debRoot {root!r}; check it against the "
                                  "package's files (dpkg-deb --contents)")


def extract(source: archives.Readable, dest: str, *, fmt: str, strip: int | None, budget: archives.Budget,
            owner: member_writer.Owner, spool_dir: str, checkpoint: Callable[[str], None] = lambda step: None,
            deb_root: str | None = None, made: Made | None = None,
            flush: Callable[[], None] = lambda: None, offload_after: int | None = member_writer.OFFLOAD_AFTER) -> str:
    """Extract the archive read from `source` into the empty directory `dest`.

    Returns the root of the extracted tree (below `dest` when `strip` is None,
    meaning auto, and the archive has a single top-level directory). A Debian
    package's data member is extracted (below `deb_root` only, if given) with
    auto meaning no strip: its tree starts at the file system's root. `made`,
    when given, receives everything written below that root, files with their
    content digests (for tree.digests, which then need not read them back). `flush` is called every
    FLUSH_BYTES written (to start writing them out while extraction goes on). After `offload_after` small
    files (None: never), the rest are written by a second process (file_offload.py).
    """
    file_process.keep_freed_memory(fsutil.LIBC)
    head = archives.read_head(source)
    detected = archives.detect(head)
    if fmt != "auto" and fmt != detected:
        raise errors.ArchiveError(f"source.format says {fmt} but the artifact is {detected}; fix source.format")
    stream: IO[bytes] = io.BufferedReader(archives.Prefixed(head, source), member_writer.CHUNK)
    package = deb_package.Package(stream, budget.limits.max_bytes) if detected == "deb" else None
    if package is not None:
        data, detected = package.data()
        stream, strip = io.BufferedReader(data, member_writer.CHUNK), strip or 0
    elif deb_root is not None:
        raise errors.ArchiveError(f"source.debRoot is set but the artifact is {detected}, not a Debian package; "
                                  "remove source.debRoot or fix the URL")
    writer = member_writer.Writer(dest, strip, owner, budget, checkpoint, flush, offload_after)
    try:
        root = _extract(stream, detected, writer, budget, spool_dir, auto_strip=strip is None, package=package,
                        deb_root=deb_root)
    except errors.ArchiveError as exc:
        writer.earlier_error(exc)
        raise
    finally:
        writer.close()
    if made is not None:
        made.add(writer, "" if root == dest else os.path.relpath(root, dest) + "/")
    return root


def _extract(stream: IO[bytes], detected: str, writer: member_writer.Writer, budget: archives.Budget, spool_dir: str,
             auto_strip: bool, package: deb_package.Package | None, deb_root: str | None) -> str:
    if detected == "zip":
        fd, spool = tempfile.mkstemp(prefix=".zip-", dir=spool_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, member_writer.CHUNK)
            for entry in members.zip_entries(spool, budget):
                writer.add(entry)
        finally:
            os.unlink(spool)
    else:
        ahead = readahead.Reader(lambda: archives.decompressed(stream, detected))  # on a second thread
        try:
            tar_stream = archives.Metered(ahead, budget)
            entries = tar_reader.entries(tar_stream)
            try:
                for entry in entries if deb_root is None else _below(entries, deb_root, budget):
                    writer.add(entry)
                while tar_stream.read(member_writer.CHUNK):  # the rest: padding, and the compressor's checksum
                    pass
            except errors.ArchiveError as exc:
                if package is None:
                    raise
                raise errors.ArchiveError(f"in the package's {package.data_name}: {exc}") from exc
        finally:
            ahead.close()  # the thread is stopped and joined: `source` is the caller's again
        if package is not None:
            package.finish()
    return writer.finish(auto_strip=auto_strip)
