"""`tether node`: this node's identity, where it came from, and the applications it manages."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from controller import errors
from controller.cli import commands as imperative
from controller.fleet import node as node_identity
from controller.fleet import waves
from controller.manifests import model

OK, INVALID = 0, 2


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    sub = commands.add_parser("node", parents=[common], help="this node's identity (name and labels)")
    sub.add_argument("--json", action="store_true", help="the identity and the applications as JSON")


def identity(args: argparse.Namespace) -> node_identity.Node:
    """The node identity the options name; raise ManifestError when the node file is invalid."""
    return node_identity.load(args.node_config, secure=not args.insecure_manifests)


def cmd_node(args: argparse.Namespace) -> int:
    try:
        node = identity(args)
    except errors.ManifestError as exc:
        print(f"tether: the node file is invalid: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}, indent=2))
        return INVALID
    catalog = imperative.catalog(args)
    for problem in catalog.problems:
        print(f"tether: {problem}", file=sys.stderr)
    applications = [_wave(app, node) for _, app in sorted(catalog.applications.items())]
    if args.json:
        print(json.dumps({**node.as_json(), "applications": applications}, indent=2))
        return OK
    print(f"Name:   {node.name}")
    source = errors.shown_path(node.source) if node.from_file else \
        f"the host name (there is no {errors.shown_path(args.node_config)})"
    print(f"Source: {source}")
    print("Labels: " + (", ".join(f"{k}={v}" for k, v in sorted(node.labels.items())) or "none"))
    print("Applications:" + ("" if applications else " none"))
    for application in applications:
        print(f"  {application['name']}" + ("" if "rollout" not in application else f": {_wave_text(application)}"))
    return OK


def _wave(app: model.Application, node: node_identity.Node) -> dict[str, Any]:
    """One application as `tether node` shows it: with a rollout, this node's bucket and wave (from 0)."""
    if app.rollout is None:
        return {"name": app.name}
    wave = waves.wave_of(node.name, node.labels, app.application, app.rollout)
    opens = waves.opens_at(app.rollout, wave) if wave is not None else None
    return {"name": app.name, "rollout": {
        "id": app.rollout.id, "bucket": waves.bucket(node.name, app.application, app.rollout.id), "wave": wave,
        "opensAt": waves.iso(opens) if opens is not None else None}}


def _wave_text(application: dict[str, Any]) -> str:
    rollout = application["rollout"]
    if rollout["wave"] is None:
        return f"rollout {rollout['id']}: in no wave (bucket {rollout['bucket']:.2f}), stays on `from`"
    return (f"rollout {rollout['id']}: wave {rollout['wave'] + 1} (bucket {rollout['bucket']:.2f}), opens at "
            f"{rollout['opensAt']}")


COMMANDS = {"node": cmd_node}
