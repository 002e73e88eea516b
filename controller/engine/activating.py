"""Activating a complete deployment: beforeActivate, the switch of `current`, afterActivate and the health
check, and the rollback to the previous deployment when they fail; and what one reconcile pass works on
(`Pass`), which these steps fill with hook runs, probes and the health verdict.

The switch is recorded as pending before `current` changes, so a pass that dies before afterActivate and
the health check have succeeded is finished by the next one (controller/engine/reconciling.py). A rollback
marks the failed deployment, with where it goes back to, before `current` moves back: the next pass finishes
a rollback that was killed (`finish_rollback`) and never activates the failed deployment again.
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
    to, restore = rollback_target(observed, deployment)
    pending = records.write_record(app.path, deployment, records.COMPLETE, activationPending=True,
                                   probingSince=None, healthyAt=None, healthMessage=None,
                                   rollback=None if to is None else records.rollback_field(to, restore))
    records.write_activation(app.path, deployment, to)
    engine.checkpoint("recorded-previous")
    records.switch_current(app.path, deployment, engine.checkpoint)
    log.info("%s: current now points to %s.", app.name, deployment)
    engine.checkpoint("switched")
    switched = observed.activated(deployment, to).recorded(deployment, pending)
    return after_activate(engine, work, deployment, previous, switched)


def rollback_target(observed: records.Observed, deployment: str) -> tuple[str | None, str | None]:
    """Where a failed activation of `deployment` goes back to, and the `previous` recorded there: the active
    deployment and its previous; when the active one has not finished its own activation (it never proved
    itself), where that one would have gone back to."""
    active = observed.deployments.get(observed.current or "")
    if active is not None and active.activation_pending and active.name != deployment:
        to, restore = active.rollback or (observed.previous, None)  # a record of an older version: no restore
    elif observed.current != deployment:
        to, restore = observed.current, observed.previous
    else:
        to, restore = observed.previous, None
    to = None if to == deployment else to
    return to, None if restore in (to, deployment) else restore


def after_activate(engine: Engine, work: Pass, deployment: str, previous: str | None,
                   observed: records.Observed) -> records.Observed:
    """Run afterActivate (unless it succeeded before and probing started), then the health check; on failure
    roll back where the deployment's record says (older records: to `previous`) when the manifest asks for it.
    `previous`: what the hooks are told was active before."""
    app = work.app
    observed = _settle_superseded(app, deployment, observed)
    record = observed.deployments.get(deployment)
    since = record.probing_since if record is not None and record.activation_pending else None
    try:
        if since is None:
            work.run_hooks(engine.hooks, "afterActivate", deployment, previous)
        healthy = _prove(engine, work, deployment, previous, since)
    except (hooks.HookFailed, health.Unhealthy) as exc:
        engine.checkpoint("activation-failed")
        unhealthy = isinstance(exc, health.Unhealthy)
        if unhealthy:
            work.health = health.Report(deployment, False, str(exc))
        verdict = {"probingSince": None, "healthyAt": None, "healthMessage": str(exc) if unhealthy else None}
        to, restore = record.rollback if record is not None and record.rollback else (previous, None)
        back = records.observe(app.path).deployments.get(to or "")
        if not app.rollback_on_failure or back is None or back.state != records.COMPLETE or not back.has_dir:
            records.write_record(app.path, deployment, records.COMPLETE, activationPending=None, error=str(exc),
                                 rollback=None, **verdict)
            raise
        assert to is not None
        # The failure is durable before `current` moves (the record still says complete: its files are, and
        # `current` only ever points to a complete deployment): a kill from here on finishes this rollback
        # (finish_rollback) and never activates the failed deployment again. It says failed once back.
        records.write_record(app.path, deployment, records.COMPLETE, activationPending=None, error=str(exc),
                             failedGeneration=app.generation, rollback=records.rollback_field(to, restore), **verdict)
        engine.checkpoint("marked-failed")
        try:
            _roll_back(engine, work, deployment, to, restore)
        except hooks.HookFailed as again:
            raise hooks.HookFailed(again.run) from exc
        raise errors.TemporaryError(f"{exc}; rolled back to {to}; {deployment} is marked failed until "
                                    "the desired state changes or `tether retry`") from exc
    done = records.write_record(app.path, deployment, records.COMPLETE, activationPending=None, error=None,
                                rollback=None, **healthy)
    return work.fresh(observed).recorded(deployment, done)


def finish_rollback(engine: Engine, work: Pass, deployment: str, observed: records.Observed) -> records.Observed:
    """Finish the rollback a killed pass began after `deployment` failed; its record says where to."""
    app = work.app
    record = observed.deployments.get(deployment)
    if record is None or record.rollback is None:
        return observed
    to, restore = record.rollback
    back = observed.deployments.get(to)
    if back is None or back.state != records.COMPLETE or not back.has_dir:
        records.write_record(app.path, deployment, records.FAILED, rollback=None)
        raise errors.PermanentError(f"{app.name}: cannot finish rolling back from the failed {deployment} to {to}: "
                                    f"{to} is not a complete deployment; `tether activate` one that is")
    _roll_back(engine, work, deployment, to, restore)
    return records.observe(app.path)


def _roll_back(engine: Engine, work: Pass, deployment: str, to: str, restore: str | None) -> None:
    """Point `current` back at `to`, record `restore` as its previous, run afterActivate of `to`, then drop the
    failed deployment's rollback mark; each step may run again after a kill."""
    app = work.app
    records.switch_current(app.path, to, lambda step: engine.checkpoint("back-" + step))
    engine.checkpoint("switched-back")
    records.write_activation(app.path, to, restore if restore not in (to, deployment) else None)
    log.warning("%s: rolled back from %s to %s.", app.name, deployment, to)
    engine.checkpoint("rolled-back")
    try:
        work.run_hooks(engine.hooks, "afterActivate", to, deployment)
    finally:
        records.write_record(app.path, deployment, records.FAILED, rollback=None)


def _settle_superseded(app: model.Application, deployment: str, observed: records.Observed) -> records.Observed:
    """Settle the records of deployments that were switched to but replaced before they finished activating:
    no longer pending (nothing finishes them), and not a rollback target (they never proved themselves)."""
    for stale in list(observed.deployments.values()):
        if (stale.activation_pending and stale.has_dir and stale.state == records.COMPLETE
                and stale.name not in (deployment, observed.current)):
            message = f"replaced by {deployment} before its activation finished"
            settled = records.write_record(app.path, stale.name, records.COMPLETE, activationPending=None,
                                           probingSince=None, rollback=None, healthMessage=message)
            log.info("%s: %s was %s.", app.name, stale.name, message)
            observed = observed.recorded(stale.name, settled)
    return observed


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
