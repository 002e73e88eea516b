"""The series of one application (design section 8), made from its status document at scrape time: rows
and their lines per family of `SERIES`. Families that read the same fields of the document are made
together, as a group; a new document keeps the rows and lines of each group whose fields say the same
as the last document's (a pass that changed nothing moves only updatedAt and lastSuccessAt)."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import marshal
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from controller import errors
from controller.daemon import exposition
from controller.engine import hooks, status
from controller.tree import records

log = logging.getLogger(__name__)

DRIFT_TYPES = ("current", "deployment", "links", "content")
HOOK_OUTCOMES = (hooks.SUCCESS, hooks.FAILURE, hooks.TIMEOUT)
DEPLOYMENT_STATES = (records.COMPLETE, records.INCOMPLETE, records.FAILED)  # others ("missing") only when present
Row = exposition.Row
Series = exposition.Series
SERIES = (
    Series("tether_application_info", "Always 1: each managed application, the deployment current points to and "
           "its revision (the commit id of a git source; empty otherwise).", "gauge",
           ["name", "application", "environment", "kind", "deployment", "revision"]),
    Series("tether_application_ready", "1 when the last pass converged (condition Ready).", "gauge", ["name"]),
    Series("tether_application_suspended", "1 when spec.suspend is true: nothing changes.", "gauge", ["name"]),
    Series("tether_application_stalled", "1 when tether cannot make progress without a person (condition "
           "Stalled): the last pass failed with a permanent error, or the manifest is invalid.", "gauge", ["name"]),
    Series("tether_drift", "1 when the last check found drift of this type (current, deployment, links, content).",
           "gauge", ["name", "type"]),
    Series("tether_drifted_files", "Files of the active deployment changed, added or removed since it became "
           "complete.", "gauge", ["name"]),
    Series("tether_deployments", "Deployments by state.", "gauge", ["name", "state"]),
    Series("tether_deployment_failed", "1 while the deployment the manifest asks this node for is marked failed "
           "(a rollout's canary rolled it back), or is active but failed its health check (rollbackOnFailure: "
           "false, or nothing to roll back to); absent otherwise.", "gauge", ["name", "deployment"]),
    Series("tether_last_success_timestamp_seconds", "When a pass last ended Ready.", "gauge", ["name"]),
    Series("tether_next_attempt_timestamp_seconds", "When tether next retries a failed pass (nextAttemptAt); "
           "absent while no retry is scheduled.", "gauge", ["name"]),
    Series("tether_hook_runs_total", "Hook runs by phase and outcome.", "counter", ["name", "hook", "outcome"]),
    Series("tether_health_checks_total", "Health check probes (spec.healthCheck) by outcome.", "counter",
           ["name", "outcome"]),
    Series("tether_rollout_wave", "The index of this node's wave in spec.rollout.waves, from 0; -1 in no wave "
           "(absent without a rollout).", "gauge", ["name"]),
    Series("tether_rollout_waiting", "1 while this node's wave time has come but the gate keeps it shut.", "gauge",
           ["name"]),
    Series("tether_rollout_gate_open", "1 when the rollout gate's last answer was open (or there is no gate); 0 "
           "when closed or not asked.", "gauge", ["name"]),
)


@dataclasses.dataclass(frozen=True)
class Made:
    """One application's rows and their lines per family of SERIES, made from `document`."""

    document: Mapping[str, Any]
    values: tuple[Any, ...]  # of the fields the groups read, in their order (_FIELDS)
    typed: tuple[bytes | None, ...]  # per group whose rows depend on types: its values as marshal writes them
    rows: tuple[list[Row], ...]
    lines: tuple[str, ...]


