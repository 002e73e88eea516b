"""What a rescan of the manifests directory means for the daemon, as plain data.

A manifest that is invalid, or still being written, keeps its application's
last good desired state; an application whose manifest is gone is no longer
managed. `merge` decides that from what was read and what was known before.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from controller import errors, fsutil
from controller.manifests import loading, model, validated_cache


@dataclasses.dataclass(frozen=True)
class Scan:
    apps: dict[str, model.Application]  # what to manage: valid manifests, and the last good of invalid ones
    kinds: dict[str, model.Kind]
    invalid: dict[str, str]  # application -> why its manifest is invalid now
    problems: list[errors.ManifestError]
    broken: frozenset[str]  # the problems as text, for logging each once

    @property
    def files(self) -> dict[str, str]:
        """Manifest file -> application name."""
        return {app.file: name for name, app in self.apps.items()}


def merge(found: loading.Catalog, last_apps: dict[str, model.Application],
          last_kinds: dict[str, model.Kind], last_files: dict[str, str]) -> Scan:
    """The applications to manage after reading `found`, given what the previous scan kept."""
    apps, kinds, invalid = dict(found.applications), dict(found.kinds), {}

    def keep_last_good(name: str, error: str) -> None:
        invalid[name] = error
        last = last_apps.get(name)
        if last is not None:  # never valid: nothing to keep; the error shows in the log and the metrics
            apps[name] = last
            if last.kind and last.kind in last_kinds:
                kinds.setdefault(last.kind, last_kinds[last.kind])

    for name, error in found.invalid_names.items():
        keep_last_good(name, str(error))
    for file in found.busy:  # still being written: keep what it said before; its close triggers a rescan
        owner = last_files.get(file)
        if owner is not None and owner in last_apps and owner not in apps:
            apps[owner] = last_apps[owner]
    broken = {p.file: str(p) for p in found.problems}
    for file, text in broken.items():
        owner = last_files.get(file)
        if owner is not None and owner not in apps and owner not in found.invalid_names:
            keep_last_good(owner, text)
    return Scan(apps, kinds, invalid, list(found.problems), frozenset(broken.values()))


def read(directory: str, state_dir: str, secure: bool, cache: dict[Any, Any],
         store: validated_cache.Store | None = None,
         identities: dict[str, tuple[fsutil.Identity, str]] | None = None) -> loading.Catalog | None:
    """The manifests in `directory` (files still being written are skipped), or None when the
    directory was replaced (a symlink swap, a re-clone) while it was read: read it again. `store` keeps what
    validation made of each manifest across daemon starts, `identities` which files need not be opened again
    (see loading.load)."""
    reserved = [os.path.realpath(state_dir), os.path.realpath(directory)]
    before = identity(directory)
    found = loading.load([directory], secure=secure, reserved_paths=reserved, skip_busy=True, cache=cache,
                         store=store, identities=identities)
    return None if before is not None and identity(directory) != before else found


def identity(path: str) -> tuple[int, int] | None:
    """Which directory `path` is now (device, inode), or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
