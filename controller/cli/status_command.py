"""`tether status [NAME] [--json]`: the applications, their state and the manifests that are invalid.

The table shows one line per application, its message cut to fit (with "…"); `tether status NAME` shows
one application with every message whole. An invalid manifest is listed with its file and error, whether
or not its application has a status yet (a manifest that never was valid has none).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from controller import errors
from controller.cli import commands
from controller.engine import status
from controller.fleet import rollout_state

OK, INVALID = 0, 2
MESSAGE_WIDTH = 100


def add_parser(commands_: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    sub = commands_.add_parser("status", parents=[common], help="applications, their state and invalid manifests")
    sub.add_argument("name", nargs="?", metavar="NAME", help="show this application only, with whole messages")
    sub.add_argument("--json", action="store_true", help="the status documents as JSON")


def ellipsis() -> str:
    """"…", or "..." where stdout cannot encode it."""
    try:
        "…".encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return "..."
    return "…"


def cut(text: str, width: int = MESSAGE_WIDTH) -> str:
    """`text` on one line, at most `width` characters: a longer one ends with an ellipsis."""
    text = errors.printable(" ".join(text.split()))
    mark = ellipsis()
    return text if len(text) <= width else text[: width - len(mark)].rstrip() + mark


def ready(document: dict[str, Any]) -> str:
    found = condition(document, "Ready")
    return "True" if found and found["status"] == "True" else (found or {}).get("reason", "Unknown")


def condition(document: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in document.get("conditions", []) if isinstance(c, dict) and c.get("type") == kind), None)


def message(document: dict[str, Any], width: int | None = None) -> str:
    """What an operator wants to know first: what a running pass is doing (retrying a download, say), else the
    last error, cut to `width` (None: whole), and where the rollout stands (never cut: it is short)."""
    working = condition(document, "Reconciling")
    doing = working.get("message", "") if working and working.get("status") == "True" else ""
    first = doing or document.get("lastError") or ""
    return "; ".join(m for m in (cut(first, width) if width else first, rollout_state.waiting_text(document)) if m)


def invalid_manifests(problems: Sequence[errors.ManifestError], names: dict[str, errors.ManifestError]) -> list[
        dict[str, Any]]:
    """Each invalid manifest file: {name (None when unknown), file, line, pointer, message, error}."""
    by_file = {problem.file: name for name, problem in names.items()}
    return [{"name": by_file.get(p.file), "file": p.file, "line": p.line, "pointer": p.pointer or None,
             "message": p.detail, "error": str(p)} for p in problems]


def cmd_status(args: argparse.Namespace) -> int:
    found = commands.catalog(args)
    invalid = invalid_manifests(found.problems, found.invalid_names)
    documents = status.read_all(args.state_dir)
    covered = set()
    for document in documents:  # the manifest of an application with a status: by its name, or by its file
        problem = next((i for i in invalid if (i["name"] is not None and i["name"] == document.get("name"))
                        or i["file"] == document.get("file")), None)
        if problem is not None:
            document["invalidManifest"] = {**problem, "name": document.get("name")}
            covered.add(problem["file"])
    orphans = [i for i in invalid if i["file"] not in covered]
    if args.name:
        documents = [d for d in documents if d.get("name") == args.name]
        orphans = [i for i in orphans if i["name"] == args.name]
        if not documents and not orphans:
            print(f"tether: no status for {args.name!r}; has it been reconciled?", file=sys.stderr)
            return INVALID
    shown = documents + [_invalid_document(i) for i in orphans]
    if args.json:
        print(json.dumps(shown[0] if args.name else shown, indent=2))
    elif args.name:
        _details(shown[0])
    else:
        rows = [("NAME", "DESIRED", "CURRENT", "READY", "MESSAGE")]
        for d in shown:
            rows.append((d.get("name") or "-", d.get("desired") or "-", d.get("current") or "-", ready(d),
                         message(d, MESSAGE_WIDTH)))
        table(rows)
    return OK


def _invalid_document(problem: dict[str, Any]) -> dict[str, Any]:
    """A status-shaped document for an invalid manifest whose application has no status."""
    return {"name": problem["name"], "file": problem["file"], "desired": None, "current": None,
            "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidManifest",
                            "message": problem["error"]}],
            "lastError": problem["error"], "invalidManifest": problem}


def _details(document: dict[str, Any]) -> None:
    """One application with whole messages, for `tether status NAME`."""
    pairs = [("Name", document.get("name") or "-"), ("File", document.get("file") or "-"),
             ("Desired", document.get("desired") or "-"), ("Current", document.get("current") or "-"),
             ("Previous", document.get("previous") or "-"), ("Ready", ready(document)),
             ("Message", message(document) or "-")]
    if document.get("nextAttemptAt"):
        pairs.append(("Next attempt", document["nextAttemptAt"]))
    if document.get("updatedAt"):
        pairs.append(("Updated", document["updatedAt"]))
    for key, value in pairs:
        print(f"{key + ':':<14}{errors.printable(str(value))}")
    print("Conditions:")
    rows = [("  TYPE", "STATUS", "REASON", "MESSAGE")]
    for c in document.get("conditions", []):
        if isinstance(c, dict):
            rows.append(("  " + str(c.get("type")), str(c.get("status")), str(c.get("reason")),
                         errors.printable(str(c.get("message") or ""))))
    table(rows)


def table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


COMMANDS = {"status": cmd_status}
