"""A parser for BSD mtree(5) specifications, as shipped in an artifact's `.mtree`.

The spec is untrusted: every name is checked so that it stays inside the tree,
and only the keywords tether understands (or knows to ignore) are accepted.
Errors carry the line number.

Two nesting conventions are read: standard mtree, where a directory entry
opens a level that `..` closes, and the convention of the Puppet module that
tether replaces, where every entry, a file too, is closed by its own `..`.
The second is recognised by its count of `..` lines, which standard mtree
could only have by climbing above the root.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat

from controller import errors, fsutil

TYPES = ("dir", "file", "link")
KEYWORDS = frozenset({"type", "uname", "gname", "uid", "gid", "mode", "link", "nochange", "optional", "tags"})
IGNORED = frozenset({
    "cksum", "device", "flags", "ignore", "inode", "md5", "md5digest", "nlink", "resdevice", "rmd160",
    "rmd160digest", "ripemd160digest", "sha1", "sha1digest", "sha256", "sha256digest", "sha384",
    "sha384digest", "sha512", "sha512digest", "size", "time", "contents",
})
FLAGS = frozenset({"nochange", "optional", "ignore"})
OCTAL = re.compile(r"\\([0-7]{3})|\\(\\)|\\(.)|\\$")
MAX_ENTRIES = 10_000
MAX_PATH = 4096
MAX_LINK = 4095  # what symlink(2) accepts
MAX_BYTES = 1024 * 1024


class MtreeError(errors.PermanentError):
    """The .mtree is invalid; carries the line number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f".mtree line {line}: {message}")
        self.line = line


@dataclasses.dataclass(frozen=True)
class Node:
    """One entry: `path` is relative to the root ('' for the root itself)."""

    path: str
    type: str
    line: int
    uname: str | None = None
    gname: str | None = None
    uid: int | None = None
    gid: int | None = None
    mode: int | None = None
    link: str | None = None
    nochange: bool = False
    optional: bool = False


