"""Reading manifest files: which files count, who may write them, YAML with lines."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

from controller import errors
from controller.manifests import crosschecks, model, validation

F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
# PyYAML's own safe loader: its errors name the offending character, and deep nesting stops at
# Python's recursion limit (caught below); the daemon caches parsed manifests, so speed matters little.
LOADER = yaml.SafeLoader
IGNORED_SUFFIXES = ("~", ".swp", ".swo", ".tmp", ".bak")
IGNORED_INFIXES = (".dpkg-", ".rpm")
# A manifest holds hundreds of values; YAML aliases could otherwise expand one without bound.
MAX_VALUES = 100_000
MAX_DEPTH = 64


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


def insecure_reason(path: str, st: os.stat_result, euid: int) -> str | None:
    """Why a manifest file or directory may not be trusted, or None when it may."""
    if st.st_uid not in (0, euid):
        return f"{path} is owned by uid {st.st_uid}, not by root or by tether's own user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def manifest_files(directory: str) -> list[str]:
    """The manifest files directly inside `directory`, sorted; subdirectories are ignored."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if is_manifest_name(entry.name) and entry.is_file():
                found.append(entry.path)
    return sorted(found)


class DuplicateKey(Exception):
    def __init__(self, key: Any, pointer: str, line: int) -> None:
        super().__init__(key)
        self.key, self.pointer, self.line = key, pointer, line


def _line_map(node: yaml.Node, path: tuple[Any, ...], lines: dict[str, int]) -> None:
    lines[validation.pointer(path)] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        keys: set[Any] = set()
        for key, value in node.value:
            if key.value in keys:
                raise DuplicateKey(key.value, validation.pointer(path), key.start_mark.line + 1)
            keys.add(key.value)
            lines[validation.pointer((*path, key.value))] = key.start_mark.line + 1
            _line_map(value, (*path, key.value), lines)
            lines[validation.pointer((*path, key.value))] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, (*path, index), lines)


def _measure(node: yaml.Node, seen: dict[int, tuple[int, int] | None]) -> tuple[int, int]:
    """(values, depth) of `node` once aliases are expanded, counted without expanding them.

    Raise ValueError when an alias refers to a node that contains it.
    """
    if id(node) in seen:
        known = seen[id(node)]
        if known is None:
            raise ValueError("an alias refers to a value that contains it")
        return known
    seen[id(node)] = None
    children: list[yaml.Node] = []
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    values, depth = 1, 1
    for child in children:
        child_values, child_depth = _measure(child, seen)
        values, depth = values + child_values, max(depth, child_depth + 1)
    seen[id(node)] = (values, depth)
    return values, depth


def _line_for(pointer: str, lines: dict[str, int]) -> int | None:
    while pointer not in lines and pointer:
        pointer = pointer.rsplit("/", 1)[0]
    return lines.get(pointer)


def parse(file: str, text: str) -> model.Application | model.Kind:
    """Parse and validate one manifest's text; raise ManifestError naming the line."""
    return _parse(file, text)[0]


