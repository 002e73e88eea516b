"""The example manifests adapted to the demo's sandbox by editing lines, so comments and formatting stay.

`adapt` changes the lines that must change for a normal user on loopback (path, source URL,
secret files, owners) and checks that the result parses to exactly the document that
`sandboxed` describes; `with_deployment` then changes the deployment line alone.
Used by examples/demo.py and examples/demo_daemon.py; only the standard library and PyYAML.
"""

from __future__ import annotations

import copy
import grp
import os
import pwd
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")
BLOCK_SCALAR = re.compile(r"^\s*[|>][-+0-9]*\s*(#.*)?$")


class AdaptError(Exception):
    """A manifest cannot be adapted by line edits; the message says which and why."""


def sandboxed(document: dict[str, Any], root: Path, base_url: str, version: str) -> dict[str, Any]:
    """The example manifest adapted to the sandbox: paths, loopback URL, secrets, this user for every owner."""
    document = copy.deepcopy(document)
    if document["kind"] != "Application":
        return document
    name, spec = document["metadata"]["name"], document["spec"]
    me, my_group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    for key, local in (("userMapping", me), ("groupMapping", my_group)):
        if key in spec:
            spec[key] = {source: local for source in spec[key]}
    spec["path"] = str(root / "apps" / name)
    spec["deployment"] = version
    spec.pop("user", None)  # a normal user cannot give files to another account
    spec.pop("group", None)
    source = spec["source"]
    if "{deployment}" not in source["url"]:
        raise AdaptError(f"the source URL of {name} has no {{deployment}} placeholder")
    source["url"] = f"{base_url}/{name}/{{deployment}}.tar.gz"
    for value in source.get("headers", {}).values():
        if isinstance(value, dict) and "fromFile" in value:
            value["fromFile"] = str(root / "secrets" / Path(value["fromFile"]).name)
    return document


def flow(value: Any) -> str:
    """`value` as one line of YAML flow style: a plain or quoted scalar, or {a: b, ...}."""
    dumped: str = yaml.safe_dump([value], default_flow_style=True, width=1_000_000).strip()
    return dumped[1:-1]


def find(lines: Sequence[str], keys: Sequence[str]) -> tuple[int, int]:
    """The line of the key at `keys` (a path from the top) and the end of its value (exclusive)."""
    path: list[tuple[int, str]] = []
    skip_below: int | None = None  # inside a block scalar (a hook's script): lines more indented than this
    for number, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_below is not None and (not stripped or indent > skip_below):
            continue
        skip_below = None
        match = KEY.match(line)
        if not stripped or stripped.startswith("#") or not match:
            continue
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, match["key"]))
        if BLOCK_SCALAR.match(match["rest"]):
            skip_below = indent
        if [key for _, key in path] == list(keys):
            end = number + 1
            while end < len(lines) and (not lines[end].strip() or
                                        len(lines[end]) - len(lines[end].lstrip(" ")) > indent):
                end += 1
            while end > number + 1 and not lines[end - 1].strip():
                end -= 1
            return number, end
    raise AdaptError(f"{'.'.join(keys)} is not on a line of its own; write the manifest in block style, "
                     "one key a line, as examples/manifests/ does")


def set_value(text: str, keys: Sequence[str], value: Any) -> str:
    """Replace the value of one key (its line, and any block below it) with `value` on that line."""
    lines = text.splitlines(keepends=True)
    start, end = find(lines, keys)
    match = KEY.match(lines[start].rstrip("\n"))
    assert match is not None
    comment = re.search(r"\s+#.*$", match["rest"]) if not match["rest"].strip().startswith(("'", '"')) else None
    lines[start:end] = [f"{match['indent']}{match['key']}: {flow(value)}{comment.group(0) if comment else ''}\n"]
    return "".join(lines)


def comment_out(text: str, keys: Sequence[str], why: str) -> str:
    """Turn one key (and its block) into comments, saying why, so the line count and the rest stay."""
    lines = text.splitlines(keepends=True)
    start, end = find(lines, keys)
    indent = len(lines[start]) - len(lines[start].lstrip(" "))
    edited = [f"{' ' * indent}# {line[indent:].rstrip()}  # {why}\n" if n == start else f"{' ' * indent}# {line[indent:]}"
              for n, line in enumerate(lines[start:end], start=start)]
    lines[start:end] = edited
    return "".join(lines)


def adapt(text: str, root: Path, base_url: str, version: str) -> str:
    """The example manifest `text` for the sandbox: the lines that must change, and only those."""
    document = yaml.safe_load(text)
    wanted = sandboxed(document, root, base_url, version)
    if document["kind"] == "Application":
        spec = wanted["spec"]
        text = set_value(text, ("spec", "path"), spec["path"])
        text = set_value(text, ("spec", "deployment"), version)
        text = set_value(text, ("spec", "source", "url"), spec["source"]["url"])
        for header, value in spec["source"].get("headers", {}).items():
            if isinstance(value, dict) and "fromFile" in value:
                text = set_value(text, ("spec", "source", "headers", header), value)
        for key in ("userMapping", "groupMapping"):
            if key in spec:
                text = set_value(text, ("spec", key), spec[key])
        for key in ("user", "group"):
            if key in document["spec"]:
                text = comment_out(text, ("spec", key), "left out by the demo: a normal user cannot chown")
    if yaml.safe_load(text) != wanted:
        raise AdaptError("editing its lines did not give the sandbox's manifest; keep spec.path, spec.deployment, "
                         "spec.source.url, spec.user and spec.group each on a line of its own")
    return text


def with_deployment(text: str, version: str) -> str:
    """The same manifest with only its deployment line changed."""
    changed = set_value(text, ("spec", "deployment"), version)
    if yaml.safe_load(changed)["spec"]["deployment"] != version:
        raise AdaptError(f"changing the deployment line did not ask for {version}")
    return changed
