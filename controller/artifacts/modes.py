"""The mode a member gets on disk: tarfile.data_filter's arithmetic, without its path walks.

`tarfile.data_filter` does two things: it resolves every member's path with
realpath (two walks over the whole absolute staging path, some 20 lstat calls a
member) to keep it inside the destination, and it limits the mode. tether keeps
members inside by its own lexical checks (member_names.clean_name, the writer's
sets of what it created, descriptor-relative O_EXCL|O_NOFOLLOW writes), so only
the mode rule is needed, and it is this arithmetic. tests/test_modes.py keeps it
equal to `tarfile.data_filter` over every mode and member type.
"""

from __future__ import annotations

from controller import errors

KINDS = ("file", "dir", "symlink", "hardlink")


def filtered(kind: str, mode: int) -> int | None:
    """The mode `tarfile.data_filter` gives a member of `kind` (None: the mode is ignored, the default applies)."""
    if kind in ("file", "hardlink"):
        mode &= 0o755  # no setuid, setgid, sticky, group or other write
        if not mode & 0o100:
            mode &= ~0o111  # not executable by its owner: by nobody
        return mode | 0o600  # the owner can read and write
    if kind in ("dir", "symlink"):
        return None
    raise errors.ArchiveError(f"a {kind} member is a device, FIFO or other special file; only files, "
                              "directories and links are allowed")


def on_disk(kind: str, mode: int) -> int:
    """The permission bits tether gives a member: a mode of 0 counts as the default (0755 dirs, 0644 others)."""
    default = 0o755 if kind == "dir" else 0o644
    result = filtered(kind, (mode & 0o7777) or default)
    return default if result is None else result
