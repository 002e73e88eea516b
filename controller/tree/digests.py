"""The digest list of a deployment: its tree as it was when it became complete (design section 6).

`<path>/.tether/digests/<deployment>.json` maps every relative path to its
type (file|dir|link), mode, and sha256 (files) or target (links). Trees are
read through O_NOFOLLOW descriptors: a symlink is recorded, never followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable, Collection, Mapping

from controller import errors, formats, fsutil, nofollow
from controller.artifacts import extracting, member_writer
from controller.tree import persistent_data, records

VERSION = 1
CHUNK = 1024 * 1024
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
Entry = dict[str, str]  # type (file|dir|link|other), mode, and sha256 (files) or target (links)
PLACE = "\0"  # where record() puts made_json's text: no other string of the document is a NUL alone


class NoDigests(errors.PermanentError):
    """A deployment has no digest list to compare with."""

    def __init__(self, message: str, path: str, deployment: str) -> None:
        super().__init__(message)
        self.path, self.deployment = path, deployment


def digests_path(path: str, deployment: str) -> str:
    return os.path.join(records.meta_dir(path), "digests", deployment + ".json")


def sha256(name: str, dir_fd: int, buffer: bytearray) -> tuple[os.stat_result, str | None]:
    """The file's own stat and content digest (None when it is not a regular file), never following a link."""
    fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st, None
        digest, view = hashlib.sha256(), memoryview(buffer)
        while count := os.readv(fd, [buffer]):
            digest.update(view[:count])
        return st, digest.hexdigest()
    finally:
        os.close(fd)


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _unchanged(st: os.stat_result, file: member_writer.Written | None) -> bool:
    return (file is not None and st.st_ino == file.ino and st.st_size == file.size
            and st.st_mtime_ns == file.mtime_ns and st.st_ctime_ns == file.ctime_ns)


def scan(root: str, skip: Callable[[str], bool], links: Mapping[str, str],
         written: Mapping[str, member_writer.Written] | None = None) -> dict[str, Entry]:
    """Every entry below `root` by relative path, except `skip`ped subtrees; `links` (path -> target) are
    taken as links and not descended. Iterative at any depth (nofollow.walk_tree). A file in `written` whose
    inode, size, mtime and ctime are still as the extraction left them is not read again: any write since
    changes its ctime (the kernel sets it; a process cannot set it back)."""
    written = written or {}
    found: dict[str, Entry] = {}
    buffer = bytearray(CHUNK)

    def visit(dir_fd: int, parts: list[str]) -> list[str]:
        prefix = "/".join(parts) + "/" if parts else ""
        if parts:
            found[prefix[:-1]] = {"type": "dir", "mode": _mode(os.fstat(dir_fd))}
        subdirs = []
        with os.scandir(dir_fd) as items:
            for item in items:
                rel = prefix + item.name
                if skip(rel):
                    continue
                if rel in links:
                    found[rel] = {"type": "link", "mode": "0777", "target": links[rel]}
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                    if stat.S_ISLNK(st.st_mode):
                        found[rel] = {"type": "link", "mode": "0777", "target": os.readlink(item.name, dir_fd=dir_fd)}
                    elif stat.S_ISDIR(st.st_mode):
                        subdirs.append(item.name)
                    elif stat.S_ISREG(st.st_mode) and _unchanged(st, file := written.get(rel)):
                        assert file is not None
                        found[rel] = {"type": "file", "mode": _mode(st), "sha256": file.sha256}
                    elif stat.S_ISREG(st.st_mode):
                        st, digest = sha256(item.name, dir_fd, buffer)
                        found[rel] = {"type": "file", "mode": _mode(st), "sha256": digest or ""}
                    else:
                        found[rel] = {"type": "other", "mode": _mode(st)}
                except FileNotFoundError:
                    continue  # removed while we looked
                except OSError as exc:  # replaced by a symlink or a file while we looked
                    found[rel] = {"type": "other", "mode": "", "error": exc.strerror or str(exc)}
        return subdirs

    def refused(dir_fd: int, parts: list[str], name: str, exc: OSError) -> None:  # a directory no longer
        found["/".join([*parts, name])] = {"type": "other", "mode": "", "error": exc.strerror or str(exc)}

    fd = os.open(root, nofollow.DIR_FLAGS)
    try:
        nofollow.walk_tree(fd, visit, refused=refused)
    finally:
        os.close(fd)
    return found


