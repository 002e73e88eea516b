"""Activating a complete deployment: beforeActivate, the switch of `current`, afterActivate and the health
check, and the rollback to the previous deployment when they fail; and what one reconcile pass works on
(`Pass`), which these steps fill with hook runs, probes and the health verdict.

The switch is recorded as pending before `current` changes, so a pass that dies before afterActivate and
the health check have succeeded is finished by the next one (controller/engine/reconciling.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from controller import errors
from controller.engine import health, hooks
from controller.manifests import model
from controller.tree import records

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Pass:
    """What one pass works on, and the hook runs it has made so far."""

    app: model.Application
    kind: model.Kind | None
    headers: dict[str, str]
    cancel: threading.Event | None = None
    runs: list[hooks.HookRun] = dataclasses.field(default_factory=list)
    probes: list[health.Probe] = dataclasses.field(default_factory=list)
    health: health.Report | None = None
    seen: int = 0  # how many hooks and probes had run when the pass last read the tree

    def fresh(self, observed: records.Observed) -> records.Observed:
        """`observed`, or the tree read again if a hook or probe ran since it was read: they can change the tree."""
        ran = len(self.runs) + len(self.probes)
        stale, self.seen = self.seen != ran, ran
        return records.observe(self.app.path) if stale else observed

    def run_hooks(self, runner: hooks.Runner, phase: str, deployment: str, previous: str | None) -> None:
        """Run the hooks of `phase`, adding their runs to the pass's."""
        runner.run_phase(phase, self.app, self.kind, deployment, previous, self.runs.append)


class Engine(Protocol):
    """What the activation steps use of controller/engine/reconciling.py's Engine, which passes itself."""

    @property
    def hooks(self) -> hooks.Runner: ...
    @property
    def prober(self) -> health.Prober: ...
    @property
    def checkpoint(self) -> Callable[[str], None]: ...
    @property
    def clock(self) -> Callable[[], float]: ...


def activate(engine: Engine, work: Pass, deployment: str, observed: records.Observed) -> records.Observed:
    app = work.app
    record = observed.deployments.get(deployment)
    if record is None or record.state != records.COMPLETE or not record.has_dir:
        raise errors.PermanentError(f"{app.name}: {deployment} is not a complete deployment; it cannot be activated")
    current = os.path.join(app.path, "current")
    if os.path.lexists(current) and not os.path.islink(current):
        raise errors.PermanentError(f"{current} is not a symlink; move it away so tether can manage it")
    previous = observed.current
    work.run_hooks(engine.hooks, "beforeActivate", deployment, previous)
    pending = records.write_record(app.path, deployment, records.COMPLETE, activationPending=True,
                                   probingSince=None, healthyAt=None, healthMessage=None)
    kept = previous if previous != deployment else observed.previous
    records.write_activation(app.path, deployment, kept)
    engine.checkpoint("recorded-previous")
    records.switch_current(app.path, deployment, engine.checkpoint)
    log.info("%s: current now points to %s.", app.name, deployment)
    engine.checkpoint("switched")
    switched = observed.activated(deployment, kept).recorded(deployment, pending)
    return after_activate(engine, work, deployment, previous, switched, observed.previous)


def after_activate(engine: Engine, work: Pass, deployment: str, previous: str | None, observed: records.Observed,
                   restore_previous: str | None = None) -> records.Observed:
    """Run afterActivate (unless it succeeded before and probing started), then the health check; on failure
    roll back to `previous` when the manifest asks for it."""
    app = work.app
    record = observed.deployments.get(deployment)
    since = record.probing_since if record is not None and record.activation_pending else None
    try:
        if since is None:
            work.run_hooks(engine.hooks, "afterActivate", deployment, previous)
        healthy = _prove(engine, work, deployment, previous, since)
    except (hooks.HookFailed, health.Unhealthy) as exc:
        unhealthy = isinstance(exc, health.Unhealthy)
        if unhealthy:
            work.health = health.Report(deployment, False, str(exc))
        verdict = {"probingSince": None, "healthyAt": None, "healthMessage": str(exc) if unhealthy else None}
        back = records.observe(app.path).deployments.get(previous or "")
        if not app.rollback_on_failure or back is None or back.state != records.COMPLETE or not back.has_dir:
            records.write_record(app.path, deployment, records.COMPLETE, activationPending=None, error=str(exc),
                                 **verdict)
            raise
        assert previous is not None
        records.switch_current(app.path, previous, engine.checkpoint)  # first: a kill now retries, never strands
        records.write_activation(app.path, previous, restore_previous)
        records.write_record(app.path, deployment, records.FAILED, activationPending=None, error=str(exc),
                             failedGeneration=app.generation, **verdict)
        log.warning("%s: rolled back to %s because %s", app.name, previous, exc)
        engine.checkpoint("rolled-back")
        try:
            work.run_hooks(engine.hooks, "afterActivate", previous, deployment)
        except hooks.HookFailed as again:
            raise hooks.HookFailed(again.run) from exc
        raise errors.TemporaryError(f"{exc}; rolled back to {previous}; {deployment} is marked failed until "
                                    "the desired state changes or `tether retry`") from exc
    done = records.write_record(app.path, deployment, records.COMPLETE, activationPending=None, error=None,
                                **healthy)
    return work.fresh(observed).recorded(deployment, done)


def _prove(engine: Engine, work: Pass, deployment: str, previous: str | None, since: float | None) -> dict[str, Any]:
    """Probe the health check (none: nothing to prove) from `since`, when probing started (None: now);
    the record fields of a deployment that proved healthy."""
    if work.app.health_check is None:
        return {}
    resumed = since is not None
    if since is None:
        since = engine.clock()
        records.write_record(work.app.path, deployment, records.COMPLETE, probingSince=since)
    engine.checkpoint("probing")

    def probed(probe: health.Probe) -> None:
        work.probes.append(probe)
        engine.checkpoint("probed")

    work.health = engine.prober.prove(work.app, engine.hooks, deployment, previous, since, probed, work.cancel,
                                      resumed=resumed)
    return {"probingSince": None, "healthyAt": engine.clock(), "healthMessage": work.health.message}
