"""Per-application status, written atomically to `<state-dir>/status/<name>.json`.

Status files carry error messages and the tails of hook output, which may hold
anything an application prints: they are written 0640 (root's group; the state
dir itself is 0750 under systemd), so only root, as `tether status` runs, reads
them. Errors built from what a server answered are scrubbed of secrets before
they get here (controller/fetching.py).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from controller import formats, fsutil
from controller.artifacts import fetching
from controller.engine import hooks, planning, reconciling
from controller.manifests import model
from controller.tree import records

log = logging.getLogger(__name__)


def timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


DRIFT_TYPES = ("current", "deployment", "links", "content")
DRIFT_PATHS_SHOWN = 10
MODE = 0o640


def status_path(state_dir: str, name: str) -> str:
    return reconciling.status_path(state_dir, name)


def read(state_dir: str, name: str) -> dict[str, Any] | None:
    """The status document of `name`; one of a newer format reads as a document that says so."""
    try:
        data = formats.read(status_path(state_dir, name))
    except formats.NewerFormat as exc:
        return refused(name, str(exc))
    return data if isinstance(data, dict) else None


def refused(name: str, message: str) -> dict[str, Any]:
    """The status of an application tether leaves alone because a file of it is of a newer format."""
    return {"name": name, "deployments": [], "lastError": message,
            "conditions": [_condition("Ready", False, "NewerFormat", message),
                           _condition("Stalled", True, "NewerFormat", message)]}


def read_all(state_dir: str) -> list[dict[str, Any]]:
    directory = os.path.join(state_dir, reconciling.STATUS_DIR)
    if not os.path.isdir(directory):
        return []
    names = sorted(e[:-5] for e in os.listdir(directory) if e.endswith(".json") and not e.startswith("."))
    return [s for s in (read(state_dir, n) for n in names) if s is not None]


def is_ready(document: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in document.get("conditions", []))


def unhealthy(document: Mapping[str, Any]) -> str | None:
    """Why the deployment the manifest asks for is active but failed its health check (kept there by
    rollbackOnFailure: false, or with nothing to roll back to); None otherwise."""
    conditions = document.get("conditions")
    for condition in conditions if isinstance(conditions, list) else []:
        if isinstance(condition, Mapping) and condition.get("type") == "Healthy" and \
                condition.get("reason") == "Unhealthy" and document.get("current") == document.get("desired"):
            return str(condition.get("message"))
    return None


def _condition(kind: str, status: bool, reason: str, message: str) -> dict[str, Any]:
    return {"type": kind, "status": "True" if status else "False", "reason": reason, "message": message}


def _with_transitions(new: list[dict[str, Any]], old: list[dict[str, Any]], now: str | None) -> list[dict[str, Any]]:
    before = {c["type"]: c for c in old}
    for condition in new:
        prior = before.get(condition["type"])
        same = prior is not None and prior.get("status") == condition["status"]
        condition["lastTransitionTime"] = prior.get("lastTransitionTime") if same and prior else now
    return new


def deployments(observed: records.Observed) -> list[dict[str, Any]]:
    rows = sorted(observed.deployments.values(), key=lambda d: (d.created_at or 0, d.name))
    return [
        {
            "name": d.name,
            "state": d.state if d.has_dir or d.state == records.FAILED else "missing",
            "active": d.name == observed.current,
            "createdAt": timestamp(d.created_at),
            "completedAt": timestamp(d.completed_at),
            "sha256": d.sha256,
            "revision": d.revision,
        }
        for d in rows
    ]


def revision(observed: records.Observed) -> str | None:
    """The commit id of the active deployment when it came from a git source (None otherwise)."""
    active = observed.deployments.get(observed.current or "")
    return active.revision if active is not None else None


def hook_run(run: hooks.HookRun) -> dict[str, Any]:
    return {
        "phase": run.phase, "source": run.source, "deployment": run.deployment, "outcome": run.outcome,
        "exitCode": run.exit_code, "startedAt": timestamp(run.started_at),
        "durationSeconds": round(run.duration_seconds, 3), "outputTail": run.output_tail, "log": run.log,
    }


def _counts(before: dict[str, int], result: reconciling.Result) -> dict[str, int]:
    """Hook runs so far by "phase/outcome", carried from pass to pass for the metrics."""
    counts = dict(before)
    for run in result.hook_runs:
        key = f"{run.phase}/{run.outcome}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def _probe_counts(before: object, result: reconciling.Result) -> dict[str, int]:
    """Health check probes so far by outcome, carried from pass to pass for the metrics."""
    counts = {k: v for k, v in before.items() if isinstance(v, int)} if isinstance(before, dict) else {}
    for outcome in result.probes:
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def healthy(app: model.Application, result: reconciling.Result) -> dict[str, Any]:
    """The Healthy condition: how the health check of the active deployment ended (design section 11).

    True once it passed (reason Healthy), or, without spec.healthCheck, once the deployment is active (reason
    NoHealthCheck); False when it failed; Unknown while nothing is active or probing has not reached a verdict."""
    observed, verdict = result.observed, result.health
    if verdict is not None:
        return _condition("Healthy", verdict.healthy, "Healthy" if verdict.healthy else "Unhealthy",
                          f"{verdict.deployment}: {verdict.message}")
    current = observed.deployments.get(observed.current or "")
    if current is None:
        return {**_condition("Healthy", False, "NotActivated", "no deployment is active"), "status": "Unknown"}
    if app.health_check is None:
        return _condition("Healthy", True, "NoHealthCheck",
                          f"spec.healthCheck is not set; {current.name} is healthy once its afterActivate hooks "
                          "succeeded")
    if current.activation_pending:
        since = f" since {timestamp(current.probing_since)}" if current.probing_since is not None else ""
        return {**_condition("Healthy", False, "Probing", f"{current.name}: probing{since} has not reached a "
                             "verdict; the next pass goes on"), "status": "Unknown"}
    if current.healthy_at is not None:
        return _condition("Healthy", True, "Healthy", f"{current.name}: {current.health_message or 'passed'}")
    if current.health_message is not None:
        return _condition("Healthy", False, "Unhealthy", f"{current.name}: {current.health_message}")
    return {**_condition("Healthy", False, "NotChecked", f"{current.name} was activated before spec.healthCheck "
                         "was set; it is probed at its next activation"), "status": "Unknown"}


def stalled(result: reconciling.Result) -> dict[str, Any]:
    """The Stalled condition: True when the pass failed in a way that only a change of the input mends."""
    if not result.ok:
        return failure(result.error or "the pass failed", result.permanent, result.unexpected)
    return _condition("Stalled", False, "NoError", "the last pass ended without an error")


def failure(error: str, permanent: bool = False, unexpected: bool = False) -> dict[str, Any]:
    """The Stalled condition of a failed pass: permanent (True) or retried; an UnexpectedError is a bug."""
    if permanent:
        return _condition("Stalled", True, "PermanentError", f"{error}; trying again will not help until that is "
                          "fixed: the daemon tries again after its back-off, and at once when the manifest changes or "
                          "after `tether retry`")
    return _condition("Stalled", False, "UnexpectedError" if unexpected else "TemporaryError",
                      f"the pass failed and the next one tries again: {error}")


def set_failed(document: dict[str, Any], error: str, now: float, permanent: bool = False,
               unexpected: bool = False) -> dict[str, Any]:
    """A copy of `document` saying that a pass failed with `error` before it could say more (the daemon's own
    work failed): not Ready, no pass running, Stalled as `failure` says; deployments, current and the rest as
    they were."""
    failed = [_condition("Ready", False, "Failed", error), _condition("Reconciling", False, "Idle", "no pass is running"),
              failure(error, permanent, unexpected)]
    replaced = {c["type"] for c in failed}
    others = [c for c in document.get("conditions", []) if c.get("type") not in replaced]
    stamp = timestamp(now)
    return {**document, "conditions": _with_transitions(failed, document.get("conditions", []), stamp) + others,
            "lastError": error, "updatedAt": stamp}


def build(app: model.Application, result: reconciling.Result, previous: dict[str, Any] | None,
          now: float) -> dict[str, Any]:
    """The status document after a pass."""
    observed, plan = result.observed, result.plan
    desired = plan.desired
    health = healthy(app, result)
    proven = health["status"] == "True" or health["reason"] == "NotChecked"
    ready = result.ok and not plan.suspended and desired is not None and observed.current == desired and proven
    if plan.suspended:
        reason, message = "Suspended", "spec.suspend is true; nothing is changed"
    elif not result.ok:
        reason, message = "Failed", result.error or "the pass failed"
    elif desired is None:
        reason, message = "NoDesiredDeployment", "spec.deployment is not set; `tether deploy` sets it"
    elif observed.current != desired:
        reason, message = "NotConverged", f"current points to {observed.current or 'nothing'}, not {desired}"
    elif not proven:
        reason, message = "NotHealthy", health["message"]
    else:
        reason, message = "Converged", f"current points to {desired}"
    stamp = timestamp(now)
    conditions = [
        _condition("Ready", ready, reason, message),
        _condition("Reconciling", False, "Idle", "no pass is running"),
        stalled(result),
        _condition("Drifted", False, "NotChecked", "drift detection is not enabled"),
        health,
    ]
    return {
        "name": app.name,
        "application": app.application,
        "environment": app.environment,
        "kind": app.kind or "",
        "path": app.path,
        "file": app.file,
        "observedGeneration": app.generation,
        "desired": desired,
        "current": observed.current,
        "revision": revision(observed),
        "previous": observed.previous,
        "deployments": deployments(observed),
        "conditions": _with_transitions(conditions, (previous or {}).get("conditions", []), stamp),
        "lastHookRuns": [hook_run(r) for r in result.hook_runs] or (previous or {}).get("lastHookRuns", []),
        "hookRunCounts": _counts((previous or {}).get("hookRunCounts", {}), result),
        "healthCheckCounts": _probe_counts((previous or {}).get("healthCheckCounts"), result),
        "lastError": result.error,
        "nextAttemptAt": None,
        "updatedAt": stamp,
    }


def set_drift(document: dict[str, Any], types: list[str], files: list[str], now: float,
              note: str = "") -> None:
    """Record drift: the `drift` field the metrics read, and the Drifted condition."""
    document["drift"] = {kind: kind in types for kind in DRIFT_TYPES} | {"driftedFiles": len(files)}
    if files:
        shown = ", ".join(files[:DRIFT_PATHS_SHOWN]) + (" ..." if len(files) > DRIFT_PATHS_SHOWN else "")
        note = f"{len(files)} files changed since the deployment completed: {shown}; `tether repair` restores them"
    drifted = _condition("Drifted", bool(types), "Drifted" if types else "InSync",
                         ("drift: " + ", ".join(types) + (f"; {note}" if note else "")) if types
                         else note or "no drift: the active deployment is as tether made it")
    others = [c for c in document.get("conditions", []) if c["type"] != "Drifted"]
    document["conditions"] = others + _with_transitions([drifted], document.get("conditions", []), timestamp(now))


def set_left_broken(document: dict[str, Any], why: str, now: float) -> None:
    """Not Ready: the active deployment is not whole (`why`: its directory or `current` is gone or changed), and
    spec.drift: report leaves it as it is. Changed files alone (content drift) leave Ready as it was."""
    message = (f"{why}; spec.drift is report, so tether leaves it as it is: `tether reconcile {document['name']}` "
               "mends it once, spec.drift: correct always")
    ready = _condition("Ready", False, "DriftReported", message)
    others = [c for c in document.get("conditions", []) if c["type"] != "Ready"]
    document["conditions"] = _with_transitions([ready], document.get("conditions", []), timestamp(now)) + others


def working_on(app: model.Application, plan: planning.Plan) -> str:
    """What a pass is about to do, in words: "fetching v2 from https://host/app-v2.tar.gz, activate v2"."""
    parts = []
    for step in plan.steps:
        if step.action == planning.DEPLOY and step.deployment and app.source is not None and app.source.git:
            from controller.artifacts import git_runner  # the git modules only for a git source

            ref = model.expand_url(app.source.git.ref, app, step.deployment)
            parts.append(f"fetching {step.deployment} ({ref}) from {git_runner.shown_url(app.source.git.url)}")
        elif step.action == planning.DEPLOY and step.deployment and app.source is not None:
            url = fetching.redact_url(model.expand_url(app.source.url, app, step.deployment))
            parts.append(f"fetching {step.deployment} from {url}")
        else:
            parts.append(f"{step.action} {step.deployment or ''}".strip())
    return ", ".join(parts)


def initial(app: model.Application) -> dict[str, Any]:
    """The status of an application before its first pass has ended."""
    first = _condition("Ready", False, "FirstPass", "the first pass has not finished yet")
    return {
        "name": app.name, "application": app.application, "environment": app.environment, "kind": app.kind or "",
        "path": app.path, "file": app.file, "observedGeneration": app.generation, "desired": app.deployment,
        "current": None, "revision": None, "previous": None, "deployments": [], "conditions": [first], "lastHookRuns": [],
        "hookRunCounts": {}, "lastError": None, "nextAttemptAt": None, "updatedAt": None,
    }


def set_reconciling(document: dict[str, Any], steps: str, now: float, desired: str | None = None,
                    reason: str = "Progressing") -> dict[str, Any]:
    """A copy of `document` saying that a pass is working on `steps` towards `desired` (None: as it was)."""
    changed = dict(document)
    if desired is not None:
        changed["desired"] = desired
    working = _condition("Reconciling", True, reason, steps)
    others = [c for c in document.get("conditions", []) if c["type"] != "Reconciling"]
    changed["conditions"] = others + _with_transitions([working], document.get("conditions", []), timestamp(now))
    return changed


def set_retrying(document: dict[str, Any], deployment: str, retry: fetching.Retry, now: float) -> dict[str, Any]:
    """A copy of `document` saying that the download of `deployment` failed and is retried: "fetching v2:
    retrying: attempt 2 of 5, next at 10:31:02 UTC (cannot download ...: Connection refused)"."""
    at = timestamp(now + retry.delay)
    assert at is not None
    text = (f"fetching {deployment}: retrying: attempt {retry.failed + 1} of {retry.attempts}, next at "
            f"{at[11:19]} UTC ({retry.error})")
    changed = set_reconciling(document, text, now, deployment, "Retrying")
    changed["nextAttemptAt"] = at
    changed["retrying"] = {"deployment": deployment, "failedAttempt": retry.failed, "attempts": retry.attempts,
                           "nextAttemptAt": at, "error": retry.error}
    return changed


