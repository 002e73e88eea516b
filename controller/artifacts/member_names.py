"""What an archive member's name may be, and where a symlink leads: tether's own checks, made before anything
is written (member_writer.py applies them).

`clean_name` turns a member's name into the relative path it is written to,
or refuses it: control characters, bytes that are not UTF-8, absolute names,
"..", names and components longer than Linux allows. `resolves_outside`
follows a symlink below the deployment component by component, as the
kernel will once it is the deployment.
"""

from __future__ import annotations

import collections
import os
import re

from controller import errors

MAX_NAME = 4096
MAX_COMPONENT = 255
MAX_SYMLINK_HOPS = 40  # as Linux: a path that needs more does not resolve at all (ELOOP)
MAX_LINK_STEPS = 1_000_000  # path components walked to check all of an archive's symlinks (some seconds of lstat)
CONTROL = re.compile("[\x00-\x1f\x7f]")
# A name of ASCII components other than "." and "..", one slash between them, at most one at the end: it is
# its own clean form. Anything else takes the long way through clean_name's checks.
PLAIN = re.compile(r"(?:(?!\.\.?(?:/|$))[\x20-\x2e\x30-\x7e]+/)*(?!\.\.?(?:/|$))[\x20-\x2e\x30-\x7e]+/?")


def clean_name(raw: str, strip: int) -> str | None:
    """The relative path a member may be written to, or None for the archive root."""
    if PLAIN.fullmatch(raw) and len(raw) <= MAX_COMPONENT:  # the usual name: nothing below can refuse it
        if not strip:
            return raw.rstrip("/") or None
        parts = raw.rstrip("/").split("/")[strip:]
        return "/".join(parts) if parts else None
    return checked_name(raw, strip)


def checked_name(raw: str, strip: int) -> str | None:
    """clean_name the long way: every check made (tests/test_member_names.py holds clean_name's shortcut to it)."""
    if CONTROL.search(raw):
        raise errors.ArchiveError(f"member {raw!r} has a control character in its name")
    if not utf8(raw):
        raise errors.ArchiveError(f"member {raw!r} has a name that is not valid UTF-8")
    if raw.startswith("/"):
        raise errors.ArchiveError(f"member {raw!r} has an absolute name; archives must be relative")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise errors.ArchiveError(f"member {raw!r} has '..' in its name; it would escape the deployment")
    size = len(raw.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME or (size > MAX_COMPONENT and any(
        len(p.encode("utf-8", "surrogateescape")) > MAX_COMPONENT for p in parts
    )):
        raise errors.ArchiveError(f"member {raw[:80]!r}... has a name longer than the filesystem allows")
    parts = parts[strip:]
    return "/".join(parts) if parts else None


def utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by tarfile and zipfile as lone surrogates
        return False
    return True


def resolves_outside(root: str, name: str, steps: list[int]) -> bool:
    """Whether `name` below `root`, every symlink in it followed, leads out of `root`.

    Resolved component by component with `root` as the boundary, as it will be
    once it is the deployment: realpath(3) could leave `root` and come back in
    through the name of the top directory that stripComponents removes.
    """
    pending, inside, hops = collections.deque(name.split("/")), list[str](), 0
    while pending:
        steps[0] -= 1
        if steps[0] < 0:
            raise errors.ArchiveError(f"the archive's symlinks take more than {MAX_LINK_STEPS} steps to resolve "
                                      f"(at {name[:80]!r}): refusing a likely resolution bomb")
        part = pending.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not inside:
                return True
            inside.pop()
        elif os.path.islink(path := os.path.join(root, *inside, part)):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return False  # a loop, or too long a chain: the kernel does not follow it anywhere
            target = os.readlink(path)
            if target.startswith("/"):
                return True
            pending.extendleft(reversed(target.split("/")))
        else:
            inside.append(part)
    return False
