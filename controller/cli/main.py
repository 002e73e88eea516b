"""The `tether` command line. Exit codes: 0 ok, 1 failed, 2 invalid input."""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from controller import __version__, errors
from controller.cli import commands as imperative
from controller.cli import drift_commands, logs, node_commands, progress, rollout_commands, status_command
from controller.engine import reconciling, status
from controller.fleet import node as node_identity
from controller.manifests import loading, overrides, reference, validation
from controller.tree import locking, records

if TYPE_CHECKING:
    from controller.daemon import loop

log = logging.getLogger(__name__)
OK, FAILED, INVALID = 0, 1, 2
CRASH_VARIABLE = "TETHER_TEST_CRASH_AT"  # test-only: SIGKILL ourselves at this named step


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--manifests", default=os.environ.get("TETHER_MANIFESTS", "/etc/tether/manifests"),
                        help="directory of manifests (TETHER_MANIFESTS)")
    common.add_argument("--node-config", default=os.environ.get("TETHER_NODE_CONFIG", node_identity.DEFAULT_PATH),
                        help="this node's name and labels; without the file, the host name (TETHER_NODE_CONFIG)")
    common.add_argument("--state-dir", default=os.environ.get("TETHER_STATE_DIR", "/var/lib/tether"),
                        help="status, locks and artifact cache (TETHER_STATE_DIR)")
    common.add_argument("--insecure-manifests", action="store_true", default=_env_flag("TETHER_INSECURE_MANIFESTS"),
                        help="accept manifests and the node file not owned by root or writable by others "
                        "(development only)")
    common.add_argument("--log-format", choices=("text", "json"), default=os.environ.get("TETHER_LOG_FORMAT", "text"),
                        help="log lines on stderr as text or as JSON objects, one a line (TETHER_LOG_FORMAT)")
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more, one level each: `tether run` logs INFO, -v DEBUG, -vv the libraries' DEBUG "
                        "too; other commands log WARNING, -v INFO")
    common.add_argument("-q", "--quiet", action="count", default=0,
                        help="log less, one level each: `tether run` -q logs WARNING, -qq ERROR; other commands -q "
                        "ERROR")
    return common


def parser() -> argparse.ArgumentParser:
    common = _common()
    top = argparse.ArgumentParser(prog="tether", description="Node-local continuous-delivery controller.")
    top.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = top.add_subparsers(dest="command", required=True)
    for name, text in (("reconcile", "one pass now, then exit"), ("plan", "what a pass would do, without doing it")):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("names", nargs="*", metavar="NAME", help="these applications only (default: every one)")
        sub.add_argument("--json", action="store_true", help="the outcome as JSON on stdout")
    status_command.add_parser(commands, common)
    sub = commands.add_parser("list", parents=[common], help="deployments of one application")
    sub.add_argument("name", help="the application")
    sub.add_argument("--json", action="store_true", help="the deployments as JSON")
    sub = commands.add_parser("validate", parents=[common], help="lint manifest files or directories")
    sub.add_argument("paths", nargs="*", metavar="PATH", help="manifest files or directories (default: --manifests)")
    sub.add_argument("--json", action="store_true", help="the verdict and the problems as JSON")
    for name, text in (("verify", "check the active deployment for drift, content included"),
                       ("repair", "restore drifted content from the cached artifact, and links")):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("name", help="the application")
        sub.add_argument("--json", action="store_true", help="the outcome as JSON")
    sub = commands.add_parser("run", parents=[common], help="the daemon: watch, reconcile, serve metrics")
    sub.add_argument("--workers", type=int, default=int(os.environ.get("TETHER_WORKERS", "4")),
                     help="applications reconciled at once; the others wait in the queue (TETHER_WORKERS)")
    sub.add_argument("--resync-interval", type=float, default=float(os.environ.get("TETHER_RESYNC_INTERVAL", "60")),
                     help="seconds between full passes over every application")
    sub.add_argument("--metrics-address", default=os.environ.get("TETHER_METRICS_ADDRESS", "127.0.0.1:9731"),
                     help="host:port of the Prometheus endpoint; empty to serve none")
    sub.add_argument("--metrics-textfile", default=os.environ.get("TETHER_METRICS_TEXTFILE"),
                     help="also write the metrics to this file (node_exporter textfile collector)")
    sub.add_argument("--web-config-file", default=os.environ.get("TETHER_WEB_CONFIG_FILE") or None,
                     help="TLS and basic auth for the metrics endpoint, in the Prometheus exporter-toolkit format; "
                     "re-read on SIGHUP (TETHER_WEB_CONFIG_FILE)")
    sub.add_argument("--shutdown-grace", type=float, default=float(os.environ.get("TETHER_SHUTDOWN_GRACE", "30")),
                     help="seconds a running pass may take to finish after SIGTERM")
    sub.add_argument("--content-check-interval", type=float,
                     default=float(os.environ.get("TETHER_CONTENT_CHECK_INTERVAL", "600")),
                     help="seconds between content drift checks of an application (digests of every file)")
    sub = commands.add_parser("schema", help="print a JSON Schema")
    sub.add_argument("which", choices=sorted(validation.SCHEMA_FILES), help="the manifest kind whose schema to print")
    sub.add_argument("--markdown", action="store_true", help="the fields as a Markdown table (docs/manifests.md)")
    node_commands.add_parser(commands, common)
    imperative.add_parsers(commands, common)
    rollout_commands.add_parsers(commands, common)
    _show_defaults(top)
    return top


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows an option's default, unless it has none worth showing (a flag, a count, no value)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS) or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every parser's help shows each option's default (set after the fact: subparsers are made in many modules)."""
    parser.formatter_class = DefaultsShown
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                _show_defaults(sub)