def retry_recorder(last: Callable[[str], dict[str, Any] | None], publish: Callable[[str, dict[str, Any]], object],
                   clock: Callable[[], float]) -> Callable[[str, str, fetching.Retry], None]:
    """The engine's `on_retry` for whoever holds the application's lock (a command, the daemon): the status says
    that the download is retried, and when. `last` gives the status as it stands (None: leave it be);
    `publish` writes the changed one."""

    def record(name: str, deployment: str, retry: fetching.Retry) -> None:
        document = last(name)
        if document is not None:
            publish(name, set_retrying(document, deployment, retry, clock()))

    return record


def build_invalid(name: str, error: str, previous: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """Status for an application whose manifest is invalid: last good state, plus the error."""
    document = dict(previous or {"name": name, "deployments": [], "conditions": []})
    stamp = timestamp(now)
    others = [c for c in document.get("conditions", []) if c["type"] not in ("Ready", "Stalled")]
    conditions = [
        _condition("Ready", False, "InvalidManifest", error),
        _condition("Stalled", True, "InvalidManifest", error),
        *others,
    ]
    document.update(
        conditions=_with_transitions(conditions, document.get("conditions", []), stamp),
        lastError=error,
        updatedAt=stamp,
    )
    return document


def set_rollout(document: dict[str, Any], rollout: dict[str, Any] | None) -> None:
    """Record this node's rollout state (controller/fleet/rollout_state.py); no `rollout` field without one."""
    if rollout is None:
        document.pop("rollout", None)
    else:
        document["rollout"] = rollout


def write(state_dir: str, name: str, document: dict[str, Any], *, durable: bool = True) -> bool:
    """Write the status of `name` atomically, unless its file is of a newer format (left as it is: False);
    `durable=False` leaves the flush to the caller (status_store.Store.sync)."""
    file = status_path(state_dir, name)
    if (why := formats.refusal(file)) is not None:
        log.error("%s: tether leaves its status document as it is: %s.", name, why)
        return False
    fsutil.makedirs(os.path.dirname(file))
    fsutil.atomic_write_json(file, formats.stamped(document), mode=MODE, durable=durable)
    formats.UNDERSTOOD.understood(file)
    return True
