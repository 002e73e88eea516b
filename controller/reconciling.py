"""One reconcile pass for one application: observe, plan, apply, record.

Every step that changes the disk is named and reported to `checkpoint`
before the next one starts, so a test can kill the process at each of them.
The order makes a crash at any point safe: a deployment is recorded as
incomplete before its directory exists and marked complete only after its
content is durable; `current` changes with one rename(2).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets as token
import tempfile
import time
from collections.abc import Callable, Mapping

from controller import (
    archives,
    artifact_cache,
    errors,
    extracting,
    fetching,
    fsutil,
    locking,
    manifests,
    owners,
    planning,
    records,
    secrets,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Context:
    """What hooks and persistent data need to know about the deployment at hand."""

    app: manifests.Application
    kind: manifests.Kind | None
    deployment: str
    deployment_path: str
    previous: str | None
    owner: owners.Owner


HookRunner = Callable[[str, Context], None]


def no_hooks(phase: str, context: Context) -> None:
    """Extension point: the hooks issue replaces this with a real runner."""


def no_persistent_data(context: Context) -> None:
    """Extension point: the persistent-data issue replaces this with .mtree handling."""


@dataclasses.dataclass(frozen=True)
class Result:
    name: str
    plan: planning.Plan
    observed: records.Observed
    error: str | None = None
    permanent: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass
class Engine:
    state_dir: str
    fetcher: fetching.Fetcher = dataclasses.field(default_factory=fetching.Fetcher)
    hooks: HookRunner = no_hooks
    persistent_data: Callable[[Context], None] = no_persistent_data
    checkpoint: Callable[[str], None] = lambda step: None
    clock: Callable[[], float] = time.time
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))

    def plan(self, app: manifests.Application) -> planning.Plan:
        return planning.plan(app.name, app.deployment, records.observe(app.path), keep=app.keep,
                             suspended=app.suspend)

    def reconcile(self, app: manifests.Application, kind: manifests.Kind | None = None) -> Result:
        """Bring the application's tree to its desired state, holding its lock."""
        with locking.application_lock(self.state_dir, app.name):
            plan = self.plan(app)
            try:
                for step in plan.steps:
                    self._apply(step, app, kind)
                if not plan.suspended:
                    self._prune(app)
            except errors.TetherError as exc:
                log.error("Reconciling %s failed: %s", app.name, exc)
                return Result(app.name, plan, records.observe(app.path), str(exc),
                              isinstance(exc, errors.PermanentError))
            except Exception as exc:
                log.exception("Reconciling %s failed unexpectedly; the next pass tries again.", app.name)
                return Result(app.name, plan, records.observe(app.path), f"{type(exc).__name__}: {exc}")
            return Result(app.name, plan, records.observe(app.path))

    def _apply(self, step: planning.Step, app: manifests.Application, kind: manifests.Kind | None) -> None:
        log.info("%s: %s %s (%s).", app.name, step.action, step.deployment or "", step.reason)
        if step.action == planning.CLEAN:
            self._clean(app, step.deployment)
        elif step.action == planning.DEPLOY:
            assert step.deployment is not None
            self._deploy(app, kind, step.deployment)
        elif step.action == planning.ACTIVATE:
            assert step.deployment is not None
            self._activate(app, kind, step.deployment)
        elif step.action == planning.BLOCKED:
            raise errors.PermanentError(f"{app.name}: cannot deploy {step.deployment}: {step.reason}")

    def _clean(self, app: manifests.Application, deployment: str | None) -> None:
        if deployment is None:
            for leftover in records.observe(app.path).leftovers:
                fsutil.remove_tree(leftover)
        else:
            fsutil.remove_tree(os.path.join(app.path, deployment))
            records.remove_record(app.path, deployment)
        self.checkpoint("cleaned")

    def _context(self, app: manifests.Application, kind: manifests.Kind | None, deployment: str) -> Context:
        return Context(app, kind, deployment, os.path.join(app.path, deployment),
                       records.observe(app.path).current, owners.resolve(app))

    def _deploy(self, app: manifests.Application, kind: manifests.Kind | None, deployment: str) -> None:
        if app.source is None:
            raise errors.PermanentError(f"{app.name}: spec.source is missing; tether cannot fetch {deployment}")
        context = self._context(app, kind, deployment)
        url = manifests.expand_url(app.source.url, app, deployment)
        headers = secrets.resolve(app.source.headers, self.environ)
        fsutil.makedirs(records.staging_dir(app.path))
        records.write_record(app.path, deployment, records.INCOMPLETE, source=fetching.redact_url(url))
        self.checkpoint("recorded")
        os.mkdir(context.deployment_path, 0o755)
        if context.owner is not None:
            os.chown(context.deployment_path, *context.owner)
        self.checkpoint("created")
        try:
            self.hooks("beforeDeploy", context)
            digest = self.fetcher.retrying(lambda: self._fetch(app, context, url, headers))
        except BaseException:
            fsutil.remove_tree(context.deployment_path)
            records.remove_record(app.path, deployment)
            raise
        self.checkpoint("extracted")
        self.persistent_data(context)
        self.hooks("afterDeploy", context)
        fsutil.sync_filesystem(context.deployment_path)
        records.write_record(app.path, deployment, records.COMPLETE, completedAt=self.clock(), sha256=digest)
        log.info("%s: deployment %s is complete.", app.name, deployment)
        self.checkpoint("completed")

    def _fetch(self, app: manifests.Application, context: Context, url: str, headers: Mapping[str, str]) -> str:
        """One attempt: download and extract into staging, verify, move into place."""
        assert app.source is not None
        source = app.source
        stage = tempfile.mkdtemp(prefix=context.deployment + "-", dir=records.staging_dir(app.path))
        cache = artifact_cache.Entry(self.state_dir, app.name, context.deployment)
        try:
            with cache.writer() as sink, self.fetcher.open(url, headers, max_bytes=source.limits.max_bytes,
                                                           sink=sink) as download:
                budget = archives.Budget(source.limits, lambda: download.received)
                root = extracting.extract(download, stage, fmt=source.format, strip=source.strip_components,
                                          budget=budget, owner=context.owner, spool_dir=records.staging_dir(app.path),
                                          checkpoint=self.checkpoint)
                download.drain()
                digest = download.hexdigest()
                if source.sha256 is not None and digest != source.sha256:
                    raise errors.ChecksumMismatch(
                        f"the artifact from {fetching.redact_url(url)} has sha256 {digest}, not {source.sha256} as "
                        "source.sha256 says; check the artifact and the manifest"
                    )
                cache.keep()
            _move_entries(root, context.deployment_path)
        finally:
            fsutil.remove_tree(stage)
        return digest

    def _activate(self, app: manifests.Application, kind: manifests.Kind | None, deployment: str) -> None:
        observed = records.observe(app.path)
        record = observed.deployments.get(deployment)
        if record is None or record.state != records.COMPLETE or not record.has_dir:
            raise errors.PermanentError(f"{app.name}: {deployment} is not a complete deployment; it cannot be activated")
        current = os.path.join(app.path, "current")
        if os.path.lexists(current) and not os.path.islink(current):
            raise errors.PermanentError(f"{current} is not a symlink; move it away so tether can manage it")
        context = self._context(app, kind, deployment)
        self.hooks("beforeActivate", context)
        if observed.current not in (None, deployment):
            fsutil.atomic_write_json(os.path.join(records.meta_dir(app.path), "activation.json"),
                                     {"previous": observed.current})
        self.checkpoint("recorded-previous")
        switch_current(app.path, deployment, self.checkpoint)
        log.info("%s: current now points to %s.", app.name, deployment)
        self.checkpoint("switched")
        self.hooks("afterActivate", context)

    def _prune(self, app: manifests.Application) -> None:
        observed = records.observe(app.path)
        if not observed.exists:
            return
        fsutil.makedirs(records.staging_dir(app.path))
        for name in planning.prune_candidates(observed, app.deployment, app.keep, active=observed.current):
            log.info("%s: pruning deployment %s.", app.name, name)
            doomed = os.path.join(records.staging_dir(app.path), f"pruned-{name}-{token.token_hex(4)}")
            os.rename(os.path.join(app.path, name), doomed)
            self.checkpoint("pruning")
            records.remove_record(app.path, name)
            fsutil.remove_tree(doomed)
            self.checkpoint("pruned")
        artifact_cache.prune(self.state_dir, app.name, keep=set(records.observe(app.path).deployments))


def switch_current(path: str, deployment: str, checkpoint: Callable[[str], None] = lambda step: None) -> None:
    """Point `<path>/current` at the deployment with one rename(2), durably."""
    link = os.path.join(path, f".current-{token.token_hex(6)}")
    os.symlink(os.path.join(path, deployment), link)
    checkpoint("linked")
    try:
        os.replace(link, os.path.join(path, "current"))
    except BaseException:
        os.unlink(link)
        raise
    fsutil.fsync_dir(path)


def _move_entries(root: str, target: str) -> None:
    for name in sorted(os.listdir(root)):
        destination = os.path.join(target, name)
        if os.path.lexists(destination):
            raise errors.PermanentError(
                f"{destination} already exists (made by a beforeDeploy hook?) and the artifact ships it too"
            )
        os.rename(os.path.join(root, name), destination)