def made_entries(extracted: extracting.Made) -> dict[str, Entry]:
    """The entries `scan` finds in a tree that is exactly what an extraction made."""
    entries: dict[str, Entry] = {name: {"type": "dir", "mode": f"{mode:04o}"} for name, mode in extracted.dirs.items()}
    entries.update((name, {"type": "link", "mode": "0777", "target": target})
                   for name, target in extracted.symlinks.items())
    entries.update((name, {"type": "file", "mode": f"{file.mode:04o}", "sha256": file.sha256})
                   for name, file in extracted.files.items())
    return entries


def made_json(extracted: extracting.Made) -> str:
    """`json.dumps(made_entries(extracted), sort_keys=True)`, the same text, made as text: no dict per entry for
    the encoder to walk and sort (a fifth of the time at 20k entries)."""
    name = json.encoder.encode_basestring_ascii  # what json.dumps does to a key and a string value
    rendered = {path: f'{{"mode": "{mode:04o}", "type": "dir"}}' for path, mode in extracted.dirs.items()}
    rendered.update((path, f'{{"mode": "0777", "target": {name(target)}, "type": "link"}}')
                    for path, target in extracted.symlinks.items())
    rendered.update((path, f'{{"mode": "{file.mode:04o}", "sha256": "{file.sha256}", "type": "file"}}')
                    for path, file in extracted.files.items())
    return "{" + ", ".join([f"{name(path)}: {rendered[path]}" for path in sorted(rendered)]) + "}"


def record(path: str, deployment: str, links: Collection[str], extracted: extracting.Made | None = None,
           hooks_ran: bool = True, synced_next: bool = False) -> None:
    """Write the digest list of `<path>/<deployment>` atomically; `links` are persistent-data leaves; `extracted`:
    what extraction made (named below the deployment). When no hook ran and no data was linked, the list is
    `extracted` itself (it is what tether made); otherwise the tree is walked, and a file the extraction left
    untouched is not read again. `synced_next`: the caller syncs the deployment's file system next, which then
    makes the list durable too where it is on that file system (no fsyncs of its own)."""
    targets = {leaf: os.path.join(persistent_data.root(path), leaf) for leaf in links}
    made = extracted is not None and not hooks_ran and not targets
    entries: dict[str, Entry] | str = PLACE
    if not made:
        entries = scan(os.path.join(path, deployment), lambda rel: False, targets,
                       extracted.files if extracted is not None else None)
        for leaf, target in targets.items():  # a link tether made is recorded even if it is gone already
            entries.setdefault(leaf, {"type": "link", "mode": "0777", "target": target})
    directory = os.path.dirname(digests_path(path, deployment))
    fsutil.makedirs(directory)
    durable = not synced_next or os.stat(directory).st_dev != os.stat(os.path.join(path, deployment)).st_dev
    document = formats.stamped({"version": VERSION, "deployment": deployment, "entries": entries})
    # the same JSON as fsutil.atomic_write_json, without its indent: json's C encoder (5x faster at 20k entries)
    text = json.dumps(document, sort_keys=True)
    if made:
        assert extracted is not None
        text = text.replace(json.dumps(PLACE), made_json(extracted), 1)
    fsutil.atomic_write(digests_path(path, deployment), (text + "\n").encode(), 0o644, durable=durable)


def read(path: str, deployment: str) -> dict[str, Entry]:
    """The recorded entries; NoDigests when there are none (the deployment predates digests)."""
    file = digests_path(path, deployment)
    data = formats.read(file)  # NewerFormat: a newer tether's list is not guessed at (nor rewritten)
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
        raise NoDigests(
            f"{os.path.join(path, deployment)} has no usable digest list ({file}): the deployment predates content "
            "digests, so its content cannot be checked; `tether repair` records them from the tree as it is now, "
            "or a redeploy records them", path, deployment)
    return dict(data["entries"])


def prune(path: str, keep: Collection[str]) -> None:
    """Remove the digest lists of deployments not in `keep`."""
    directory = os.path.dirname(digests_path(path, "x"))
    for entry in os.listdir(directory) if os.path.isdir(directory) else ():
        if entry.endswith(".json") and entry[: -len(".json")] not in keep:
            os.unlink(os.path.join(directory, entry))
