"""Reading manifest files: which files count, who may write them, YAML with lines."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import yaml

from controller import errors, fsutil
from controller.manifests import crosschecks, documents, model, validated_cache, validation

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
log = logging.getLogger(__name__)
IGNORED_SUFFIXES = ("~", ".swp", ".swo", ".tmp", ".bak")
IGNORED_INFIXES = (".dpkg-", ".rpm")


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Everything read from the manifests: the valid ones and the errors."""

    applications: dict[str, model.Application]
    kinds: dict[str, model.Kind]
    problems: list[errors.ManifestError]
    # Application names whose manifest is present but invalid: keep their last good state.
    invalid_names: dict[str, errors.ManifestError]
    # Files another process has open for writing: not read this time.
    busy: list[str] = dataclasses.field(default_factory=list)


@contextlib.contextmanager
def read_lease(fd: int) -> Iterator[bool]:
    """Hold a read lease while reading; yield whether another process has the file open for writing.

    A writer that opens the file meanwhile waits until the lease is released (the
    daemon ignores the SIGIO that announces it). Where leases are not supported or
    not allowed, yield False."""
    try:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
    except BlockingIOError:
        yield True
        return
    except OSError:
        yield False
        return
    try:
        yield False
    finally:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)


def is_manifest_name(name: str) -> bool:
    """True for file names tether reads: *.yaml/*.yml, not dotfiles or leftovers."""
    if name.startswith(".") or not name.endswith((".yaml", ".yml")):
        return False
    return not name.endswith(IGNORED_SUFFIXES) and not any(i in name for i in IGNORED_INFIXES)


def check_directory(directory: str) -> None:
    """Raise PermanentError, naming `directory` and what to do, unless it is a directory tether can list."""
    shown = errors.shown_path(directory)
    fix = "give the right one with --manifests (or TETHER_MANIFESTS)"
    try:
        st = os.stat(directory)
        if not stat.S_ISDIR(st.st_mode):
            raise errors.PermanentError(f"the manifests directory {shown} is not a directory; {fix}")
        with os.scandir(directory):
            pass
    except FileNotFoundError:
        raise errors.PermanentError(f"the manifests directory {shown} does not exist; create it or {fix}") from None
    except OSError as exc:
        raise errors.PermanentError(f"the manifests directory {shown} cannot be read ({exc.strerror}); run as root "
                                    f"or {fix}") from None


def manifest_files(directory: str) -> list[str]:
    """The manifest files directly inside `directory`, sorted; subdirectories are ignored."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if is_manifest_name(entry.name) and entry.is_file():
                found.append(entry.path)
    return sorted(found)


def parse(file: str, text: str) -> model.Application | model.Kind:
    """Parse and validate one manifest's text; raise ManifestError naming the line."""
    return _parse(file, text)[0]


def _parse(file: str, text: str, store: validated_cache.Store | None = None,
           digest: str | None = None) -> tuple[model.Application | model.Kind, dict[str, int]]:
    """The manifest in `text` and the line of each JSON pointer in it; from `store` when it knows `digest` (the
    sha256 of the file's bytes)."""
    generation = digest or hashlib.sha256(text.encode()).hexdigest()
    cached = store.get(generation) if store is not None else None
    if cached is not None:
        try:
            return _built(file, generation, *cached)
        except Exception:  # a damaged entry: read the manifest as if it were not cached
            log.debug("The cached validation of %s is unusable; reading it again.", file, exc_info=True)
    document, lines = documents.parse(file, text)
    kind = document.get("kind")
    schema_name = validation.KIND_TO_SCHEMA.get(kind) if isinstance(kind, str) else None
    if schema_name is None:
        raise errors.ManifestError(
            file, f"kind must be Application or ApplicationKind, not {kind!r}", documents.line_for("/kind", lines),
            "/kind")
    complete = documents.validated(file, document, lines, schema_name)
    built = _built(file, generation, complete, lines, schema_name)
    if store is not None:
        store.put(generation, complete, lines, schema_name)
    return built


def _built(file: str, generation: str, complete: dict[str, Any], lines: dict[str, int],
           schema_name: str) -> tuple[model.Application | model.Kind, dict[str, int]]:
    """The application or kind of a validated document, checked on its own."""
    if schema_name == "application":
        app = model.application_from_document(complete, file, generation)
        for message, where in crosschecks.application_problems(app):
            raise errors.ManifestError(file, message, documents.line_for(where, lines), where)
        return app, lines
    return model.kind_from_document(complete, file, generation), lines


def _with_line(problem: errors.ManifestError, lines: dict[str, int]) -> errors.ManifestError:
    """The problem found across manifests, with the line of its JSON pointer in its file."""
    if problem.line is not None or not problem.pointer:
        return problem
    return errors.ManifestError(problem.file, problem.detail, documents.line_for(problem.pointer, lines), problem.pointer)


def _name_in(text: str) -> str | None:
    """Best effort: the metadata.name of a manifest that failed validation."""
    try:
        document = yaml.safe_load(text)
        name = document["metadata"]["name"]
    except Exception:
        return None
    if not isinstance(name, str) or document.get("kind") != "Application":
        return None
    # Only a valid name can be an application's: others would name files outside the status dir.
    return name if re.fullmatch(validation.schema("application")["$defs"]["name"]["pattern"], name) else None


