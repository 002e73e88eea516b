"""The on-disk state of one application: deployments, their records, `current`.

Layout below the application path::

    current -> <path>/<deployment>     the active deployment (absolute target)
    <deployment>/                      extracted releases
    persistent-data/                   data that survives deployments
    .tether/deployments/<d>.json       record: incomplete | complete | failed
    .tether/activation.json            the previous deployment
    .tether/staging/                   extraction in progress

Records carry their format (controller/formats.py); `observe` reports a record of a newer format as the reason
to leave the application alone (`Observed.refused`) and never rewrites it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from controller import formats, fsutil
from controller.tree import known_files

INCOMPLETE, COMPLETE, FAILED = "incomplete", "complete", "failed"
NOT_DEPLOYMENTS = frozenset({"current", "persistent-data"})
HOOK_SCRIPT_PREFIX = ".hook-"  # an inline hook's script in .tether while it runs (engine/hooks.py)
TEMPORARY = (fsutil.TEMPORARY_PREFIX, HOOK_SCRIPT_PREFIX)


def meta_dir(path: str) -> str:
    return os.path.join(path, ".tether")


def record_path(path: str, deployment: str) -> str:
    return os.path.join(meta_dir(path), "deployments", deployment + ".json")


def activation_path(path: str) -> str:
    return os.path.join(meta_dir(path), "activation.json")


def running_hook_path(path: str) -> str:
    return os.path.join(meta_dir(path), "running-hook.json")


def staging_dir(path: str) -> str:
    return os.path.join(meta_dir(path), "staging")


def is_deployment_name(name: str) -> bool:
    return not name.startswith(".") and name not in NOT_DEPLOYMENTS


@dataclasses.dataclass(frozen=True)
class Deployment:
    name: str
    state: str
    has_dir: bool
    created_at: float | None = None
    completed_at: float | None = None
    sha256: str | None = None
    error: str | None = None
    activation_pending: bool = False  # switched to, but its afterActivate hooks have not succeeded yet
    failed_generation: str | None = None  # the manifest generation under which it failed
    links: tuple[str, ...] = ()  # persistent-data links made in it
    sequence: int | None = None  # completion order within the application; None in records of older versions
    probing_since: float | None = None  # afterActivate succeeded; its health check has probed since then (wall clock)
    healthy_at: float | None = None  # when its health check last passed
    health_message: str | None = None  # how its last health check ended, in words
    revision: str | None = None  # the commit id a git source's ref resolved to; None for other sources and old records
    # Where a rollback of this deployment goes, and the `previous` it restores there: (to, previous). On a pending
    # record, where to go should its activation fail; on a failed one, a rollback not finished yet. None in records
    # of older versions: the activation record's previous, restoring none (what those versions did).
    rollback: tuple[str, str | None] | None = None


@dataclasses.dataclass(frozen=True)
class Observed:
    """What is on disk for one application, read without changing anything."""

    path: str
    exists: bool
    current: str | None  # the deployment `current` points to, if it points to one
    current_target: str | None  # the raw link target, if `current` is a symlink
    previous: str | None
    deployments: dict[str, Deployment]
    last_activated: str | None  # what tether switched `current` to last
    foreign: tuple[str, ...]  # directories tether did not make
    leftovers: tuple[str, ...]  # staging, temporary links and files from an interrupted pass
    refused: str | None = None  # a file of a newer format: why tether leaves the application alone

    def complete(self) -> list[Deployment]:
        """Complete deployments, newest first: by deploy sequence, not by wall-clock time, which can step back;
        records of older versions (no sequence) by completion time, older than any with a sequence."""
        found = [d for d in self.deployments.values() if d.state == COMPLETE and d.has_dir]
        return sorted(found, key=_age, reverse=True)

    def next_sequence(self) -> int:
        """One more than the highest deploy sequence of any record of the application (1 for the first)."""
        return max((d.sequence for d in self.deployments.values() if d.sequence is not None), default=0) + 1

    def recorded(self, name: str, record: dict[str, Any] | None) -> Observed:
        """This tree after `write_record` wrote `record` for `name`, whose directory exists (None: after its
        directory and record were removed), without reading the disk again."""
        deployments = {n: d for n, d in self.deployments.items() if n != name}
        if record is not None:
            deployments[name] = _deployment(name, record, has_dir=True)
        return dataclasses.replace(self, deployments=deployments, foreign=tuple(f for f in self.foreign if f != name))

    def activated(self, name: str, previous: str | None) -> Observed:
        """This tree after tether switched `current` to `name` and recorded `previous` (see `observe`)."""
        target = os.path.join(self.path, name)
        return dataclasses.replace(self, current=_pointed(self.path, target), current_target=target,
                                   previous=previous, last_activated=name)


def _age(deployment: Deployment) -> tuple[int, float, str]:
    if deployment.sequence is not None:
        return 1, float(deployment.sequence), deployment.name
    return 0, deployment.completed_at or 0.0, deployment.name


def write_record(path: str, deployment: str, state: str, **fields: Any) -> dict[str, Any]:
    """Update a deployment's record; a field given as None is removed. Return the record written."""
    record = formats.read(record_path(path, deployment))
    if not isinstance(record, dict) or not record:
        record = {"createdAt": time.time()}
    record.update(fields, name=deployment, state=state, format=formats.CURRENT)
    record = {k: v for k, v in record.items() if v is not None}
    fsutil.makedirs(os.path.dirname(record_path(path, deployment)))
    fsutil.atomic_write_json(record_path(path, deployment), record)
    return record


def rollback_field(to: str, previous: str | None) -> dict[str, str | None]:
    """The record field `rollback`: go back to `to`, recording `previous` as its previous."""
    return {"to": to, "previous": previous if previous != to else None}


