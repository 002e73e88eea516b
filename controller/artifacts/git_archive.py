"""A git commit's tree onto disk: `git archive` streamed through the safe extractor.

Before `git archive` starts (it reads the whole tree into memory first),
`git ls-tree -r -t -l` of the tree shows what it holds, read as git writes it:
more files, bytes or levels than the source's limits allow is refused at the
first entry over them (a tree bomb of a few kB can name 10**9 files, and git
archive itself crashes on a few thousand levels); gitlinks
(submodules) are skipped with a warning and never fetched (`git archive` leaves
an empty directory for them). Then `git archive --format=tar
<commit>[:<subdirectory>]` is read from git's stdout by `extracting.extract`,
with the same member filter, limits, ownership and checkpoints as a tar
artifact; the stream's sha256 is returned as the artifact digest. Meanwhile, on
a thread of its own, Git LFS pointer files (small blobs starting with the LFS
spec line) are looked for and refused naming the path unless `lfs: ignore`: a
refusal stops the extraction, whose staging directory the caller removes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import IO, NoReturn

from controller import errors
from controller.artifacts import archives, extracting, git_mirror, git_runner, member_writer
from controller.manifests import model

log = logging.getLogger(__name__)
LFS_SPEC = b"version https://git-lfs.github.com/spec/v1"
LFS_MAX_POINTER = 1024  # LFS pointer files are about 130 bytes; git-lfs itself reads at most 1024
LFS_MIN_POINTER = len(LFS_SPEC) + len("\noid sha256:") + 64 + len("\nsize 0\n")
GITLINK, SYMLINK = b"160000", b"120000"
SHOWN_PATHS = 5


class _Beside:
    """`work` run on a thread of its own; `check` raises what it raised, once it has; `join` only waits."""

    def __init__(self, work: Callable[[], None]) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                work()
            except BaseException as exc:  # raised to the reading thread (check, join)
                self._error = exc

        self._thread = threading.Thread(target=run, name="tether-git-lfs", daemon=True)
        self._thread.start()

    def check(self) -> None:
        if self._error is not None:
            raise self._error

    def join(self) -> None:
        self._thread.join()


def treeish(source: model.GitSource, commit: str, git: git_runner.Git) -> str:
    """`commit`, or its subdirectory as a tree (which must exist)."""
    if source.subdirectory is None:
        return commit
    spec = f"{commit}:{source.subdirectory}"
    code, out, _ = git.run("cat-file", "-t", spec, check=False, what="git cat-file")
    if code != 0 or out.strip() != b"tree":
        raise errors.PermanentError(f"commit {commit} has no directory {source.subdirectory}; fix "
                                    "source.git.subdirectory")
    return spec


def _shown(paths: list[str]) -> str:
    more = f" and {len(paths) - SHOWN_PATHS} more" if len(paths) > SHOWN_PATHS else ""
    return ", ".join(repr(p) for p in paths[:SHOWN_PATHS]) + more


def _entries(out: IO[bytes]) -> Iterator[bytes]:
    """The NUL-terminated records of `git ls-tree -z` as they arrive (a listing may be far too large to hold)."""
    pending = b""
    while chunk := out.read(member_writer.CHUNK):
        records = (pending + chunk).split(b"\0")
        pending = records.pop()
        yield from records
    if pending:
        yield pending


def inspect(git: git_runner.Git, tree: str, limits: model.Limits, ref: str) -> list[tuple[str, str]]:
    """Refuse a tree over the limits; warn about gitlinks; return the blobs that could be LFS pointers (object,
    path) for `check_lfs`. The listing is read as git writes it and stopped at the first limit passed: a few kB
    of trees can name 10**9 files."""
    gitlinks, small, files, size = [], [], 0, 0
    # -t: directories too, each before what it holds (git archive writes them as members, and a chain of
    # directories with no file at its end is as deep as one with).
    with git.stream("ls-tree", "-r", "-t", "-l", "-z", "--full-tree", tree, what="git ls-tree") as out:
        for line in _entries(out):
            meta, _, raw_path = line.partition(b"\t")
            fields = meta.split()
            if len(fields) != 4:
                continue
            mode, kind, obj, length = fields  # decoded only where used: this loop runs for every file
            if raw_path.count(b"/") >= limits.max_depth:  # git's paths are normalised: a/b/c is 3 deep
                _too_deep(raw_path, ref, limits)
            if mode == GITLINK:
                gitlinks.append(raw_path.decode("utf-8", "surrogateescape"))
                if len(gitlinks) > limits.max_members:
                    _too_many(ref, limits)
                continue
            files += 1
            if kind == b"blob" and length.isdigit():
                blob = int(length)
                size += blob
                if LFS_MIN_POINTER <= blob <= LFS_MAX_POINTER and mode != SYMLINK:
                    small.append((obj.decode("ascii", "replace"), raw_path.decode("utf-8", "surrogateescape")))
            if files > limits.max_members:
                _too_many(ref, limits)
            if size > limits.max_bytes:
                raise errors.ArchiveError(f"the tree of {ref} holds more than {limits.max_bytes} bytes "
                                          "(limits.maxBytes); raise the limit if this is expected")
    if gitlinks:
        log.warning("The tree of %s has submodules, which tether never fetches; their directories stay empty: %s.",
                    ref, _shown(gitlinks))
    return small


def check_lfs(git: git_runner.Git, small: list[tuple[str, str]], source: model.GitSource, ref: str) -> None:
    """Refuse Git LFS pointer files among the `small` blobs (unless lfs: ignore, which warns)."""
    if small:
        pointers = _lfs_pointers(git, small)
        if pointers and source.lfs == "refuse":
            raise errors.ArchiveError(f"the tree of {ref} has Git LFS pointer files, whose content tether does not "
                                      f"fetch: {_shown(pointers)}; deploy real files, or set source.git.lfs: ignore "
                                      "to deploy the pointer files as they are")
        if pointers:
            log.warning("The tree of %s has Git LFS pointer files, deployed as they are (lfs: ignore): %s.",
                        ref, _shown(pointers))


def _too_deep(raw_path: bytes, ref: str, limits: model.Limits) -> NoReturn:
    path = raw_path.decode("utf-8", "replace")
    raise errors.ArchiveError(f"the tree of {ref} has a path more than {limits.max_depth} levels deep "
                              f"(limits.maxDepth): {path[:80] + '...' if len(path) > 80 else path!r}; raise the "
                              "limit if this is expected")


def _too_many(ref: str, limits: model.Limits) -> NoReturn:
    raise errors.ArchiveError(f"the tree of {ref} has more than {limits.max_members} files and directories "
                              "(limits.maxMembers); raise the limit if this is expected")


def _lfs_pointers(git: git_runner.Git, blobs: list[tuple[str, str]]) -> list[str]:
    """The paths of the blobs that are Git LFS pointer files, read in one `git cat-file --batch`."""
    _, out, _ = git.run("cat-file", "--batch", stdin="".join(f"{obj}\n" for obj, _ in blobs).encode(),
                        what="git cat-file")
    pointers, offset = [], 0
    for _, path in blobs:
        end = out.index(b"\n", offset)
        header = out[offset:end].split()
        if len(header) != 3 or not header[2].isdigit():  # "<oid> missing": no content follows
            offset = end + 1
            continue
        length = int(header[2])
        content = out[end + 1:end + 1 + length]
        offset = end + 1 + length + 1
        if content.startswith(LFS_SPEC):
            pointers.append(path)
    return pointers


def materialise(git: git_runner.Git, source: model.GitSource, resolved: git_mirror.Resolved, dest: str, *,
                limits: model.Limits, owner: member_writer.Owner, spool_dir: str,
                checkpoint: Callable[[str], None] = lambda step: None,
                extracted: extracting.Made | None = None, flush: Callable[[], None] = lambda: None,
                ) -> tuple[str, str, int]:
    """Extract the resolved commit (or its subdirectory) into the empty `dest`; (root, sha256, bytes). `extracted`
    receives what was made, and `flush` is asked to start writing out (see extracting.extract)."""
    tree = treeish(source, resolved.commit, git)
    # The limits first, alone: git archive reads a whole tree into memory before it writes a byte, so it must
    # never start on a tree that they refuse (a few kB of trees can name 10**9 files).
    small = inspect(git, tree, limits, resolved.ref)
    with git.stream("archive", "--format=tar", tree, what=f"git archive of {resolved.ref}") as out:
        lfs = _Beside(lambda: check_lfs(git, small, source, resolved.ref))  # while the tree is extracted
        try:
            reader = archives.Hashing(out, lfs.check)  # a refusal stops the extraction (and kills git archive)
            budget = archives.Budget(limits, lambda: reader.count)
            root = extracting.extract(reader, dest, fmt="tar", strip=0, budget=budget, owner=owner,
                                      spool_dir=spool_dir, checkpoint=checkpoint, made=extracted, flush=flush)
            while reader.read(member_writer.CHUNK):
                pass
        finally:
            lfs.join()  # (if the extraction failed, its error, a refusal that stopped it or its own, is raised)
        lfs.check()  # a refusal that came after the last read
    return root, reader.digest.hexdigest(), reader.count
