"""`tether verify NAME` and `tether repair NAME` (design section 6, 7).

verify prints the drift of the active deployment and exits 0 when there is
none, 1 when there is, 2 when the content cannot be checked (no digests).
repair, holding the application's lock, restores drifted content from the
cached artifact and missing persistent-data links, and exits 0 when nothing
is left drifted; drift of `current` is left to `tether reconcile`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from controller import errors
from controller.cli import commands
from controller.engine import reconciling
from controller.manifests import model, overrides
from controller.tree import digests, drift, owners, path_safety, records

OK, FAILED, INVALID = 0, 1, 2


def _application(args: argparse.Namespace) -> model.Application | None:
    """The application with its overrides (desired deployment, pins), or None after saying why."""
    try:
        app = commands.application(args, commands.catalog(args))
    except errors.PermanentError as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return None
    return overrides.applied(args.state_dir, commands.rolled_out(app, args))


def desired(app: model.Application, observed: records.Observed) -> str | None:
    """The deployment that should be active: the desired one (callers apply overrides), else `current`'s."""
    return app.deployment if app.deployment is not None else observed.current


def cmd_verify(args: argparse.Namespace) -> int:
    app = _application(args)
    if app is None:
        return INVALID
    observed = records.observe(app.path)
    active = desired(app, observed)
    structure = drift.check_structure(app.path, observed, active)
    content, error = None, None
    if active is not None and structure.deployment is None:
        try:
            content = drift.check_content(app.path, active, app.drift_ignore)
        except digests.NoDigests as exc:
            error = str(exc)
    drifted = bool(structure.types or (content and content.paths))
    if args.json:
        print(json.dumps({"name": app.name, "deployment": active, "drifted": drifted, "error": error,
                          "drift": _drift_json(structure, content)}, indent=2))
    else:
        _print_drift(app.name, active, structure, content, error)
    return FAILED if drifted else INVALID if error else OK


def _drift_json(structure: drift.Structural, content: drift.Content | None) -> dict[str, Any]:
    return {"types": structure.types + (["content"] if content and content.paths else []),
            "current": structure.current, "deployment": structure.deployment, "links": structure.links,
            "content": None if content is None else {"changed": content.changed, "added": content.added,
                                                      "removed": content.removed}}


def _print_drift(name: str, active: str | None, structure: drift.Structural, content: drift.Content | None,
                 error: str | None) -> None:
    lines = [f"  {kind}: {reason}" for kind, reason in (("current", structure.current),
                                                        ("deployment", structure.deployment)) if reason]
    lines += [f"  link: {leaf} is missing or points elsewhere than persistent data" for leaf in structure.links]
    if content is not None:
        for kind, paths in (("changed", content.changed), ("added", content.added), ("removed", content.removed)):
            lines += [f"  {kind}: {p}" for p in paths]
    if lines:
        print(f"{name}: {active or 'the application'} has drifted from what tether made:", *lines, sep="\n")
    elif error is None:
        print(f"{name}: {active or 'nothing is deployed; there'} matches what tether made; no drift.")
    if error is not None:
        print(f"tether: {error}", file=sys.stderr)


def cmd_repair(args: argparse.Namespace) -> int:
    app = _application(args)
    if app is None:
        return INVALID
    owner = owners.resolve(app)
    with reconciling.Engine(args.state_dir).holding(app, check=path_safety.prepare, refuse_newer=True) as observed:
        active = desired(app, observed)
        structure = drift.check_structure(app.path, observed, active)
        if active is None or structure.deployment is not None:
            why = structure.deployment or "no deployment is desired"
            print(f"tether: {app.name}: {why}; `tether reconcile {app.name}` deploys it again", file=sys.stderr)
            return FAILED
        repaired, recorded = [], False
        try:
            content = drift.check_content(app.path, active, app.drift_ignore)
        except digests.NoDigests:
            recorded = True
        else:
            repaired = drift.repair_content(app, active, args.state_dir, owner, content)
        relinked = drift.relink(app, active, owner)
        if recorded:
            drift.record_digests(app.path, active, drift.record_links(app.path, active))
        left = drift.check_structure(app.path, records.observe(app.path), active)
    if args.json:
        print(json.dumps({"name": app.name, "deployment": active, "repaired": repaired, "relinked": relinked,
                          "recordedDigests": recorded, "remaining": left.types}, indent=2))
    else:
        _print_repair(app.name, active, repaired, relinked, recorded)
    if left.current is not None:
        print(f"tether: {app.name}: {left.current}; `tether reconcile {app.name}` switches it back", file=sys.stderr)
    return FAILED if left.types else OK


def _print_repair(name: str, active: str, repaired: list[str], relinked: list[str], recorded: bool) -> None:
    if repaired:
        print(f"{name}: restored {len(repaired)} paths of {active} from its artifact:", *repaired, sep="\n  ")
    if relinked:
        print(f"{name}: restored the persistent-data links of {active}:", *relinked, sep="\n  ")
    if recorded:
        print(f"{name}: {active} predates content digests; recorded them from its tree as it is now, so later "
              "changes show as drift.")
    if not (repaired or relinked or recorded):
        print(f"{name}: {active} has no content or link drift; nothing to repair.")
