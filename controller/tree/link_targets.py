"""Where a `.mtree` `link=` ends, resolved as the kernel would, before any link is made.

A lexical check of a target is not enough: `a/up -> ..` is harmless alone, but
`a/out -> up/..` then leaves persistent data (the kernel resolves `..` after
following `up`). So every declared link is resolved component by component
against the tree as it will be: what already exists under `persistent-data/`
(read with lstat, links there included, never followed), else what the same
`.mtree` declares. A target that ends outside the tree, or goes through more
than 40 links (the kernel's limit) or a loop, is refused with its line.
"""

from __future__ import annotations

import os
import stat

from controller.tree import mtree

MAX_LINKS = 40


class _Outside(Exception):
    def __init__(self, via: str) -> None:
        super().__init__(via)
        self.via = via


class _TooDeep(Exception):
    pass


class _Resolver:
    def __init__(self, nodes: list[mtree.Node], base: str) -> None:
        self.base = base
        self.declared = {n.path: n for n in nodes if n.type == "link"}
        self.disk: dict[str, str | None] = {}  # path -> link target on disk, None when not a link
        self.memo: dict[str, tuple[list[str], int]] = {}  # link path -> (where it ends, links followed)
        self.active: set[str] = set()

    def target(self, path: str) -> str | None:
        """The target of `path` if it is (or will be) a link, else None."""
        if path not in self.disk:
            full = os.path.join(self.base, path)
            try:
                st = os.lstat(full)
            except OSError:  # absent, or below something that is not a directory
                st = None
            if st is None:
                node = self.declared.get(path)
                self.disk[path] = node.link if node is not None else None
            else:
                self.disk[path] = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
        return self.disk[path]

    def follow(self, path: str) -> tuple[list[str], int]:
        """Where the link at `path` ends (components below the tree) and how many links that took."""
        if path in self.memo:
            return self.memo[path]
        if path in self.active:
            raise _TooDeep
        self.active.add(path)
        target = self.target(path)
        parts = path.split("/")
        result = (parts, 0) if target is None else self.walk(parts[:-1], target, path)
        self.active.discard(path)
        self.memo[path] = result
        return result

    def walk(self, start: list[str], target: str, via: str) -> tuple[list[str], int]:
        if target.startswith("/"):
            if target != self.base and not target.startswith(self.base + "/"):
                raise _Outside(via)
            start, target = [], target[len(self.base):]
        here, links = list(start), 0
        for part in target.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not here:
                    raise _Outside(via)
                here.pop()
                continue
            candidate = "/".join([*here, part])
            if self.target(candidate) is None:
                here.append(part)
                continue
            here, followed = self.follow(candidate)
            links += followed + 1
            if links > MAX_LINKS:
                raise _TooDeep
            here = list(here)
        return here, links


def check(nodes: list[mtree.Node], base: str) -> None:
    """Refuse (MtreeError with its line) a declared link that ends outside `base` once every link is followed."""
    resolver = _Resolver(nodes, base)
    for node in nodes:
        if node.type != "link" or not node.path:
            continue
        try:
            resolver.follow(node.path)
        except _Outside as exc:
            on_disk = resolver.disk.get(exc.via)
            declared = resolver.declared.get(exc.via)
            if on_disk is not None and (declared is None or declared.link != on_disk):
                why = (f"{base}/{exc.via} already exists as a link to {on_disk}, which leaves persistent data; tether "
                       "does not replace persistent data nor make links through it: move it away")
            else:
                through = "" if exc.via == node.path else f" through the link {exc.via}"
                why = f"it goes through are followed{through}; a link must stay inside the tree"
                why = f"once the links {why}"
            raise mtree.MtreeError(node.line, f"link={node.link} points outside persistent data: {why}") from None
        except _TooDeep:
            raise mtree.MtreeError(node.line, f"link={node.link} goes through a loop of links or more than "
                                              f"{MAX_LINKS} of them") from None