def _print_problems(catalog: loading.Catalog) -> None:
    for problem in catalog.problems:
        print(f"tether: {problem}", file=sys.stderr)


def _checkpoint() -> Callable[[str], None]:
    target = os.environ.get(CRASH_VARIABLE)

    def crash(step: str) -> None:
        if step == target:
            os.kill(os.getpid(), signal.SIGKILL)

    return crash if target else (lambda step: None)


def _selected(catalog: loading.Catalog, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(names to work on, requested names that are unknown or invalid)."""
    if not names:
        return sorted(catalog.applications), []
    return [n for n in names if n in catalog.applications], [n for n in names if n not in catalog.applications]


def cmd_reconcile(args: argparse.Namespace) -> int:
    catalog = imperative.catalog(args)
    _print_problems(catalog)
    names, missing = _selected(catalog, args.names)
    now = time.time()
    for name, problem in catalog.invalid_names.items():
        if not args.names or name in args.names:
            document = status.build_invalid(name, str(problem), status.read(args.state_dir, name), now)
            status.write(args.state_dir, name, document)
    for name in missing:
        if name not in catalog.invalid_names:
            print(f"tether: no valid manifest for an application named {name!r}", file=sys.stderr)
    engine = reconciling.Engine(args.state_dir, checkpoint=_checkpoint(),
                                on_retry=imperative.retry_recorder(args.state_dir))

    def one(name: str) -> tuple[str, str | None, bool, bool]:
        """(name, error, suspended, refused) of one application's pass; what it raises fails it alone, not the
        others. `refused`: a PermanentError before or after the engine's pass (an invalid node file, a lock file
        that is not one), invalid input as before."""
        try:
            with locking.application_lock(args.state_dir, name):  # the status too: a daemon's pass starts from it
                rolled = imperative.rollout_of(catalog.applications[name], args)
                app = overrides.applied(args.state_dir, rolled.app)
                result = engine.reconcile(app, catalog.kinds.get(app.kind) if app.kind else None, locked=True)
                document = status.build(app, result, status.read(args.state_dir, name), time.time())
                status.set_rollout(document, rolled.status())
                status.write(args.state_dir, name, document)
            if result.error is None and (why := status.unhealthy(document)) is not None:
                return name, f"not healthy: {why} (kept: rollbackOnFailure is false, or nothing to roll back to)", \
                    False, False
        except (errors.TetherError, OSError) as exc:
            return name, errors.printable(str(exc)), False, isinstance(exc, errors.PermanentError)
        except Exception as exc:
            log.exception("The pass of %s failed unexpectedly (a bug in tether: please report it with this "
                          "traceback).", name)
            return name, errors.unexpected(exc), False, False
        return name, result.error, result.plan.suspended, False

    with progress.shown(sys.stderr, args.json) as on_progress:  # a line on a terminal while the passes run
        engine = dataclasses.replace(engine, on_progress=on_progress)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, len(names)))) as pool:
            results = list(pool.map(one, names))
    if args.json:
        print(json.dumps([{"name": name, "converged": error is None and not suspended, "error": error}
                          for name, error, suspended, _ in results], indent=2))
    for name, error, _, _ in [] if args.json else results:
        print(f"{name}: " + ("converged" if error is None else f"failed: {error}"))
    if any(error is not None and not refused for _, error, _, refused in results):
        return FAILED
    refused = any(refused for *_, refused in results)
    return INVALID if refused or missing or (catalog.problems and not args.names) else OK


def cmd_plan(args: argparse.Namespace) -> int:
    catalog = imperative.catalog(args)
    _print_problems(catalog)
    names, missing = _selected(catalog, args.names)
    engine = reconciling.Engine(args.state_dir)
    plans = [engine.plan(overrides.applied(args.state_dir, imperative.rolled_out(catalog.applications[n], args)))
             for n in names]
    if args.json:
        print(json.dumps([_plan_json(p) for p in plans], indent=2))
    for plan in [] if args.json else plans:
        print(f"{plan.application}:" + (" suspended" if plan.suspended else " nothing to do" if not plan.steps else ""))
        for step in plan.steps:
            print(f"  {step.action} {step.deployment or ''}".rstrip() + f"  ({step.reason})")
    return INVALID if missing or catalog.problems else OK


def _plan_json(plan: Any) -> dict[str, Any]:
    return {"application": plan.application, "desired": plan.desired, "suspended": plan.suspended,
            "steps": [{"action": s.action, "deployment": s.deployment, "reason": s.reason} for s in plan.steps]}


def cmd_list(args: argparse.Namespace) -> int:
    catalog = imperative.catalog(args)
    app = catalog.applications.get(args.name)
    path = app.path if app else (status.read(args.state_dir, args.name) or {}).get("path")
    if path is None:
        print(f"tether: no application named {args.name!r}", file=sys.stderr)
        return INVALID
    observed = records.observe(path)
    if observed.refused is not None:
        print(f"tether: {args.name}: {observed.refused}; its deployments are shown as far as this tether reads them",
              file=sys.stderr)
    rows = status.deployments(observed)
    if args.json:
        print(json.dumps(rows, indent=2))
        return OK
    table = [("DEPLOYMENT", "STATE", "ACTIVE", "CREATED", "COMPLETED", "REVISION")]
    for row in rows:
        table.append((row["name"], row["state"], "*" if row["active"] else "", row["createdAt"] or "-",
                      row["completedAt"] or "-", row["revision"] or "-"))
    _table(table)
    return OK


def _count(number: int, noun: str) -> str:
    """'1 kind', '3 kinds', '0 kinds'."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def cmd_validate(args: argparse.Namespace) -> int:
    if not args.paths:
        loading.check_directory(args.manifests)
    catalog = loading.load(args.paths or [args.manifests], secure=False)
    if args.json:
        print(json.dumps({
            "valid": not catalog.problems,
            "applications": sorted(catalog.applications),
            "kinds": sorted(catalog.kinds),
            "problems": [{"file": p.file, "line": p.line, "pointer": p.pointer, "message": p.detail}
                         for p in catalog.problems],
        }, indent=2))
    else:
        for problem in catalog.problems:
            print(problem)
        if not catalog.problems:
            print(f"{_count(len(catalog.applications), 'application')} and {_count(len(catalog.kinds), 'kind')} are valid.")
    return INVALID if catalog.problems else OK


