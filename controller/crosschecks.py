"""Checks that a single schema cannot express: paths, placeholders, and checks across manifests."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Sequence

from controller import errors, manifests

# Directories that are never an application path themselves.
SYSTEM_DIRS = frozenset(
    ["/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/bin", "/usr/lib", "/usr/local", "/usr/sbin", "/usr/share", "/var", "/var/cache", "/var/lib", "/var/log", "/var/spool", "/var/tmp", "/var/www"]
)
# Trees that an application path may never be inside.
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32",
                "/proc", "/run", "/sbin", "/sys", "/usr/bin", "/usr/lib", "/usr/sbin")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def is_inside(path: str, tree: str) -> bool:
    """True when `path` is `tree` or below it (both normalised absolute paths)."""
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def path_problem(path: str) -> str | None:
    """Why `path` cannot be an application path, or None."""
    if not path.startswith("/"):
        return f"path {path!r} must be absolute"
    normal = "/" + os.path.normpath(path).lstrip("/")  # normpath keeps a leading //
    if normal != path:
        return f"path {path!r} is not normalised; write {normal!r}"
    if path == "/":
        return "path '/' is the root directory; give the application a directory of its own"
    if path in SYSTEM_DIRS:
        return f"path {path!r} is a system directory; use a directory below it, such as {path}/APP"
    for tree in SYSTEM_TREES:
        if is_inside(path, tree):
            return f"path {path!r} is inside the system directory {tree}; choose another place"
    if "\n" in path or "\0" in path:
        return "path contains a control character"
    return None


def application_problems(app: manifests.Application) -> Iterator[tuple[str, str]]:
    """(message, JSON pointer) for what is wrong with one application on its own."""
    if problem := path_problem(app.path):
        yield problem, "/spec/path"
    if not math.isfinite(app.hook_timeout_seconds):
        yield "hookTimeoutSeconds must be a finite number of seconds", "/spec/hookTimeoutSeconds"
    if app.source is not None:
        for name in PLACEHOLDER.findall(app.source.url):
            if name not in manifests.PLACEHOLDERS:
                allowed = ", ".join("{" + p + "}" for p in manifests.PLACEHOLDERS)
                yield f"unknown placeholder {{{name}}} in the URL; only {allowed} exist", "/spec/source/url"


def check(
    parsed: Sequence[manifests.Application | manifests.Kind],
    reserved_paths: Sequence[str] = (),
) -> tuple[dict[str, manifests.Application], dict[str, manifests.Kind], list[errors.ManifestError]]:
    """Check manifests against each other; return the valid applications and kinds, and problems."""
    problems: list[errors.ManifestError] = []
    kinds: dict[str, manifests.Kind] = {}
    apps: dict[str, manifests.Application] = {}
    refused: set[str] = set()  # files refused by a cross check

    def refuse(file: str, message: str, pointer: str) -> None:
        problems.append(errors.ManifestError(file, message, None, pointer))
        refused.add(file)

    seen: dict[tuple[str, str], str] = {}
    for item in parsed:
        kind = "Application" if isinstance(item, manifests.Application) else "ApplicationKind"
        other = seen.setdefault((kind, item.name), item.file)
        if other != item.file:
            refuse(item.file, f"the {kind} name {item.name!r} is also used by {other}; names must be unique", "/metadata/name")
            refuse(other, f"the {kind} name {item.name!r} is also used by {item.file}; names must be unique", "/metadata/name")
    applications = [a for a in parsed if isinstance(a, manifests.Application)]
    for index, app in enumerate(applications):
        for other_app in applications[index + 1:]:
            if is_inside(app.path, other_app.path) or is_inside(other_app.path, app.path):
                for one, two in ((app, other_app), (other_app, app)):
                    refuse(one.file, f"path {one.path} overlaps {two.path} of {two.file}; each application needs its own tree", "/spec/path")
        real = os.path.realpath(app.path)
        for reserved in reserved_paths:
            if any(is_inside(p, reserved) or is_inside(reserved, p) for p in (app.path, real)):
                refuse(app.file, f"path {app.path} overlaps tether's own directory {reserved}", "/spec/path")
    for item in parsed:
        if isinstance(item, manifests.Kind) and item.file not in refused:
            kinds[item.name] = item
    for app in applications:
        if app.kind is not None and app.kind not in kinds and app.file not in refused:
            refuse(app.file, f"unknown kind {app.kind!r}; add an ApplicationKind manifest named so", "/spec/kind")
        if app.file not in refused:
            apps[app.name] = app
    return apps, kinds, problems
