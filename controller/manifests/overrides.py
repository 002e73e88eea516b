"""Imperative changes to an application's desired state, from `tether deploy`, `activate`,
`rollback`, `suspend`, `resume` and `retry`.

They live in `<state-dir>/overrides/<name>.json`. A desired deployment set this
way holds until the manifest changes (it records the manifest generation it
was set under); a suspension holds until `tether resume`. Header values given on
the command line are never written here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from controller import errors, formats, fsutil
from controller.manifests import crosschecks, model, validation


@dataclasses.dataclass(frozen=True)
class Override:
    deployment: str | None = None
    url: str | None = None
    sha256: str | None = None
    pinned: bool = False  # set by activate/rollback: an existing deployment, nothing to fetch
    generation: str | None = None  # the manifest generation the deployment was set under
    suspended: bool = False
    retry_requested_at: float | None = None
    refused: str | None = None  # the file is of a newer format: why tether leaves the application alone


FIELDS = {"deployment": "deployment", "url": "url", "sha256": "sha256", "pinned": "pinned",
          "generation": "manifestGeneration", "suspended": "suspended", "retry_requested_at": "retryRequestedAt"}


def override_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "overrides", name + ".json")


def read(state_dir: str, name: str) -> Override:
    """The override of `name`; one of a newer format says so in `refused` and overrides nothing."""
    try:
        data = formats.read(override_path(state_dir, name))
    except formats.NewerFormat as exc:
        return Override(refused=str(exc))
    if not isinstance(data, dict):
        return Override()
    values: dict[str, Any] = {field: data[key] for field, key in FIELDS.items() if data.get(key) is not None}
    return Override(**values)


def write(state_dir: str, name: str, override: Override) -> None:
    fsutil.makedirs(os.path.dirname(override_path(state_dir, name)), 0o700)
    document: dict[str, Any] = {key: getattr(override, field) for field, key in FIELDS.items()}
    fsutil.atomic_write_json(override_path(state_dir, name),
                             formats.stamped({k: v for k, v in document.items() if v is not None}), mode=0o600)


def update(state_dir: str, name: str, **changes: Any) -> Override:
    """Change the override of `name`; NewerFormat when its file is of a newer format (left as it is)."""
    found = read(state_dir, name)
    if found.refused is not None:
        raise errors.PermanentError(found.refused)
    changed = dataclasses.replace(found, **changes)
    write(state_dir, name, changed)
    return changed


def effective(app: model.Application, override: Override) -> model.Application:
    """The application as the override makes it: desired deployment, source, suspension."""
    changes: dict[str, Any] = {}
    if override.suspended:
        changes["suspend"] = True
    if override.deployment is not None and override.generation == app.generation:
        changes["deployment"] = override.deployment
        if override.url is not None:  # another artifact: the manifest's sha256 is not its digest
            base = app.source or model.Source(url=override.url)
            changes["source"] = dataclasses.replace(base, url=override.url, git=None, sha256=override.sha256)
        elif override.sha256 is not None and app.source is not None:
            changes["source"] = dataclasses.replace(app.source, sha256=override.sha256)
    return dataclasses.replace(app, **changes) if changes else app


def applied(state_dir: str, app: model.Application) -> model.Application:
    """The application with the overrides recorded for it in `state_dir`."""
    return effective(app, read(state_dir, app.name))


def check_deployment_name(name: str) -> None:
    definition = validation.schema("application")["$defs"]["deploymentName"]
    if not re.fullmatch(definition["pattern"].strip("^$"), name) or name in definition["not"]["enum"]:
        raise errors.PermanentError(
            f"{name!r} is not a valid deployment name: letters, digits, '.', '_', '+' and '-', not starting with "
            "a dot, and not 'current' or 'persistent-data'"
        )


def check_source(url: str | None, sha256: str | None) -> None:
    if url is not None:
        if not re.match(r"^(https?|file)://", url):
            raise errors.PermanentError(f"--url must be an http(s):// or file:// URL, not {errors.printable(url)!r}")
        if found := errors.CONTROL.search(url):
            raise errors.PermanentError(f"--url holds the control character or line break U+{ord(found[0]):04X} at "
                                        f"character {found.start() + 1}; percent-encode it")
        for placeholder in crosschecks.PLACEHOLDER.findall(url):
            if placeholder not in model.PLACEHOLDERS:
                raise errors.PermanentError(f"--url has the unknown placeholder {{{placeholder}}}")
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise errors.PermanentError("--sha256 must be 64 hexadecimal digits")