def made(name: str, document: Mapping[str, Any], known: Made | None = None) -> Made | None:
    """The series of application `name`, or None (logged) when its status document cannot be read.
    `known`, made from an earlier document of the same application, lends its rows and lines to each group
    whose fields are equal in both documents, and its lines to each family whose rows came out the same."""
    made_rows: list[list[Row]] = []
    lines: list[str] = []
    keys: list[bytes | None] = []
    shown = False
    try:
        values = tuple(map(document.get, _FIELDS))
        for group, ((first, last), (_, rows_of, typed)) in enumerate(zip(_SPANS, _GROUPS, strict=True)):
            start = len(lines)
            new, old = values[first:last], known.values[first:last] if known is not None else None
            if not typed:
                key, same = None, new == old
            elif old is not None and all(map(operator.is_, new, old)):
                key, same = known.typed[group] if known is not None else None, True
            else:
                key = _typed(new)
                same = key is not None and known is not None and key == known.typed[group]
            keys.append(key)
            if known is not None and same:
                end = start + _WIDTHS[rows_of]
                made_rows.extend(known.rows[start:end])
                lines.extend(known.lines[start:end])
                continue
            groups, escape, escaped = exposition.carried(rows_of(name, document))
            shown = shown or escaped
            for index, rows in enumerate(groups, start):
                made_rows.append(rows)
                if known is not None and known.rows[index] == rows:
                    lines.append(known.lines[index])
                else:
                    lines.append(SERIES[index].lines(rows, escape) if rows else "")
    except Exception:  # one odd document must never break the whole exposition
        log.exception("The metrics of %s are left out of this scrape: its status document could not be read.",
                      errors.printable(name))
        return None
    if shown:
        log.warning("Some label values of the metrics of %s hold characters an exposition cannot carry; they are "
                    "shown as escapes.", errors.printable(name))
    return Made(document, values, tuple(keys), tuple(made_rows), tuple(lines))


def _typed(values: tuple[Any, ...]) -> bytes | None:
    """`values` as marshal writes them, the type of each value included (Python finds 1, 1.0 and True equal,
    and a typed group makes other rows of them), or None for a type marshal does not write."""
    try:
        return marshal.dumps(values)
    except ValueError:  # not a type a status document read from JSON holds: made again every time
        return None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _timestamp(value: object) -> float | None:
    """Seconds since the epoch of an ISO 8601 time as status.py writes it (naive means UTC), or None."""
    try:
        moment = datetime.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return None if moment is None else (moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)).timestamp()


def _revision(value: Any) -> str:
    """A commit id from a status document, or "" (none, or not a commit id)."""
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", value) else ""


def _conditions(document: Mapping[str, Any]) -> dict[Any, Mapping[str, Any]]:
    return {c.get("type"): c for c in reversed(_list(document.get("conditions")))}  # the first of a type


def _info(name: str, document: Mapping[str, Any]) -> tuple[list[Row]]:
    return [((name, str(document.get("application") or ""), str(document.get("environment") or ""),
              str(document.get("kind") or ""), str(document.get("current") or ""),
              _revision(document.get("revision"))), 1)],


def _state(name: str, document: Mapping[str, Any]) -> tuple[list[Row], list[Row], list[Row]]:
    conditions = _conditions(document)
    ready = conditions.get("Ready", {})
    return ([((name,), 1 if ready.get("status") == "True" else 0)],
            [((name,), 1 if ready.get("reason") == "Suspended" else 0)],
            [((name,), 1 if conditions.get("Stalled", {}).get("status") == "True" else 0)])


def _drift(name: str, document: Mapping[str, Any]) -> tuple[list[Row], list[Row]]:
    found = _mapping(document.get("drift"))
    files = found.get("driftedFiles")
    return ([((name, kind), 1 if found.get(kind) is True else 0) for kind in DRIFT_TYPES],
            [((name,), files if isinstance(files, int) and not isinstance(files, bool) else 0)])


def _deployments(name: str, document: Mapping[str, Any]) -> tuple[list[Row], list[Row]]:
    listed = _list(document.get("deployments"))
    states: dict[str, int] = dict.fromkeys(DEPLOYMENT_STATES, 0)
    for deployment in listed:
        state = str(deployment.get("state") or "")
        states[state] = states.get(state, 0) + 1
    extra = sorted(list(states)[len(DEPLOYMENT_STATES):])  # the three first, then the others by name
    desired = document.get("desired")
    failed = isinstance(desired, str) and (any(d.get("name") == desired and d.get("state") == records.FAILED
                                               for d in listed) or status.unhealthy(document) is not None)
    return ([((name, state), states[state]) for state in (*DEPLOYMENT_STATES, *extra)],
            [((name, str(desired)), 1)] if failed else [])  # only the desired one: a fix ends the series


