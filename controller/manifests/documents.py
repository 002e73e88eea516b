"""One YAML document read safely: who may write its file, its size, and the line of each JSON pointer.

The manifests loader and the node identity (controller/fleet/node.py) read their files through
these functions, so both follow one rule: files owned by root or tether's own user, not writable by
group or others; at most 1 MiB of UTF-8; `yaml.safe_load` with bounded values and depth; no
duplicate keys.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable
from typing import Any

import yaml

from controller import errors, fsutil
from controller.manifests import validation

# PyYAML's own safe loader: its errors name the offending character, and deep nesting stops at
# Python's recursion limit (caught below); the daemon caches parsed manifests, so speed matters little.
LOADER = yaml.SafeLoader
# A manifest holds hundreds of values; YAML aliases could otherwise expand one without bound.
MAX_VALUES = 100_000
MAX_DEPTH = 64
MAX_BYTES = 1024 * 1024


def insecure_reason(path: str, st: os.stat_result, euid: int) -> str | None:
    """Why a manifest file or directory may not be trusted, or None when it may."""
    if st.st_uid not in (0, euid):
        return f"{path} is owned by uid {st.st_uid}, not by root or by tether's own user"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def refusal(reason: str) -> str:
    """The message of a refusal because of who may write a manifest file or directory."""
    return (f"refused: {reason}; make it owned by root and not writable by group or others (chown root; chmod "
            "go-w), or, on a development machine only, pass --insecure-manifests (TETHER_INSECURE_MANIFESTS=1)")


def read_text(file: str, *, secure: bool = True, euid: int | None = None) -> str:
    """The text of one trusted file; raise ManifestError (refused, too large, not UTF-8) or OSError."""
    euid = os.geteuid() if euid is None else euid

    def check(st: os.stat_result) -> None:
        if secure and (reason := insecure_reason(file, st, euid)):
            raise errors.ManifestError(file, refusal(reason))

    return decode(file, read_regular(file, MAX_BYTES + 1, check))


def read_regular(file: str, limit: int, check: Callable[[os.stat_result], None] = lambda st: None) -> bytes:
    """At most `limit` bytes of the regular file `file` (a symlink to one is fine), after `check` of its status.
    A FIFO, device or directory is refused (ManifestError) without waiting for a writer; OSError otherwise."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise errors.ManifestError(file, f"this is {fsutil.kind(st.st_mode)}, not a regular file; tether reads "
                                             "only regular files here (a symlink to one is fine)")
        check(st)
        chunks, left = [], limit
        while left and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def decode(file: str, raw: bytes) -> str:
    if len(raw) > MAX_BYTES:
        raise errors.ManifestError(file, "the file is larger than 1 MiB; is it a manifest?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.ManifestError(file, f"the file is not UTF-8 text: {exc.reason}") from exc


class DuplicateKey(Exception):
    def __init__(self, key: Any, pointer: str, line: int) -> None:
        super().__init__(key)
        self.key, self.pointer, self.line = key, pointer, line


def _line_map(node: yaml.Node, path: tuple[Any, ...], lines: dict[str, int]) -> None:
    lines[validation.pointer(path)] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        keys: set[Any] = set()
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):  # a list or mapping as a key: constructing it refuses it
                continue
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


def line_for(pointer: str, lines: dict[str, int]) -> int | None:
    """The line of a JSON pointer, or of the nearest value that contains it."""
    while pointer not in lines and pointer:
        pointer = pointer.rsplit("/", 1)[0]
    return lines.get(pointer)


@dataclasses.dataclass(frozen=True)
class _Shape:
    """What `_checked` found in the node tree: its size and the line of each pointer, or why it is refused."""

    values: int = 0
    depth: int = 0
    lines: dict[str, int] = dataclasses.field(default_factory=dict)
    problem: Exception | None = None


def _checked(node: yaml.Node) -> _Shape:
    """Measure `node` (and map its lines when it is within the bounds) before it is constructed: building
    the value merges `<<` keys into the node tree, which would then look like duplicate keys."""
    try:
        values, depth = _measure(node, {})
    except (RecursionError, ValueError) as exc:
        return _Shape(problem=exc)
    if depth > MAX_DEPTH or values > MAX_VALUES:
        return _Shape(values, depth)
    lines: dict[str, int] = {}
    try:
        _line_map(node, (), lines)
    except DuplicateKey as exc:
        return _Shape(values, depth, problem=exc)
    return _Shape(values, depth, lines)