def unvis(name: str, line: int) -> str:
    """Decode vis(3) octal escapes such as \\040 and \\\\; escapes are bytes, decoded with the rest as UTF-8."""
    decoded, start = bytearray(), 0
    try:
        for match in OCTAL.finditer(name):
            decoded += name[start:match.start()].encode("utf-8", "surrogateescape")
            start = match.end()
            if match.group(1) and int(match.group(1), 8) <= 0o377:
                decoded.append(int(match.group(1), 8))
            elif match.group(2):
                decoded += b"\\"
            else:
                raise MtreeError(line, f"unsupported escape in name {name!r}; use octal escapes such as \\040")
        decoded += name[start:].encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise MtreeError(line, f"the name {name!r} is not valid UTF-8") from exc
    return decoded.decode("utf-8", "surrogateescape")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with continuations joined, comments and blanks dropped, with their first line number."""
    result: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate((piece.removesuffix("\r") for piece in text.split("\n")), start=1):
        if not pending:
            start = number
            if raw.lstrip().startswith("#"):  # a comment ends at its line, even after a backslash
                continue
        if (len(raw) - len(raw.rstrip("\\"))) % 2:  # an odd count: the last backslash is not escaped
            pending += raw[:-1] + " "
            continue
        joined = (pending + raw).strip()
        pending = ""
        if joined and not joined.startswith("#"):
            result.append((start, joined))
    if pending.strip():
        result.append((start, pending.strip()))
    return result


def _keywords(words: list[str], line: int) -> dict[str, str]:
    found: dict[str, str] = {}
    for word in words:
        key, has_value, value = word.partition("=")
        if key in FLAGS and not has_value:
            found[key] = ""
        elif key in KEYWORDS or key in IGNORED:
            if not has_value:
                raise MtreeError(line, f"the keyword {key!r} needs a value ({key}=...)")
            found[key] = value
        else:
            raise MtreeError(line, f"unknown keyword {key!r}; tether understands {', '.join(sorted(KEYWORDS))}")
    return found


def _number(value: str, line: int, what: str, base: int = 10) -> int:
    digits = "[0-7]+" if base == 8 else "[0-9]+"
    if re.fullmatch(f"-{digits}", value):
        raise MtreeError(line, f"{what} {value!r} is negative")
    if not re.fullmatch(digits, value):
        raise MtreeError(line, f"{what} {value!r} is not a number")
    try:
        return int(value, base)
    except ValueError as exc:  # more digits than int() converts
        raise MtreeError(line, f"{what} {value[:20]!r}... is too long a number") from exc


def _node(path: str, keys: dict[str, str], line: int) -> Node:
    kind = keys.get("type", "file")
    if kind not in TYPES:
        raise MtreeError(line, f"type={kind} is not supported; persistent data holds only {', '.join(TYPES)}")
    mode = None
    if "mode" in keys:
        mode = _number(keys["mode"], line, "mode", 8)
        if mode > 0o7777:
            raise MtreeError(line, f"mode {keys['mode']} is not a permission mode")
        if mode & 0o6000:
            raise MtreeError(line, f"mode {keys['mode']} sets setuid or setgid, which persistent data may not")
    if kind == "link" and not keys.get("link"):
        raise MtreeError(line, "type=link needs link=TARGET")
    link = unvis(keys["link"], line) if "link" in keys else None
    if link is not None and "\0" in link:
        raise MtreeError(line, f"link={keys['link']} holds a NUL byte, which a link target may not")
    if link is not None and len(link.encode("utf-8", "surrogateescape")) > MAX_LINK:
        raise MtreeError(line, f"link={keys['link'][:60]}... is longer than {MAX_LINK} bytes, which a link target may not")
    return Node(
        path=path,
        type=kind,
        line=line,
        uname=keys.get("uname"),
        gname=keys.get("gname"),
        uid=_number(keys["uid"], line, "uid") if "uid" in keys else None,
        gid=_number(keys["gid"], line, "gid") if "gid" in keys else None,
        mode=mode,
        link=link,
        nochange="nochange" in keys,
        optional="optional" in keys,
    )


def _join(parent: str, name: str, line: int) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or "\0" in name:
        raise MtreeError(line, f"the name {name!r} would leave the persistent-data tree")
    path = "/".join([parent, *parts] if parent else parts)
    if len(path) > MAX_PATH:
        raise MtreeError(line, f"the path {path[:60]!r}... is longer than {MAX_PATH} characters")
    return path


def _events(text: str) -> list[tuple[int, str | None, dict[str, str]]]:
    """(line, name, keywords with /set defaults applied) per entry; name None for '..'."""
    events: list[tuple[int, str | None, dict[str, str]]] = []
    defaults: dict[str, str] = {}
    for line, text_line in _logical_lines(text):
        head, *words = text_line.split()
        if head == "/set":
            defaults.update(_keywords(words, line))
        elif head == "/unset":
            for key in words:
                if key != "all" and key not in KEYWORDS and key not in IGNORED:
                    raise MtreeError(line, f"unknown keyword {key!r}; tether understands {', '.join(sorted(KEYWORDS))}")
                defaults.clear() if key == "all" else defaults.pop(key, None)
        elif head.startswith("/"):
            raise MtreeError(line, f"unknown command {head!r}; only /set and /unset exist")
        elif head == "..":
            if words:
                raise MtreeError(line, "'..' takes no keywords")
            events.append((line, None, {}))
        else:
            events.append((line, unvis(head, line), {**defaults, **_keywords(words, line)}))
        if len(events) > MAX_ENTRIES:
            raise MtreeError(line, f"the spec has more than {MAX_ENTRIES} entries")
    return events


def parse(text: str) -> list[Node]:
    """The entries of an mtree spec, in order; raise MtreeError naming the line."""
    events = _events(text)
    # A name with a slash inside is a full path (mtree -C): it opens no level.
    opening = [e for e in events if e[1] is not None and "/" not in e[1].strip("/")]
    closes = sum(1 for e in events if e[1] is None)
    every_entry_closes = closes > sum(1 for e in opening if e[2].get("type", "file") == "dir")
    stack: list[str] = []
    nodes: dict[str, Node] = {}
    for line, name, keys in events:
        if name is None:
            if not stack:
                raise MtreeError(line, "'..' climbs above the root of the tree")
            stack.pop()
            continue
        full = "/" in name.strip("/")
        path = _join("" if full or not stack else stack[-1], name, line)
        node = _node(path, keys, line)
        if path in nodes and nodes[path].type != node.type:
            raise MtreeError(line, f"{path or '.'} is declared again with another type")
        nodes[path] = node
        if not full and (every_entry_closes or node.type == "dir"):
            stack.append(path)
    for node in nodes.values():
        parent = node.path.rpartition("/")[0]
        if node.path and parent in nodes and nodes[parent].type != "dir":
            raise MtreeError(node.line, f"{node.path} is below {parent or '.'}, which is not a directory")
    return list(nodes.values())


def leaves(nodes: list[Node]) -> list[Node]:
    """Entries that become symlinks in a deployment: files, links, and directories without children."""
    parents = {n.path.rpartition("/")[0] for n in nodes if n.path}
    return [n for n in nodes if n.path and (n.type != "dir" or n.path not in parents)]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def read(path: str) -> list[Node] | None:
    """The spec in the file `path`, parsed, or None when there is none; anything but a regular file of at most
    MAX_BYTES of text is refused (MtreeError or PermanentError), never followed, never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise errors.PermanentError(f"{path} is a symlink; tether does not follow it: ship the .mtree itself, a "
                                        "regular file, at the root of the artifact") from exc
        raise errors.PermanentError(f"{path} cannot be read: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise errors.PermanentError(f"{path} is a {_kind(st.st_mode)}, not a regular file; ship the .mtree as a "
                                        "regular file at the root of the artifact")
        if st.st_size > MAX_BYTES:
            raise errors.PermanentError(f"{path} is larger than {MAX_BYTES // 1024 // 1024} MiB; tether reads no "
                                        "bigger .mtree")
        data = fsutil.read_at_most(fd, MAX_BYTES)
    except OSError as exc:
        raise errors.PermanentError(f"{path} cannot be read: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if data is None:
        raise errors.PermanentError(f"{path} is larger than {MAX_BYTES // 1024 // 1024} MiB; tether reads no bigger "
                                    ".mtree")
    return parse(decode(data))


def decode(data: bytes) -> str:
    """The text of a spec: UTF-8 with no NUL byte (names with other bytes are written with octal escapes)."""
    if b"\0" in data:
        raise MtreeError(data.count(b"\n", 0, data.index(b"\0")) + 1,
                         "the line holds a NUL byte; a .mtree is text (write such bytes as octal escapes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MtreeError(data.count(b"\n", 0, exc.start) + 1,
                         "the line is not valid UTF-8; write a name's other bytes as octal escapes such as \\377") from None