def _last_success(name: str, document: Mapping[str, Any]) -> tuple[list[Row]]:
    last = _timestamp(document.get("lastSuccessAt"))
    if last is None and _conditions(document).get("Ready", {}).get("status") == "True":
        last = _timestamp(document.get("updatedAt"))
    return [((name,), last)] if last is not None else [],


def _next_attempt(name: str, document: Mapping[str, Any]) -> tuple[list[Row]]:
    retry = _timestamp(document.get("nextAttemptAt"))
    return [((name,), retry)] if retry is not None else [],


def _hook_runs(name: str, document: Mapping[str, Any]) -> tuple[list[Row]]:
    phases: dict[str, dict[str, int]] = {}
    for key, count in _mapping(document.get("hookRunCounts")).items():
        if isinstance(key, str) and isinstance(count, int):
            phase, slash, outcome = key.partition("/")
            if slash:
                phases.setdefault(phase, {})[outcome] = count
    runs: list[Row] = []
    for phase in sorted(phases):
        outcomes = phases[phase]
        extra = [outcome for outcome in outcomes if outcome not in HOOK_OUTCOMES]
        runs += [((name, phase, outcome), outcomes.get(outcome, 0))  # every outcome once a phase ran, 0 too
                 for outcome in ((*HOOK_OUTCOMES, *sorted(extra)) if extra else HOOK_OUTCOMES)]
    return runs,


def _health_checks(name: str, document: Mapping[str, Any]) -> tuple[list[Row]]:
    probed = {k: v for k, v in _mapping(document.get("healthCheckCounts")).items()
              if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}
    outcomes = (*HOOK_OUTCOMES, *sorted(set(probed) - set(HOOK_OUTCOMES))) if probed else ()
    return [((name, outcome), probed.get(outcome, 0)) for outcome in outcomes],  # all once a probe has run


def _rollout(name: str, document: Mapping[str, Any]) -> tuple[list[Row], list[Row], list[Row]]:
    rollout = document.get("rollout")
    if not isinstance(rollout, Mapping):  # only while the manifest has a rollout: no stale series after it
        return [], [], []
    index = rollout.get("wave")
    return ([((name,), index if isinstance(index, int) and not isinstance(index, bool) else -1)],
            [((name,), 1 if rollout.get("waiting") is True else 0)],
            [((name,), 1 if rollout.get("gate") == "open" else 0)])


Rows = Callable[[str, Mapping[str, Any]], tuple[list[Row], ...]]
# Each group: the fields of the document it reads, what makes its rows (for the next families of SERIES),
# and whether values that Python finds equal but of other types (1, 1.0, True) may make other rows: str()
# of a value, an isinstance check for int or `is True`. The others compare only with strings.
_GROUPS: tuple[tuple[tuple[str, ...], Rows, bool], ...] = (
    (("application", "environment", "kind", "current", "revision"), _info, True),
    (("conditions",), _state, False),
    (("drift",), _drift, True),
    (("deployments", "desired"), _deployments, True),
    (("lastSuccessAt", "updatedAt", "conditions"), _last_success, False),
    (("nextAttemptAt",), _next_attempt, False),
    (("hookRunCounts",), _hook_runs, True),
    (("healthCheckCounts",), _health_checks, True),
    (("rollout",), _rollout, True),
)
_FIELDS = tuple(field for fields, _, _ in _GROUPS for field in fields)
_SPANS = [(sum(len(g[0]) for g in _GROUPS[:i]), sum(len(g[0]) for g in _GROUPS[:i + 1])) for i in range(len(_GROUPS))]
_WIDTHS = {rows_of: len(rows_of("", {})) for _, rows_of, _ in _GROUPS}  # how many families each group makes
assert sum(_WIDTHS.values()) == len(SERIES)