def _rollback(value: Any) -> tuple[str, str | None] | None:
    if not isinstance(value, dict) or not isinstance(value.get("to"), str):
        return None
    return value["to"], _text(value.get("previous"))


def write_activation(path: str, active: str, previous: str | None) -> None:
    """Record what tether activated last, and what was active before it."""
    fsutil.atomic_write_json(activation_path(path),
                             formats.stamped({"active": active, "previous": previous}))


def switch_current(path: str, deployment: str, checkpoint: Callable[[str], None] = lambda step: None) -> None:
    """Point `<path>/current` at the deployment with one rename(2), durably."""
    link = os.path.join(path, f".current-{secrets.token_hex(6)}")
    os.symlink(os.path.join(path, deployment), link)
    checkpoint("linked")
    try:
        os.replace(link, os.path.join(path, "current"))
    except BaseException:
        os.unlink(link)
        raise
    fsutil.fsync_dir(path)


def remove_record(path: str, deployment: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(path, deployment))


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    """A time or count from a record: a finite number in the range of times, else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) < 1e11:
        return float(value)
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _pointed(path: str, target: str) -> str | None:
    """The deployment a `current` link with `target` points to, if it points to one."""
    parent, name = os.path.split(os.path.normpath(os.path.join(path, target)))
    return name if parent == path and is_deployment_name(name) else None


def _deployment(name: str, data: dict[str, Any], has_dir: bool) -> Deployment:
    """A deployment from its record; a field of another type (a damaged record) reads as missing."""
    state = data.get("state")
    links = data.get("links")
    return Deployment(
        name=name,
        state=state if state in (INCOMPLETE, COMPLETE, FAILED) else INCOMPLETE,
        has_dir=has_dir,
        created_at=_number(data.get("createdAt")),
        completed_at=_number(data.get("completedAt")),
        sha256=_text(data.get("sha256")),
        error=_text(data.get("error")),
        activation_pending=data.get("activationPending") is True,
        failed_generation=_text(data.get("failedGeneration")),
        links=tuple(link for link in links if isinstance(link, str)) if isinstance(links, list) else (),
        sequence=_integer(data.get("sequence")),
        probing_since=_number(data.get("probingSince")),
        healthy_at=_number(data.get("healthyAt")),
        health_message=_text(data.get("healthMessage")),
        revision=_text(data.get("revision")),
        rollback=_rollback(data.get("rollback")),
    )


def observe(path: str, known: known_files.Known = known_files.KNOWN) -> Observed:
    """Read the deployment tree at `path`: through directory descriptors, each file and listing read again only
    when it changed since `known` read it (controller/tree/known_files.py)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            known.retain(path, set())
            known.retain(meta_dir(path), set())
            return Observed(path, False, None, None, None, {}, None, (), ())
        raise
    try:
        meta = _open_meta(fd)
        try:
            return _observe(path, fd, meta, known)
        finally:
            if meta is not None:
                os.close(meta)
    finally:
        os.close(fd)


def _open_meta(fd: int) -> int | None:
    """`.tether` below the application directory `fd`, if it is a real directory (tether reads no bookkeeping
    through a link)."""
    try:
        return os.open(".tether", known_files.DIR_FLAGS, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def _observe(path: str, fd: int, meta: int | None, known: known_files.Known) -> Observed:
    refused: list[str] = []
    where = meta_dir(path)

    def read(name: str) -> Any:
        assert meta is not None
        data = known.json(where, name, meta)
        found = data.get(formats.KEY, formats.CURRENT) if isinstance(data, dict) else formats.CURRENT
        if type(found) is not int or found != formats.CURRENT:  # the usual case needs no path for a message
            try:
                formats.check(data, os.path.join(where, name))
            except formats.NewerFormat as exc:
                refused.append(str(exc))
                return None
        return data

    records: dict[str, dict[str, Any]] = {}
    running = os.path.basename(running_hook_path(path))
    kept = {".", "deployments", "digests", "staging", "activation.json", running}  # remembered below `where`
    if meta is not None:
        for entry, _ in known.listing(where, "deployments", meta) or ():
            if entry.endswith(".json") and not entry.startswith("."):
                kept.add("deployments/" + entry)
                data = read("deployments/" + entry)
                if isinstance(data, dict):
                    records[entry[: -len(".json")]] = data
    known.retain(where, kept if meta is not None else set())
    dirs, leftovers = set(), []
    for name, is_dir in known.listing(path, ".", fd) or ():
        if name.startswith(".current-"):
            leftovers.append(os.path.join(path, name))
        elif is_dir and is_deployment_name(name):
            dirs.add(name)
    if meta is not None:
        leftovers.extend(os.path.join(where, "staging", e) for e, _ in known.listing(where, "staging", meta) or ())
        for directory in (".", "deployments", "digests"):  # temporary files of a killed write, scripts of a hook
            leftovers.extend(os.path.normpath(os.path.join(where, directory, e))
                             for e, is_dir in known.listing(where, directory, meta) or ()
                             if not is_dir and e.startswith(TEMPORARY))
    deployments = {name: _deployment(name, data, has_dir=name in dirs) for name, data in records.items()}
    try:
        target: str | None = os.readlink("current", dir_fd=fd)
    except OSError:
        target = None
    current = None if target is None else _pointed(path, target)
    activation = read("activation.json") if meta is not None else None
    activation = {k: _text(v) for k, v in activation.items()} if isinstance(activation, dict) else {}
    if meta is not None:
        read(running)
    return Observed(
        path=path,
        exists=True,
        current=current,
        current_target=target,
        previous=activation.get("previous"),
        deployments=deployments,
        last_activated=activation.get("active"),
        foreign=tuple(sorted(dirs - set(records))),
        leftovers=tuple(sorted(leftovers)),
        refused=refused[0] if refused else None,
    )
