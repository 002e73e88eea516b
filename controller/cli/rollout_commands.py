"""`tether rollout plan MANIFEST --nodes FILE [--at TIME] [--json]`: offline, which node takes the deployment when.

MANIFEST is one application manifest file, validated as `tether validate` does (each file alone: a kind it
names need not be there). FILE is a YAML list of `{name, labels}`. The plan assumes the gate open; waves are
numbered from 1 in the table and by index from 0 in JSON (as in status and `tether_rollout_wave`).
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable
from typing import Any

import yaml

from controller import errors
from controller.fleet import rollout_plan, waves
from controller.manifests import documents, loading, model

OK = 0
MAX_NODES_BYTES = 64 * 2**20  # 50,000 nodes with a few labels each: about 2 MB


def add_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register `tether rollout plan`; the common options are accepted and, but for logging, unused (offline)."""
    sub = commands.add_parser("rollout", help="predict a rollout across a fleet (offline)")
    actions = sub.add_subparsers(dest="rollout_command", required=True)
    plan = actions.add_parser("plan", parents=[common], help="per node: its wave and when it takes the deployment (gate assumed open)")
    plan.add_argument("manifest", metavar="MANIFEST", help="an application manifest file with spec.rollout")
    plan.add_argument("--nodes", required=True, metavar="FILE", help="YAML list of {name, labels}")
    plan.add_argument("--at", metavar="TIME", help="RFC 3339 time, such as 2026-12-01T10:30:00Z: also show what each "
                      "node runs then")
    plan.add_argument("--json", action="store_true", help="a JSON list, one object per node")


def _raw(path: str, limit: int) -> bytes:
    """At most `limit` + 1 bytes of the regular file `path` (more than `limit`: too large)."""
    try:
        return documents.read_regular(path, limit + 1)
    except OSError as exc:
        raise errors.PermanentError(f"{path} cannot be read: {exc.strerror}") from exc


def application(path: str) -> model.Application:
    """The application manifest at `path`, validated; PermanentError (ManifestError) otherwise."""
    text = documents.decode(path, _raw(path, documents.MAX_BYTES))
    parsed = loading.parse(path, text)
    if not isinstance(parsed, model.Application):
        raise errors.ManifestError(path, "this is an ApplicationKind; a rollout is planned for an Application")
    if parsed.rollout is None:
        raise errors.ManifestError(path, "the application has no spec.rollout to plan", None, "/spec")
    return parsed


def nodes(path: str) -> list[rollout_plan.PlannedNode]:
    raw = _raw(path, MAX_NODES_BYTES)
    if len(raw) > MAX_NODES_BYTES:
        raise errors.PermanentError(f"{path} is larger than {MAX_NODES_BYTES // 2**20} MiB; is it a list of nodes?")
    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise errors.PermanentError(f"{path} is not UTF-8 text: {exc.reason}") from exc
    except yaml.YAMLError as exc:
        raise errors.PermanentError(f"{path}: this is not valid YAML: {exc}") from exc
    return rollout_plan.nodes_from_data(data, path)


def moment(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time with a zone (Z or an offset)."""
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise errors.PermanentError(f"--at {text!r} is not an RFC 3339 time with a zone, such as 2026-12-01T10:30:00Z")
    return parsed.timestamp()


def cmd_rollout(args: argparse.Namespace) -> int:
    app = application(args.manifest)
    at = None if args.at is None else moment(args.at)
    rows = rollout_plan.plan(app, nodes(args.nodes), at)
    rollout = app.rollout
    assert rollout is not None  # application() refuses a manifest without one
    if args.json:
        print(json.dumps([_row_json(row, at) for row in rows], indent=2))
        return OK
    print(f"{app.name}: from {rollout.from_deployment} to {app.deployment} (rollout {rollout.id}, started "
          f"{rollout.started_at_text}; {'gate assumed open' if rollout.gate else 'no gate'})")
    header = ["NODE", "BUCKET", "WAVE", f"TAKES {app.deployment} AT"] + ([] if at is None else [f"AT {waves.iso(at)}"])
    table = [header]
    for row in rows:
        cells = [row.node, f"{row.bucket:.2f}", "-" if row.wave is None else str(row.wave + 1),
                 f"never (in no wave: stays on {rollout.from_deployment})" if row.takes_at is None
                 else waves.iso(row.takes_at)]
        table.append(cells + ([] if row.deployment_at is None else [row.deployment_at]))
    widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(len(header))]
    for cells in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)).rstrip())
    return OK


def _row_json(row: rollout_plan.Row, at: float | None) -> dict[str, Any]:
    document: dict[str, Any] = {"node": row.node, "bucket": row.bucket, "wave": row.wave,
                                "takesAt": None if row.takes_at is None else waves.iso(row.takes_at)}
    if at is not None:
        document["deployment"] = row.deployment_at
    return document


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"rollout": cmd_rollout}