def cmd_run(args: argparse.Namespace) -> int:
    from controller.daemon import loop  # the daemon's imports (watchdog, the metrics server) only when needed

    return loop.Daemon(daemon_config(args), reconciling.Engine(args.state_dir, checkpoint=_checkpoint())).run()


def daemon_config(args: argparse.Namespace) -> loop.Config:
    """The daemon's configuration from `tether run`'s options, once the manifests directory is checked."""
    from controller.daemon import loop

    loading.check_directory(args.manifests)
    return loop.Config(manifests=args.manifests, state_dir=args.state_dir,
                       insecure_manifests=args.insecure_manifests, workers=max(1, args.workers),
                       resync_seconds=args.resync_interval, metrics_address=args.metrics_address,
                       metrics_textfile=args.metrics_textfile, web_config_file=args.web_config_file,
                       shutdown_grace_seconds=args.shutdown_grace,
                       content_check_seconds=args.content_check_interval, node_config=args.node_config)


def cmd_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(reference.markdown(args.which) if args.markdown else validation.schema_text(args.which))
    return OK


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "reconcile": cmd_reconcile, "plan": cmd_plan, **status_command.COMMANDS, "list": cmd_list,
    "validate": cmd_validate, "schema": cmd_schema, "run": cmd_run,
    "verify": drift_commands.cmd_verify, "repair": drift_commands.cmd_repair, **node_commands.COMMANDS,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The daemon logs every action and outcome at INFO (a service's journal); one-shot commands print their
    # outcome themselves and log only warnings and errors.
    default = logging.INFO if args.command == "run" else logging.WARNING
    logs.configure(getattr(args, "log_format", "text"),
                   logs.level(getattr(args, "verbose", 0), getattr(args, "quiet", 0), default))
    try:
        return {**COMMANDS, **imperative.COMMANDS, **rollout_commands.COMMANDS}[args.command](args)
    except errors.TetherError as exc:
        print(f"tether: {exc}", file=sys.stderr)
        if getattr(args, "json", False):  # a caller parsing stdout (Bolt, Ansible) gets the error too
            print(json.dumps({"ok": False, "error": str(exc)}, indent=2))
        return INVALID if isinstance(exc, errors.PermanentError) else FAILED
    except OSError as exc:  # the node's filesystem said no (permissions, a full disk, a planted file): one line
        print(f"tether: {errors.printable(str(exc))}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc)}, indent=2))
        return FAILED
    except KeyboardInterrupt:
        return FAILED


def run() -> typing.NoReturn:
    """The `tether` command: main(), then, when nothing else is left running, an exit that skips the
    interpreter's teardown (freeing every module and object one by one: 50 ms of a deploy on a slow machine).
    Output and logs are flushed first; files were closed where they were written."""
    code = main()
    logging.shutdown()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`tether list | head`): the usual exit reports it
        sys.exit(code)
    if threading.active_count() > 1:  # a thread still at work: the usual exit waits for it
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    run()