def _unchanged(file: str, identities: dict[str, tuple[fsutil.Identity, str]],
               cache: dict[tuple[str, str], Any], secure: bool, euid: int) -> tuple[str, str] | None:
    """The cache key of `file` when it is a regular file with the identity it had when last read, and still
    passes the ownership check; None: read it."""
    known = identities.get(file)
    if known is None or (file, known[1]) not in cache:
        return None
    try:
        st = os.stat(file)
    except OSError:
        return None
    if fsutil.identity(st) != known[0] or not stat.S_ISREG(st.st_mode) or (secure and documents.insecure_reason(
            file, st, euid)):
        return None
    return file, known[1]


def load(
    paths: Iterable[str],
    *,
    secure: bool = True,
    euid: int | None = None,
    reserved_paths: Iterable[str] = (),
    skip_busy: bool = False,
    cache: dict[tuple[str, str], tuple[model.Application | model.Kind, dict[str, int]]] | None = None,
    store: validated_cache.Store | None = None,
    identities: dict[str, tuple[fsutil.Identity, str]] | None = None,
    clock_ns: Callable[[], int] = time.time_ns,
) -> Catalog:
    """Read manifests from files and directories, validate each and all together.

    With `secure`, directories and files not owned by root or by `euid`, or
    writable by group or others, are refused. With `skip_busy`, files that
    another process is still writing are left for a later read (`Catalog.busy`).
    `cache` keeps parsed manifests by file and content hash between calls, `store` what validation made of
    each manifest's bytes between processes (controller/manifests/validated_cache.py). With `identities` (and
    `cache`), a file whose identity (device, inode, size, mtime, ctime) is the one it had when it was last
    read, and that had changed last fsutil.RACY_NS before that read, is not opened again: its content hash is the
    one read then (a rescan of 1000 unchanged manifests opens none; see controller/tree/known_files.py on
    why the margin makes an identity stand for the content).
    """
    euid = os.geteuid() if euid is None else euid
    if store is not None:
        store.begin()
    busy: list[str] = []
    found: list[errors.ManifestError] = []
    files: list[str] = []
    for path in paths:
        try:
            st = os.stat(path)
            if secure and (reason := documents.insecure_reason(path, st, euid)):
                raise errors.ManifestError(path, documents.refusal(reason))
            files.extend(manifest_files(path) if stat.S_ISDIR(st.st_mode) else [path])
        except OSError as exc:
            found.append(errors.ManifestError(path, f"cannot be read: {exc.strerror}"))
        except errors.ManifestError as exc:
            found.append(exc)
    parsed: list[model.Application | model.Kind] = []
    lines: dict[str, dict[str, int]] = {}  # file -> JSON pointer -> line
    invalid: dict[str, errors.ManifestError] = {}
    for file in files:
        raw = b""
        try:
            if identities is not None and cache is not None and (known := _unchanged(file, identities, cache, secure,
                                                                                     euid)) is not None:
                if store is not None:
                    store.touch(known[1])
                item, lines[file] = cache[known]
                parsed.append(item)
                continue
            before = clock_ns()
            # O_NONBLOCK: a FIFO named on the command line never blocks; only a regular file is read
            with os.fdopen(os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
                st = os.fstat(handle.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise errors.ManifestError(file, "is not a regular file; a manifest is a file of YAML")
                if secure and (reason := documents.insecure_reason(file, st, euid)):
                    raise errors.ManifestError(file, documents.refusal(reason))
                with read_lease(handle.fileno()) if skip_busy else contextlib.nullcontext(False) as writing:
                    if writing:
                        busy.append(file)
                        continue
                    raw = handle.read(documents.MAX_BYTES + 1)
            key = (file, hashlib.sha256(raw).hexdigest())
            if identities is not None:
                identities.pop(file, None)
                if st.st_ctime_ns < before - fsutil.RACY_NS:
                    identities[file] = (fsutil.identity(st), key[1])
            if cache is None or key not in cache:
                parsed_now = _parse(file, documents.decode(file, raw), store, key[1])
                if cache is not None:
                    cache[key] = parsed_now
            elif store is not None:
                store.touch(key[1])
            item, lines[file] = parsed_now if cache is None else cache[key]
            parsed.append(item)
        except UnicodeDecodeError as exc:
            found.append(errors.ManifestError(file, f"the file is not UTF-8 text: {exc.reason}"))
        except OSError as exc:
            found.append(errors.ManifestError(file, f"cannot be read: {exc.strerror}"))
        except errors.ManifestError as exc:
            found.append(exc)
            if name := _name_in(raw.decode("utf-8", "replace")):
                invalid[name] = exc
    if identities is not None:
        for gone in set(identities) - set(files):
            del identities[gone]
    if store is not None:
        store.save()
    apps, kinds, problems = crosschecks.check(parsed, list(reserved_paths))
    problems = [_with_line(problem, lines.get(problem.file, {})) for problem in problems]
    for problem in problems:
        found.append(problem)
    for problem in problems:
        for app in [a for a in parsed if isinstance(a, model.Application)]:
            if app.file == problem.file and app.name not in apps:
                invalid.setdefault(app.name, problem)
    return Catalog(applications=apps, kinds=kinds, problems=found, invalid_names=invalid, busy=busy)
