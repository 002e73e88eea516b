"""What a reconcile pass would do: a plan computed from plain data, without disk access."""

from __future__ import annotations

import dataclasses

from controller.tree import records

CLEAN, DEPLOY, ACTIVATE, FINISH, PRUNE, BLOCKED = "clean", "deploy", "activate", "finish-activation", "prune", "blocked"
ROLLBACK = "finish-rollback"  # a rollback a killed pass began: before anything else touches `current`


@dataclasses.dataclass(frozen=True)
class Step:
    action: str
    deployment: str | None
    reason: str


@dataclasses.dataclass(frozen=True)
class Plan:
    application: str
    desired: str | None
    steps: tuple[Step, ...]
    suspended: bool = False
    refused: str | None = None  # a file of a newer format (controller/formats.py): nothing is done

    @property
    def converged(self) -> bool:
        return not self.suspended and not any(s.action in (DEPLOY, ACTIVATE, FINISH, ROLLBACK, BLOCKED)
                                              for s in self.steps)


def plan(name: str, desired: str | None, observed: records.Observed, *, keep: int,
         suspended: bool = False, generation: str | None = None, refused: str | None = None) -> Plan:
    """The steps that bring `observed` to `desired`, in order.

    A deployment that failed under this manifest `generation` is not tried again;
    under another generation (the desired state changed) it is redeployed afresh. When a file of the
    application is of a newer format (`refused`, or the tree's own), the plan is to do nothing, not to guess.
    """
    refused = refused or observed.refused
    if refused is not None:
        return Plan(name, desired, (Step(BLOCKED, None, refused),), suspended=suspended, refused=refused)
    if suspended:
        return Plan(name, desired, (), suspended=True)
    steps: list[Step] = []
    if observed.leftovers:
        steps.append(Step(CLEAN, None, "remove staging and temporary links left by an interrupted pass"))
    for deployment in observed.deployments.values():
        if deployment.rollback is not None and rolling_back(deployment):
            steps.append(Step(ROLLBACK, deployment.name, f"it failed; the rollback to {deployment.rollback[0]} was "
                              "interrupted"))
    for deployment in observed.deployments.values():
        if deployment.name == observed.current:
            continue
        if deployment.state == records.INCOMPLETE:
            steps.append(Step(CLEAN, deployment.name, "remove an incomplete deployment"))
        elif deployment.state == records.COMPLETE and not deployment.has_dir and deployment.name != desired:
            steps.append(Step(CLEAN, deployment.name, "forget a deployment whose directory is gone"))
    if desired is not None:
        existing = observed.deployments.get(desired)
        if desired in observed.foreign:
            steps.append(Step(BLOCKED, desired, f"{observed.path}/{desired} exists but tether did not make it; move it away"))
        elif existing is not None and failed(existing) and existing.failed_generation == generation:
            steps.append(Step(BLOCKED, desired, f"this deployment failed ({existing.error}); `tether retry` tries again"))
        else:
            if existing is not None and existing.state == records.FAILED:
                steps.append(Step(CLEAN, desired, "the desired state changed since this deployment failed"))
            if existing is None or existing.state != records.COMPLETE or not existing.has_dir:
                steps.append(Step(DEPLOY, desired, "the desired deployment is not complete"))
            if observed.current != desired:
                was = observed.current or "nothing"
                steps.append(Step(ACTIVATE, desired, f"current points to {was}"))
            elif existing is not None and existing.activation_pending and existing.probing_since is not None:
                steps.append(Step(FINISH, desired, "its health check has not passed yet; probing resumes"))
            elif existing is not None and existing.activation_pending:
                steps.append(Step(FINISH, desired, "its afterActivate hooks have not succeeded yet"))
    removals = prune_candidates(observed, desired, keep)
    if removals:
        steps.append(Step(PRUNE, None, "remove " + ", ".join(removals)))
    return Plan(name, desired, tuple(steps))


def rolling_back(deployment: records.Deployment) -> bool:
    """A deployment whose activation failed and whose rollback a killed pass left unfinished."""
    return deployment.rollback is not None and not deployment.activation_pending


def failed(deployment: records.Deployment) -> bool:
    """Marked failed, or about to be (its rollback unfinished): not activated again."""
    return deployment.state == records.FAILED or rolling_back(deployment)


def prune_candidates(observed: records.Observed, desired: str | None, keep: int,
                     active: str | None = None) -> list[str]:
    """Deployments that retention removes: never the active, previous or desired one.

    Failed deployments go first; incomplete ones are cleaned separately. Of the
    complete deployments, the `keep` newest stay (the active and previous ones count).
    """
    active = active if active is not None else (desired or observed.current)
    protected = {n for n in (active, observed.current, observed.previous, desired) if n}
    failed = [d.name for d in observed.deployments.values()
              if d.state == records.FAILED and d.has_dir and d.name not in protected]
    complete = [d.name for d in observed.complete()]
    kept = [n for n in complete if n in protected]
    if desired is not None and desired not in complete:
        kept.append(desired)  # about to become the newest complete deployment
    for name in complete:
        if len(kept) >= keep:
            break
        if name not in kept:
            kept.append(name)
    return sorted(failed) + [n for n in complete if n not in kept]
