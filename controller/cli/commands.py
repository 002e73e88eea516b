"""Imperative commands: deploy, activate, rollback, remove, prune, suspend, resume, retry.

Each records its intent in the state dir (controller/overrides.py), so that a
running daemon follows it, and, where the outcome is wanted now, runs the pass
itself under the application's lock, which the daemon shares.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from controller import errors
from controller.artifacts import fetching
from controller.cli import progress
from controller.engine import reconciling, status
from controller.fleet import gate, rollout_state
from controller.fleet import node as node_identity
from controller.manifests import loading, model, overrides
from controller.tree import locking, path_safety, records

OK, FAILED, INVALID = 0, 1, 2


def catalog(args: argparse.Namespace) -> loading.Catalog:
    """The manifests `--manifests` names; PermanentError when that directory cannot be listed."""
    loading.check_directory(args.manifests)
    reserved = [os.path.realpath(args.state_dir), os.path.realpath(args.manifests)]
    return loading.load([args.manifests], secure=not args.insecure_manifests, reserved_paths=reserved)


def rollout_of(app: model.Application, args: argparse.Namespace, *, now: float | None = None,
               ask: rollout_state.Ask | None = gate.ask) -> rollout_state.Evaluation:
    """This node's rollout evaluation of `app` now (design section 11), as the daemon makes it: the gate is
    asked once (no cache) when the node's wave waits on it; `ask` None keeps it unknown (closed).

    The node is the one `--node-config` names. Apply the overrides to `.app`: a `tether deploy` wins over
    the rollout."""
    if app.rollout is None:
        return rollout_state.evaluate(app, "", {}, 0.0, None, None)
    node = node_identity.load(args.node_config, secure=not args.insecure_manifests)
    activated = records.observe(app.path).last_activated
    return rollout_state.evaluate(app, node.name, node.labels, time.time() if now is None else now, activated, ask)


def rolled_out(app: model.Application, args: argparse.Namespace, *, now: float | None = None,
               ask: rollout_state.Ask | None = gate.ask) -> model.Application:
    """The application with spec.deployment as its rollout decides for this node now (see `rollout_of`)."""
    return rollout_of(app, args, now=now, ask=ask).app


def application(args: argparse.Namespace, found: loading.Catalog) -> model.Application:
    app = found.applications.get(args.name)
    if app is None:
        problem = found.invalid_names.get(args.name)
        raise errors.PermanentError(f"no valid manifest for an application named {args.name!r}"
                                    + (f": {problem}" if problem else ""))
    return app


Changes = Callable[[records.Observed], dict[str, Any]]  # the tree as read under the lock -> override fields


def reconcile_now(args: argparse.Namespace, found: loading.Catalog, app: model.Application, changes: Changes,
                  headers: dict[str, str] | None = None, engine: reconciling.Engine | None = None) -> int:
    """Record the `changes` to the application's overrides and run one pass with them, under one hold of
    its lock (so a daemon cannot start a pass in between, e.g. without this deploy's headers), and
    write the status; return the exit code. A newer tether's files refuse the command before any change."""
    engine = engine or reconciling.Engine(args.state_dir)
    with engine.holding(app, refuse_newer=True) as observed, progress.shown(sys.stderr, args.json) as on_progress:
        engine = dataclasses.replace(engine, on_progress=on_progress, on_retry=retry_recorder(args.state_dir))
        wanted = changes(observed)
        override = overrides.update(args.state_dir, app.name, **wanted) if wanted else \
            overrides.read(args.state_dir, app.name)
        rolled = rollout_of(app, args)
        effective = overrides.effective(rolled.app, override)
        result = engine.reconcile(effective, found.kinds.get(app.kind) if app.kind else None, headers, locked=True,
                                  observed=observed)
        # Still under the lock: a daemon's next pass starts from this status, hook runs included.
        document = status.build(effective, result, status.read(args.state_dir, app.name), time.time())
        status.set_rollout(document, rolled.status())
        status.write(args.state_dir, app.name, document)
    return report(args, app.name, result.ok, "converged" if result.ok else f"failed: {result.error}")


def retry_recorder(state_dir: str) -> Callable[[str, str, fetching.Retry], None]:
    """The engine's `on_retry` for a command holding the application's lock: the status file says that the
    download is retried, and when (status.retry_recorder, as the daemon's does)."""
    return status.retry_recorder(lambda name: status.read(state_dir, name) or {"name": name, "conditions": []},
                                 functools.partial(status.write, state_dir), time.time)


def report(args: argparse.Namespace, name: str, ok: bool, message: str) -> int:
    """Print the outcome (with `--json`: one object with the application's status) and return the exit code."""
    if getattr(args, "json", False):
        print(json.dumps({"name": name, "ok": ok, "message": message,
                          "status": status.read(args.state_dir, name)}, indent=2))
    else:
        print(f"{name}: {message}")
    return OK if ok else FAILED


HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _headers(values: list[str], where: str = "--header") -> dict[str, str]:
    """'Name: value' lines as a dict; an error names the line but never shows a value, which is a secret."""
    headers = {}
    for number, value in enumerate(values, 1):
        key, sep, text = value.partition(":")
        if not sep or not HEADER_NAME.fullmatch(key.strip()) or any(c in value for c in "\r\n\0"):
            raise errors.PermanentError(f"{where} number {number} must look like 'Name: value' with a header name "
                                        "of letters, digits and -; its text is not shown here as it may be a secret")
        headers[key.strip()] = text.strip()
    return headers


def _stdin_headers(stdin: TextIO) -> dict[str, str]:
    """--headers-from-stdin: one 'Name: value' per line, so that no secret is on a command line (ps shows those)."""
    return _headers([line for line in stdin.read().splitlines() if line.strip()], "header line")


def cmd_deploy(args: argparse.Namespace) -> int:
    found = catalog(args)
    app = application(args, found)
    deployment = args.deployment or app.deployment
    if deployment is None:
        raise errors.PermanentError(f"{app.name}'s manifest sets no deployment; give one with --deployment")
    overrides.check_deployment_name(deployment)
    overrides.check_source(args.url, args.sha256)
    headers = _headers(args.header) | (_stdin_headers(sys.stdin) if args.headers_from_stdin else {})
    desired = {"deployment": deployment, "url": args.url, "sha256": args.sha256.lower() if args.sha256 else None,
               "pinned": False, "generation": app.generation}
    if args.wait or headers or not locking.daemon_running(args.state_dir):
        engine = reconciling.Engine(args.state_dir, fetcher=fetching.Fetcher(deadline_seconds=args.timeout))
        return reconcile_now(args, found, app, lambda observed: desired, headers, engine)
    reconciling.Engine(args.state_dir).refuse_newer(app)
    overrides.update(args.state_dir, app.name, **desired)
    return report(args, app.name, True,
                  f"{deployment} is desired now; the running daemon deploys it (`tether status {app.name}`)")


def _pin(args: argparse.Namespace, which: Callable[[records.Observed], str | None], what: str) -> int:
    """Pin the deployment `which` picks from the tree (read under the lock), if it is complete."""
    found = catalog(args)
    app = application(args, found)
    path_safety.verify(app.path)  # say why, rather than that there is no such deployment

    def pinned(observed: records.Observed) -> dict[str, Any]:
        deployment = which(observed)
        record = observed.deployments.get(deployment or "")
        if deployment is None or record is None or record.state != records.COMPLETE or not record.has_dir:
            raise errors.PermanentError(f"{app.name} has no complete deployment {deployment or '(none)'} to {what}; "
                                        f"`tether list {app.name}` shows what there is")
        return {"deployment": deployment, "url": None, "sha256": None, "pinned": True, "generation": app.generation}

    return reconcile_now(args, found, app, pinned)


def cmd_activate(args: argparse.Namespace) -> int:
    return _pin(args, lambda observed: args.deployment, "activate")


def cmd_rollback(args: argparse.Namespace) -> int:
    return _pin(args, lambda observed: observed.previous, "roll back to")


def cmd_remove(args: argparse.Namespace) -> int:
    found = catalog(args)
    app = application(args, found)
    reconciling.Engine(args.state_dir).remove(
        overrides.applied(args.state_dir, rolled_out(app, args)), args.deployment)
    return report(args, app.name, True, f"removed {args.deployment}")


def cmd_prune(args: argparse.Namespace) -> int:
    found = catalog(args)
    app = application(args, found)
    effective = overrides.applied(args.state_dir, rolled_out(app, args))
    reconciling.Engine(args.state_dir).prune(effective, args.keep if args.keep is not None else app.keep)
    return report(args, app.name, True, f"pruned to {args.keep if args.keep is not None else app.keep} deployments")


def cmd_suspend(args: argparse.Namespace) -> int:
    app = application(args, catalog(args))
    reconciling.Engine(args.state_dir).refuse_newer(app)
    overrides.update(args.state_dir, app.name, suspended=args.command == "suspend")
    return report(args, app.name, True,
                  "suspended; nothing changes until `tether resume`" if args.command == "suspend" else "resumed")


def cmd_retry(args: argparse.Namespace) -> int:
    app = application(args, catalog(args))
    shown = status.read(args.state_dir, app.name) or {}
    cleared = reconciling.Engine(args.state_dir).retry(app)  # refuses a newer tether's files before any change
    overrides.update(args.state_dir, app.name, retry_requested_at=time.time())
    return report(args, app.name, True, retried(app.name, cleared, shown, locking.daemon_running(args.state_dir)))


def retried(name: str, cleared: list[str], shown: dict[str, Any], daemon: bool) -> str:
    """What `tether retry` did, in the terms `tether status` showed: the failure marks cleared, the back-off
    reset, and when the next attempt is."""
    done = [f"cleared the failure mark of {', '.join(cleared)}"] if cleared else []
    was = shown.get("nextAttemptAt")
    done.append("the back-off is reset" + (f" (the next attempt was due at {was})" if isinstance(was, str) else ""))
    nxt = ("the next attempt is now: the running daemon makes it" if daemon
           else f"no daemon is running: `tether reconcile {name}` makes the next attempt now")
    return "; ".join(done) + "; " + nxt


def add_parsers(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """Register the imperative commands with the command line; each takes --json."""
    json_output = argparse.ArgumentParser(add_help=False)
    json_output.add_argument("--json", action="store_true", help="print the outcome and the status as JSON")
    common = argparse.ArgumentParser(add_help=False, parents=[common, json_output])
    sub = commands.add_parser("deploy", parents=[common], help="set the desired deployment (CI/CD entry point)")
    sub.add_argument("name", help="the application")
    sub.add_argument("--deployment", help="deployment name (default: the manifest's)")
    sub.add_argument("--url", help="artifact URL for this deployment instead of the manifest's source.url")
    sub.add_argument("--header", action="append", default=[], metavar="'K: V'",
                     help="request header for this deploy only (never written to disk); implies waiting")
    sub.add_argument("--headers-from-stdin", action="store_true",
                     help="read more such headers from stdin, one 'K: V' per line (not visible in ps); implies waiting")
    sub.add_argument("--sha256", help="expected sha256 of the artifact")
    sub.add_argument("--wait", action="store_true", help="deploy now and wait for the outcome")
    sub.add_argument("--timeout", type=float, default=3600.0, help="give up downloading after this many seconds")
    sub = commands.add_parser("activate", parents=[common], help="pin an existing complete deployment")
    sub.add_argument("name", help="the application")
    sub.add_argument("deployment", help="a complete deployment (`tether list NAME`)")
    sub = commands.add_parser("rollback", parents=[common], help="pin the previous deployment")
    sub.add_argument("name", help="the application")
    sub = commands.add_parser("remove", parents=[common], help="remove a deployment (never the active one)")
    sub.add_argument("name", help="the application")
    sub.add_argument("deployment", help="the deployment to remove")
    sub = commands.add_parser("prune", parents=[common], help="apply retention now")
    sub.add_argument("name", help="the application")
    sub.add_argument("--keep", type=int, choices=range(1, 1001), metavar="N",
                     help="deployments to keep, 1 to 1000 (default: the manifest's spec.keep)")
    for name, text in (("suspend", "stop reconciling an application"), ("resume", "reconcile it again"),
                       ("retry", "forget failure marks and back-off so the next pass tries again")):
        commands.add_parser(name, parents=[common], help=text).add_argument("name", help="the application")


COMMANDS = {"deploy": cmd_deploy, "activate": cmd_activate, "rollback": cmd_rollback, "remove": cmd_remove,
            "prune": cmd_prune, "suspend": cmd_suspend, "resume": cmd_suspend, "retry": cmd_retry}