def _parse(file: str, text: str) -> tuple[model.Application | model.Kind, dict[str, int]]:
    """The manifest in `text` and the line of each JSON pointer in it."""
    try:
        node = yaml.compose(text, Loader=LOADER)
        document = yaml.load(text, Loader=LOADER)  # noqa: S506 - LOADER is a safe loader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        if exc.context == "expected a single document in the stream":
            raise errors.ManifestError(
                file, "the file holds more than one YAML document; put each manifest in a file of its own", line
            ) from exc
        raise errors.ManifestError(file, f"this is not valid YAML: {exc.problem}", line) from exc
    except yaml.YAMLError as exc:
        raise errors.ManifestError(file, f"this is not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise errors.ManifestError(file, "the document is nested too deeply; is it a manifest?") from exc
    except (ValueError, OverflowError) as exc:  # a value YAML cannot build: a 5000-digit integer, 2024-13-45
        raise errors.ManifestError(file, f"this is not valid YAML: a value cannot be read "
                                   f"({errors.printable(str(exc))[:200]})") from exc
    if node is None or not isinstance(document, dict):
        raise errors.ManifestError(file, "the file must hold one YAML mapping (a manifest)", 1)
    try:
        values, depth = _measure(node, {})
    except RecursionError as exc:
        raise errors.ManifestError(file, "the document is nested too deeply; is it a manifest?") from exc
    except ValueError as exc:
        raise errors.ManifestError(file, f"{exc}; a manifest cannot hold a cycle, remove that alias") from exc
    if depth > MAX_DEPTH:
        raise errors.ManifestError(file, f"the document is nested {depth} levels deep, more than {MAX_DEPTH}; "
                                   "is it a manifest?")
    if values > MAX_VALUES:
        raise errors.ManifestError(file, f"the document holds more than {MAX_VALUES} values once its YAML aliases "
                                   "are expanded; is it a manifest?")
    lines: dict[str, int] = {}
    try:
        _line_map(node, (), lines)
    except DuplicateKey as exc:
        raise errors.ManifestError(file, f"the key {exc.key!r} appears twice; YAML would silently keep only the "
                                   "last one, so remove one of them", exc.line, exc.pointer) from exc
    kind = document.get("kind")
    schema_name = validation.KIND_TO_SCHEMA.get(kind) if isinstance(kind, str) else None
    if schema_name is None:
        raise errors.ManifestError(
            file, f"kind must be Application or ApplicationKind, not {kind!r}", _line_for("/kind", lines), "/kind"
        )
    for where, message in validation.errors(document, schema_name):
        raise errors.ManifestError(file, message, _line_for(where, lines), where)
    for path, message in validation.bad_strings(document):
        where = validation.pointer(path)
        raise errors.ManifestError(file, message, _line_for(where, lines), where)
    complete = validation.with_defaults(document, schema_name)
    generation = hashlib.sha256(text.encode()).hexdigest()
    if schema_name == "application":
        app = model.application_from_document(complete, file, generation)
        for message, where in crosschecks.application_problems(app):
            raise errors.ManifestError(file, message, _line_for(where, lines), where)
        return app, lines
    return model.kind_from_document(complete, file, generation), lines


def _with_line(problem: errors.ManifestError, lines: dict[str, int]) -> errors.ManifestError:
    """The problem found across manifests, with the line of its JSON pointer in its file."""
    if problem.line is not None or not problem.pointer:
        return problem
    return errors.ManifestError(problem.file, problem.detail, _line_for(problem.pointer, lines), problem.pointer)


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


def load(
    paths: Iterable[str],
    *,
    secure: bool = True,
    euid: int | None = None,
    reserved_paths: Iterable[str] = (),
    skip_busy: bool = False,
    cache: dict[tuple[str, str], tuple[model.Application | model.Kind, dict[str, int]]] | None = None,
) -> Catalog:
    """Read manifests from files and directories, validate each and all together.

    With `secure`, directories and files not owned by root or by `euid`, or
    writable by group or others, are refused. With `skip_busy`, files that
    another process is still writing are left for a later read (`Catalog.busy`).
    `cache` keeps parsed manifests by file and content hash between calls.
    """
    euid = os.geteuid() if euid is None else euid
    busy: list[str] = []
    found: list[errors.ManifestError] = []
    files: list[str] = []
    for path in paths:
        try:
            st = os.stat(path)
            if secure and (reason := insecure_reason(path, st, euid)):
                raise errors.ManifestError(path, f"refused: {reason}; fix the permissions")
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
            # O_NONBLOCK: a FIFO named on the command line never blocks; only a regular file is read
            with os.fdopen(os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
                st = os.fstat(handle.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise errors.ManifestError(file, "is not a regular file; a manifest is a file of YAML")
                if secure and (reason := insecure_reason(file, st, euid)):
                    raise errors.ManifestError(file, f"refused: {reason}; fix the permissions")
                with read_lease(handle.fileno()) if skip_busy else contextlib.nullcontext(False) as writing:
                    if writing:
                        busy.append(file)
                        continue
                    raw = handle.read(1024 * 1024 + 1)
            if len(raw) > 1024 * 1024:
                raise errors.ManifestError(file, "the file is larger than 1 MiB; is it a manifest?")
            key = (file, hashlib.sha256(raw).hexdigest())
            if cache is None or key not in cache:
                parsed_now = _parse(file, raw.decode("utf-8"))
                if cache is not None:
                    cache[key] = parsed_now
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
    apps, kinds, problems = crosschecks.check(parsed, list(reserved_paths))
    problems = [_with_line(problem, lines.get(problem.file, {})) for problem in problems]
    for problem in problems:
        found.append(problem)
    for problem in problems:
        for app in [a for a in parsed if isinstance(a, model.Application)]:
            if app.file == problem.file and app.name not in apps:
                invalid.setdefault(app.name, problem)
    return Catalog(applications=apps, kinds=kinds, problems=found, invalid_names=invalid, busy=busy)