def _compose_and_construct(text: str) -> tuple[yaml.Node | None, Any, _Shape]:
    """The node tree of the one document in `text`, the value built from it and its shape: one parse, not
    two (composing is most of the time of reading a manifest)."""
    loader = LOADER(text)
    try:
        node = loader.get_single_node()
        shape = _Shape() if node is None else _checked(node)
        return node, None if node is None else loader.construct_document(node), shape
    finally:
        loader.dispose()


def _at(mark: Any, text: str) -> str:
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return f"the end of the file ({where})" if mark.index >= len(text.rstrip()) else where


def syntax_error(exc: yaml.MarkedYAMLError, text: str) -> tuple[int | None, str]:
    """(line, message) of a YAML syntax error in `text`, with both of PyYAML's marks: where the construct that is
    broken starts (its context: an unterminated quote starts there) and where the parser noticed (the problem).
    The line is the problem's, unless the parser noticed only at the end of the file: then the context's, and
    never one past the file's last line."""
    problem = errors.printable(exc.problem or "a syntax error")
    parts = [f"{problem} at {_at(exc.problem_mark, text)}" if exc.problem_mark else problem]
    if exc.context:
        context = errors.printable(exc.context)
        parts.insert(0, f"{context} at {_at(exc.context_mark, text)}" if exc.context_mark else context)
    first = exc.problem_mark
    if first is None or (exc.context_mark is not None and first.index >= len(text.rstrip())):
        first = exc.context_mark
    line = None if first is None else min(first.line + 1, max(1, len(text.splitlines())))
    return (line,
            f"this is not valid YAML: {', '.join(parts)}; fix the syntax there (a quote, bracket or brace left open, "
            "a tab or a wrong indentation, a ':' missing after a key), then check it with `tether validate FILE`")


def parse(file: str, text: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The one YAML mapping in `text` and the line of each JSON pointer in it; raise ManifestError."""
    try:
        node, document, shape = _compose_and_construct(text)
    except yaml.MarkedYAMLError as exc:
        if exc.context == "expected a single document in the stream":
            mark = exc.problem_mark or exc.context_mark
            raise errors.ManifestError(
                file, "the file holds more than one YAML document; put each manifest in a file of its own",
                mark.line + 1 if mark else None) from exc
        line, message = syntax_error(exc, text)
        raise errors.ManifestError(file, message, line) from exc
    except yaml.YAMLError as exc:
        raise errors.ManifestError(file, f"this is not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise errors.ManifestError(file, "the document is nested too deeply; is it a manifest?") from exc
    except (ValueError, OverflowError) as exc:  # a value YAML cannot build: a 5000-digit integer, 2024-13-45
        raise errors.ManifestError(file, f"this is not valid YAML: a value cannot be read "
                                   f"({errors.printable(str(exc))[:200]})") from exc
    if node is None or not isinstance(document, dict):
        raise errors.ManifestError(file, "the file must hold one YAML mapping (a manifest)", 1)
    if isinstance(shape.problem, RecursionError):
        raise errors.ManifestError(file, "the document is nested too deeply; is it a manifest?") from shape.problem
    if isinstance(shape.problem, ValueError):
        raise errors.ManifestError(file, f"{shape.problem}; a manifest cannot hold a cycle, remove that alias") \
            from shape.problem
    if shape.depth > MAX_DEPTH:
        raise errors.ManifestError(file, f"the document is nested {shape.depth} levels deep, more than {MAX_DEPTH}; "
                                   "is it a manifest?")
    if shape.values > MAX_VALUES:
        raise errors.ManifestError(file, f"the document holds more than {MAX_VALUES} values once its YAML aliases "
                                   "are expanded; is it a manifest?")
    if isinstance(shape.problem, DuplicateKey):
        duplicate = shape.problem
        raise errors.ManifestError(file, f"the key {duplicate.key!r} appears twice; YAML would silently keep only "
                                   "the last one, so remove one of them", duplicate.line, duplicate.pointer) from duplicate
    return document, shape.lines


def validated(file: str, document: dict[str, Any], lines: dict[str, int], schema_name: str) -> dict[str, Any]:
    """`document` checked against the schema `schema_name` and for bad strings, with its defaults filled in;
    raise ManifestError naming the line and the JSON pointer of the first problem."""
    for where, message in validation.errors(document, schema_name):
        raise errors.ManifestError(file, message, line_for(where, lines), where)
    for path, message in validation.bad_strings(document):
        where = validation.pointer(path)
        raise errors.ManifestError(file, message, line_for(where, lines), where)
    complete: dict[str, Any] = validation.with_defaults(document, schema_name)
    return complete
