"""One reconcile pass for one application: observe, plan, apply, record.

Every step that changes the disk is named and reported to `checkpoint`
before the next one starts, so a test can kill the process at each of them.
The order makes a crash at any point safe: a deployment is recorded as
incomplete before its directory exists and marked complete only after its
content is durable; `current` changes with one rename(2); a switch whose
afterActivate hooks have not succeeded, or whose health check has not passed
yet (engine/health.py), is recorded as pending and finished by the next pass.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets as token
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from controller import errors, formats, fsutil
from controller.artifacts import archives, extracting, fetching
from controller.artifacts import cache as artifact_cache
from controller.engine import activating, fetch_attempt, health, hook_processes, hooks, planning
from controller.manifests import model, overrides, secrets
from controller.tree import digests, drift, locking, owners, path_safety, persistent_data, records

log = logging.getLogger(__name__)
STATUS_DIR = "status"
PersistentData = Callable[..., list[str]]  # (app, deployment path, owner, checkpoint=...) -> linked leaves


def status_path(state_dir: str, name: str) -> str:
    """Where the status document of `name` lives (controller/engine/status.py writes it)."""
    return os.path.join(state_dir, STATUS_DIR, name + ".json")


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    plan: planning.Plan
    observed: records.Observed
    error: str | None = None
    permanent: bool = False
    hook_runs: tuple[hooks.HookRun, ...] = ()
    health: health.Report | None = None  # the verdict of a health check this pass reached
    probes: tuple[str, ...] = ()  # outcomes of the health check probes this pass ran
    unexpected: bool = False  # the error is not one tether raises on purpose (a bug; the log has its traceback)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass
class Engine:
    state_dir: str
    fetcher: fetching.Fetcher = dataclasses.field(default_factory=fetching.Fetcher)
    hooks: hooks.Runner = dataclasses.field(default_factory=hooks.Runner)
    prober: health.Prober = dataclasses.field(default_factory=health.Prober)
    persistent_data: PersistentData = persistent_data.apply
    checkpoint: Callable[[str], None] = lambda step: None
    on_fetch: Callable[[str, int, float], None] = lambda name, size, seconds: None
    on_fetch_failure: Callable[[str, str], None] = lambda name, reason: None
    on_retry: Callable[[str, str, fetching.Retry], None] = lambda name, deployment, retry: None
    on_progress: Callable[[str, str, archives.Budget], None] | None = None  # name, deployment, what is counted
    clock: Callable[[], float] = time.time
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    # What `_tidy` last kept for each application (name, path) in this process: a pass that changed nothing
    # and finds the same deployments has nothing new to tidy (P4: a no-op pass lists no directories).
    tidied: dict[tuple[str, str], frozenset[str]] = dataclasses.field(default_factory=dict)

    def plan(self, app: model.Application, observed: records.Observed | None = None) -> planning.Plan:
        return planning.plan(app.name, app.deployment, records.observe(app.path) if observed is None else observed,
                             keep=app.keep, suspended=app.suspend, generation=app.generation,
                             refused=self.refused(app.name))

    def refuse_newer(self, app: model.Application, observed: records.Observed | None = None) -> None:
        """PermanentError when a file of the application is of a newer format: a command must not act on it.
        `observed`: the tree as the caller read it (default: read now). A command that holds the lock gets this
        check from `holding`; one that does not wait for the lock (it records an override) calls it itself."""
        tree = records.observe(app.path) if observed is None else observed
        if (why := self.refused(app.name) or tree.refused) is not None:
            raise errors.PermanentError(f"{app.name}: tether leaves this application alone: {why}")

    def refused(self, name: str) -> str | None:
        """Why the application's files in the state dir must be left alone (a newer format), if they must."""
        return (overrides.read(self.state_dir, name).refused
                or formats.refusal(status_path(self.state_dir, name)))

    @contextlib.contextmanager
    def holding(self, app: model.Application, locked: bool = False, *, check: Callable[[str], None] | None = None,
                refuse_newer: bool = False) -> Iterator[records.Observed]:
        """Hold the lock (unless the caller does), check the path (`check`: path_safety.verify or .prepare) and
        read the tree once: the start of a pass or of a command. With `refuse_newer` (a command that changes the
        application), PermanentError when a file of it is of a newer format; a pass records that in its plan."""
        with contextlib.nullcontext() if locked else locking.application_lock(self.state_dir, app.name):
            if check is not None:
                check(app.path)
            observed = records.observe(app.path)
            if refuse_newer:
                self.refuse_newer(app, observed)
            yield observed

    def reconcile(self, app: model.Application, kind: model.Kind | None = None,
                  headers: Mapping[str, str] | None = None, cancel: threading.Event | None = None,
                  locked: bool = False, observed: records.Observed | None = None,
                  plan: planning.Plan | None = None) -> Result:
        """Bring the application's tree to its desired state, holding its lock (unless the caller does).

        `headers` are sent with this pass's downloads only (e.g. a CI job's token);
        once `cancel` is set, failed downloads are not retried (the desired state changed); `observed` comes from
        the caller's `holding`, and `plan` the caller's plan of that snapshot. Each step returns the snapshot of the
        tree it leaves.
        """
        with self.holding(app, locked) if observed is None else contextlib.nullcontext(observed) as seen:
            plan = self.plan(app, seen) if plan is None or observed is None else plan
            work = activating.Pass(app, kind, dict(headers or {}), cancel)
            error, permanent, unexpected = None, False, False
            if plan.refused is not None:  # written by a newer tether: no step, no hook check, no prune
                log.error("%s: tether leaves this application alone: %s.", app.name, plan.refused)
                return Result(app.name, plan, seen, plan.refused, True)
            try:
                if not plan.suspended:  # nothing below path is opened for writing before it is verified
                    path_safety.verify(app.path)
                    if hook_processes.stop_survivor(app.name, app.path):  # a hook left by a tether that died
                        seen = records.observe(app.path)
                        plan = self.plan(app, seen)
                if plan.steps:
                    path_safety.prepare(app.path)  # before anything below path changes
                    seen = seen if seen.exists else records.observe(app.path)  # prepare made the path
                for step in plan.steps:
                    seen = self._apply(step, work, seen)
                if not plan.suspended:
                    seen = self._prune(app, seen, changed=bool(plan.steps or work.runs or work.probes))
            except errors.TetherError as exc:
                log.error("Reconciling %s failed: %s", app.name, exc)
                error, permanent = str(exc), isinstance(exc, errors.PermanentError)
            except OSError as exc:  # the filesystem said no (a full disk, a planted file): retried, one line
                log.error("Reconciling %s failed: %s; the next pass tries again.", app.name, exc)
                error = str(exc)
            except Exception as exc:  # a bug: one application's failure must not stop the others
                log.exception("Reconciling %s failed unexpectedly; the next pass tries again.", app.name)
                error, unexpected = errors.unexpected(exc), True
            seen = seen if error is None else records.observe(app.path)  # a failed step left what it left
            return Result(app.name, plan, seen, error, permanent, tuple(work.runs), work.health,
                          tuple(p.outcome for p in work.probes), unexpected)

    def _apply(self, step: planning.Step, work: activating.Pass, observed: records.Observed) -> records.Observed:
        log.info("%s: %s %s (%s).", work.app.name, step.action, step.deployment or "", step.reason)
        if step.action == planning.CLEAN:
            return self._clean(observed, step.deployment)
        if step.action == planning.BLOCKED:
            raise errors.PermanentError(f"{work.app.name}: cannot deploy {step.deployment}: {step.reason}")
        if step.deployment is not None and step.action == planning.DEPLOY:
            return self._deploy(work, step.deployment, observed)
        if step.deployment is not None and step.action == planning.ACTIVATE:
            return activating.activate(self, work, step.deployment, observed)
        if step.deployment is not None and step.action == planning.FINISH:
            return activating.after_activate(self, work, step.deployment, observed.previous, observed)
        if step.deployment is not None and step.action == planning.ROLLBACK:
            return activating.finish_rollback(self, work, step.deployment, observed)
        return observed

    def _clean(self, observed: records.Observed, deployment: str | None) -> records.Observed:
        if deployment is None:
            for leftover in observed.leftovers:
                fsutil.remove_tree(leftover)
        else:
            fsutil.remove_tree(os.path.join(observed.path, deployment))
            records.remove_record(observed.path, deployment)
        self.checkpoint("cleaned")
        return dataclasses.replace(observed, leftovers=()) if deployment is None else observed.recorded(deployment, None)

    def _deploy(self, work: activating.Pass, deployment: str, observed: records.Observed) -> records.Observed:
        app = work.app
        if app.source is None:
            raise errors.PermanentError(f"{app.name}: spec.source is missing; tether cannot fetch {deployment}")
        owner = owners.resolve(app)
        target = os.path.join(app.path, deployment)
        previous = observed.current
        git = app.source.git
        url = model.expand_url(app.source.url, app, deployment) if git is None else ""
        if git is None:
            shown = fetching.redact_url(url)
        else:
            from controller.artifacts import git_runner  # the git modules only for a git source

            shown = f"{git_runner.shown_url(git.url)} {model.expand_url(git.ref, app, deployment)}"
        headers = {**secrets.resolve(app.source.headers, self.environ), **work.headers} if git is None else {}
        records.write_record(app.path, deployment, records.INCOMPLETE, source=shown)
        self.checkpoint("recorded")
        try:
            os.mkdir(target, 0o755)
        except FileExistsError:
            raise errors.PermanentError(f"{target} exists but is not a complete deployment by tether's records "
                                        f"(a damaged record?); move it away so tether can deploy {deployment}") from None
        if owner is not None:
            os.chown(target, *owner)
        made = os.lstat(target)  # the directory the artifact goes into, whatever a hook does meanwhile
        self.checkpoint("created")
        hooks_before = len(work.runs)
        cache = artifact_cache.Entry(self.state_dir, app.name, deployment)
        with fsutil.Flusher(target) as flusher, contextlib.closing(cache):  # the tree goes out while it is made
            try:
                work.run_hooks(self.hooks, "beforeDeploy", deployment, previous)
                started = time.monotonic()
                revision: list[str] = []  # the commit a git source's ref resolved to
                extracted = extracting.Made()  # the tree with its digests, for record_digests

                def attempt() -> tuple[str, int]:
                    if git is None:
                        return fetch_attempt.fetch(self.fetcher, cache, self.checkpoint, self.on_progress,
                                                   app, deployment, owner, url, headers, made, work.cancel, extracted,
                                                   flusher.kick)
                    digest, size, commit = fetch_attempt.fetch_git(self.state_dir, self.environ, self.checkpoint,
                                                                   app, deployment, owner, work.headers, made,
                                                                   work.cancel, extracted, flusher.kick)
                    revision[:] = [commit]
                    return digest, size

                try:
                    digest, size = self.fetcher.retrying(attempt, work.cancel,
                                                         lambda retry: self.on_retry(app.name, deployment, retry))
                except Exception as exc:  # counted by class, tether's own or not (a bug: RuntimeError, KeyError)
                    self.on_fetch_failure(app.name, type(exc).__name__)
                    raise
                self.on_fetch(app.name, size, time.monotonic() - started)
                flusher.kick()
                self.checkpoint("extracted")
                links = self.persistent_data(app, target, owner, checkpoint=self.checkpoint)
                self.checkpoint("linked-data")
            except BaseException:
                fsutil.remove_tree(target)
                records.remove_record(app.path, deployment)
                raise
            try:
                work.run_hooks(self.hooks, "afterDeploy", deployment, previous)
            except hooks.HookFailed as exc:
                records.write_record(app.path, deployment, records.INCOMPLETE, error=str(exc))
                raise
            drift.record_digests(app.path, deployment, links, extracted, hooks_ran=len(work.runs) > hooks_before,
                                 synced_next=True)
            fsutil.sync_filesystem(target)  # what the flusher's last flush left, and the digest list
            cache.store()  # after that sync, which then had no copy of the artifact to write out
        observed = work.fresh(observed)
        record = records.write_record(app.path, deployment, records.COMPLETE, completedAt=self.clock(), sha256=digest,
                                      links=links, sequence=observed.next_sequence(),
                                      revision=revision[0] if revision else None)
        log.info("%s: deployment %s is complete.", app.name, deployment)
        self.checkpoint("completed")
        return observed.recorded(deployment, record)

    def relink(self, app: model.Application, deployment: str) -> list[str]:
        """Restore the persistent-data links of a deployment (link drift), holding the lock."""
        with self.holding(app, check=path_safety.prepare, refuse_newer=True):
            return drift.relink(app, deployment, owners.resolve(app))

    def prune(self, app: model.Application, keep: int) -> None:
        """Apply retention now with `keep` (tether prune)."""
        with self.holding(app, check=path_safety.verify, refuse_newer=True) as observed:
            self._prune(dataclasses.replace(app, keep=keep), observed)

    def remove(self, app: model.Application, deployment: str) -> None:
        """Remove one deployment (tether remove); never the active or the desired one."""
        with self.holding(app, check=path_safety.verify, refuse_newer=True) as observed:
            if deployment in (observed.current, app.deployment):
                raise errors.PermanentError(f"{deployment} is the active or desired deployment of {app.name}; "
                                            "activate another one first")
            if deployment not in observed.deployments:
                raise errors.PermanentError(f"{app.name} has no deployment {deployment} that tether made")
            self._tidy(app, self._clean(observed, deployment))

    def _prune(self, app: model.Application, observed: records.Observed, changed: bool = True) -> records.Observed:
        if not observed.exists:
            return observed
        candidates = planning.prune_candidates(observed, app.deployment, app.keep, active=observed.current)
        if not candidates and not changed and self.tidied.get((app.name, app.path)) == frozenset(observed.deployments):
            return observed
        if candidates:
            path_safety.prepare(app.path)
        for name in candidates:
            log.info("%s: pruning deployment %s.", app.name, name)
            doomed = os.path.join(records.staging_dir(app.path), f"pruned-{name}-{token.token_hex(4)}")
            os.rename(os.path.join(app.path, name), doomed)
            self.checkpoint("pruning")
            records.remove_record(app.path, name)
            fsutil.remove_tree(doomed)
            self.checkpoint("pruned")
            observed = observed.recorded(name, None)
        self._tidy(app, observed)
        return observed

    def _tidy(self, app: model.Application, observed: records.Observed) -> None:
        """Drop cached artifacts, digests and (beyond a bound) hook logs of deployments that are gone."""
        kept = set(observed.deployments)
        artifact_cache.prune(self.state_dir, app.name, keep=kept)
        digests.prune(app.path, keep=kept)
        hooks.prune_logs(app.path, keep=kept)
        self.tidied[(app.name, app.path)] = frozenset(kept)

    def retry(self, app: model.Application) -> list[str]:
        """Forget failure marks, so the next pass tries those deployments again."""
        cleared = []
        with self.holding(app, check=path_safety.verify, refuse_newer=True) as observed:
            for deployment in observed.deployments.values():
                if deployment.state != records.FAILED:
                    continue
                if deployment.has_dir and deployment.completed_at is not None:
                    records.write_record(app.path, deployment.name, records.COMPLETE, error=None,
                                         failedGeneration=None)
                else:
                    self._clean(observed, deployment.name)
                cleared.append(deployment.name)
        return cleared

