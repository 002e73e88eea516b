"""The pass of one application in `tether run`: what the daemon's workers run, and what a rescan concludes
itself when nothing changed.

A pass holds the application's lock for the engine's observe, plan and reconcile; around them it lets the
rollout decide (asking the gate only when this node's wave waits on it), schedules the next pass a rollout
wants, and publishes the status, metrics, back-off and drift the daemon keeps. A pass that finds nothing it
depends on changed since its last no-op pass concludes without the engine (daemon/converged.py). When an
application's manifest is gone, what its passes kept is forgotten. `Passes` holds these methods for
loop.Daemon, which derives from it; the attributes it declares are the daemon's state that loop.Daemon sets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from controller import errors, formats, fsutil
from controller.daemon import converged, drift_watch, metrics, queueing
from controller.engine import reconciling, status, status_store
from controller.fleet import gate, rollout_state
from controller.fleet import node as node_identity
from controller.manifests import model, overrides
from controller.tree import drift, locking, records

log = logging.getLogger(__name__)
# A pass that changed an application's tree is followed by one that reads it back once what it wrote has
# settled (known_files, fingerprint: fsutil.RACY_NS): that pass is remembered (daemon/converged.py), and the
# first resync after a deploy of 1000 applications costs what the next one does, not a full pass of each.
READ_BACK_SECONDS = fsutil.RACY_NS / 1e9 + 0.5


class Settings(Protocol):
    """What a pass reads of loop.Config."""

    @property
    def state_dir(self) -> str: ...
    @property
    def metrics_textfile(self) -> str | None: ...


class Passes:
    """The pass of one application, as methods of loop.Daemon (which sets the attributes below)."""

    config: Settings
    engine: reconciling.Engine
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    queue: queueing.WorkQueue
    backoff: queueing.BackOff
    observations: metrics.Observations
    apps: dict[str, model.Application]
    kinds: dict[str, model.Kind]
    statuses: dict[str, dict[str, Any]]
    store: status_store.Store
    ready: set[str]
    drift: drift_watch.DriftWatch
    converged: converged.Converged
    invalid: dict[str, str]
    running: dict[str, threading.Event]
    node: node_identity.Tracker
    gates: gate.Cache
    wakeups: dict[str, float]
    read_backs: dict[str, tuple[float, Hashable]]
    reading_back: dict[str, Hashable]
    seen: dict[str, tuple[str, overrides.Override]]
    _guard: threading.Lock
    _wanted: threading.Event
    _changed: threading.Event

    def process(self, name: str) -> None:
        """One pass for one application, respecting its back-off. A pass that raises (the engine's failures are
        in its result: here the daemon's own work, or a bug) fails like any other: back-off, status, metrics."""
        with self._guard:
            app = self.apps.get(name)
            kind = self.kinds.get(app.kind) if app is not None and app.kind else None
            asked = self.reading_back.pop(name, None)  # the (generation, override) of a read-back queued
        if app is None:
            return
        started = self.monotonic()
        key: Hashable = (app.generation, None)  # the key a failure is recorded under, if reading overrides fails
        try:
            override = overrides.read(self.config.state_dir, name)
            key = (app.generation, override)
            due = self.backoff.due(name, key)
            if due is not None and due > self.monotonic():
                return  # the main loop queues it again when the back-off ends
            # A read-back that changes the tree again asks for none; a pass of a changed manifest or override,
            # queued with it, is not a read-back.
            self._pass(app, kind, override, key, reading_back=asked == key)
        except Exception as exc:
            self._failed(app, key, exc, self.monotonic() - started)

    def _failed(self, app: model.Application, key: Hashable, exc: Exception, took: float) -> None:
        """A pass of `app` raised `exc`: retried with back-off, said in its status, counted as a failed pass."""
        name, permanent = app.name, isinstance(exc, errors.PermanentError)
        if isinstance(exc, errors.TetherError):
            error, unexpected = str(exc), False
            log.error("The pass of %s failed: %s", name, exc)
        else:
            error, unexpected = errors.unexpected(exc), True
            log.exception("The pass of %s failed unexpectedly (a bug in tether: please report it with this "
                          "traceback); it is retried with back-off.", name)
        next_attempt = self.backoff.failed(name, key, self.monotonic())
        self._forget_read_back(name)
        self._wanted.set()  # the loop queues it again when the back-off ends
        self.converged.forget(name)
        try:
            previous = self.statuses.get(name) or self.store.read(name)[0] or status.initial(app)
            document = status.set_failed(previous, error, self.clock(), permanent, unexpected)
            document["nextAttemptAt"] = status.timestamp(queueing.wall_time(next_attempt, self.monotonic, self.clock))
            log.info("%s: the next attempt is at %s.", name, document["nextAttemptAt"])
            self._publish(name, document)
        except Exception:  # served from memory all the same when only the write failed (see _publish)
            log.exception("The status file of %s cannot say that its pass failed; the next attempt writes it "
                          "again.", name)
        finally:
            self.observations.reconciled(name, "failure", took)

    def _converged_now(self, app: model.Application, override: overrides.Override) -> bool:
        """The pass of `app` made here, in the scanning thread, when it finds nothing changed since its last no-op
        pass and nobody holds the application (a worker, a command); False: queue it for a worker. Handing 1000
        such passes to the workers cost more CPU than the passes themselves (P4)."""
        if not self.converged.known(app.name) or not self.queue.claim(app.name):
            return False
        try:
            with self._guard:
                kind = self.kinds.get(app.kind) if app.kind else None
            return self.backoff.due(app.name, (app.generation, override)) is None and \
                self._still_converged(app.name, self._inputs(app, kind, override), wait=False)
        finally:
            self.queue.done(app.name)

    def _inputs(self, app: model.Application, kind: model.Kind | None,
                override: overrides.Override) -> tuple[object, ...]:
        """What a pass depends on besides the disk: for daemon/converged.py."""
        error = self.node.error
        return app, kind, override, self.node.identity, None if error is None else str(error)

    def _pass(self, app: model.Application, kind: model.Kind | None, override: overrides.Override,
              key: Hashable, reading_back: bool) -> None:
        name = app.name
        if app.rollout is not None and not self.node.known:  # (tether reconcile refuses to start then)
            raise errors.TemporaryError(
                f"the node file is invalid ({self.node.error}), and no valid one was read since tether started: "
                "a rollout's waves depend on this node's name and labels, so the application stays as it is until "
                "the node file is fixed")
        inputs = self._inputs(app, kind, override)
        if self._still_converged(name, inputs):
            return
        started_reading = self.converged.started(name)  # what this pass reads, as it was before it read it
        applied = False  # the engine ran the plan's steps (not spec.drift: report's plan, left undone)
        broken: str | None = None  # why the active deployment, left as it is by spec.drift: report, is not whole
        checked: dict[tuple[int, str | None], drift.Structural] = {}

        def structure(path: str, seen: records.Observed, desired: str | None) -> drift.Structural:
            """drift.check_structure, once per snapshot and desired deployment in this pass: a pass that
            changes nothing checks its tree once, not three times."""
            key = (id(seen), desired)
            if key not in checked:
                checked[key] = drift.check_structure(path, seen, desired)
            return checked[key]

        with self.engine.holding(app) as observed:  # the pass's one snapshot, which the drift checks share
            # The rollout decides first (asking the gate, through the cache, only when this node's wave waits on
            # it), then a `tether deploy` override wins over it.
            identity = self.node.identity
            wall, mono = self.clock(), self.monotonic()
            rolled = rollout_state.evaluate(app, identity.name, identity.labels, wall, observed.last_activated,
                                            lambda asked: self.gates.answer(name, asked))
            self._schedule(name, rolled, wall, mono)
            effective = overrides.effective(rolled.app, override)
            before = structure(effective.path, observed, effective.deployment)
            started = self.monotonic()
            if (effective.drift == "report" and before.types and not effective.suspend
                    and effective.deployment == observed.last_activated):
                log.warning("%s has drifted (%s); spec.drift is report, so tether leaves it as it is.", name,
                            ", ".join(before.types))
                result = reconciling.Result(name, self.engine.plan(effective, observed), observed)
                broken = before.current or before.deployment
            else:
                plan = self.engine.plan(effective, observed)
                if not plan.converged and not plan.suspended:  # say what the pass does while it works
                    last = self.statuses.get(name) or self.store.read(name)[0] or status.initial(effective)
                    self._publish(name, status.set_reconciling(last, status.working_on(effective, plan), self.clock(),
                                                               plan.desired))
                cancel = self.running[name] = threading.Event()
                try:
                    result = self.engine.reconcile(effective, kind, cancel=cancel, locked=True, observed=observed,
                                                   plan=plan)
                    applied = True
                finally:
                    self.running.pop(name, None)
        current = result.observed.current  # a relink (after the lock is released) changes no record
        if (result.ok and effective.drift == "correct" and current is not None
                and structure(effective.path, result.observed, effective.deployment).links):
            self.engine.relink(effective, current)
        took = self.monotonic() - started
        next_attempt = None
        if result.ok:
            self.backoff.succeeded(name)
        else:
            next_attempt = self.backoff.failed(name, key, self.monotonic())
            self._forget_read_back(name)
            self._wanted.set()  # the loop queues it again when the back-off ends
        on_disk, foreign = self.store.read(name)  # a command such as `tether deploy` may have written it
        previous = on_disk if foreign and on_disk is not None else self.statuses.get(name) or on_disk
        document = status.build(effective, result, previous, self.clock())
        document["nextAttemptAt"] = status.timestamp(queueing.wall_time(next_attempt, self.monotonic, self.clock))
        if not result.ok:
            log.info("%s: the next attempt is at %s.", name, document["nextAttemptAt"] or "the next change")
        elif result.plan.steps:
            log.info("%s: the pass is done in %.1f s; current points to %s.", name, took,
                     result.observed.current or "nothing")
        document["lastSuccessAt"] = document["updatedAt"] if result.ok else (previous or {}).get("lastSuccessAt")
        status.set_rollout(document, rolled.status())
        self.drift.record(effective, document, result.observed, structure)
        if broken is not None:
            status.set_left_broken(document, broken, self.clock())
        if name in self.invalid:  # still running on the last good manifest: keep saying so
            document = status.build_invalid(name, self.invalid[name], document, self.clock())
        self._publish(name, document)
        self.observations.reconciled(name, "success" if result.ok else "failure", took)  # after the status
        for run in result.hook_runs:
            self.observations.hook_ran(run, name)
        ended_ready = result.ok and rolled.decision is None and name not in self.invalid and status.is_ready(document)
        no_op = ended_ready and not result.plan.steps and not result.hook_runs and not result.probes \
            and not any(document["drift"].values())
        remembered = self.converged.passed(name, inputs, result.observed,
                                           status.status_path(self.config.state_dir, name), started_reading, no_op)
        # Read back what the pass changed; and after the first no-op pass since the daemon started, which has no
        # pass before it to compare with (converged.py), read again so that the next one (a resync) is cheap.
        first = no_op and not remembered and started_reading.read is None and self.converged.has_read(name)
        if ((ended_ready and applied and result.plan.steps) or first) and not reading_back:
            with self._guard:
                if name in self.apps:  # (not unmanaged meanwhile)
                    self.read_backs[name] = self.monotonic() + READ_BACK_SECONDS, key
                    self._wanted.set()

    def _still_converged(self, name: str, inputs: tuple[object, ...], wait: bool = True) -> bool:
        """A pass of `name` that finds nothing it depends on changed since its last no-op pass (daemon/converged.py):
        it publishes the status it published last, with fresh times, and counts as a successful pass. With `wait`
        False, False when another holds the application's lock."""
        started = self.monotonic()
        with self._guard:
            last = self.statuses.get(name)
        if last is None or name in self.invalid or self.drift.content_due(name):
            return False
        with locking.application_lock(self.config.state_dir, name, wait) as held:  # not while a command works
            if not held or not self.converged.still(name, inputs):
                return False
        stamp = status.timestamp(self.clock())
        with self._guard:  # as _publish, without comparing with the status file: its identity is the same
            if name in self.apps:
                self.statuses[name] = {**last, "updatedAt": stamp, "lastSuccessAt": stamp}
                self._changed.set()
                if self.config.metrics_textfile:
                    self._wanted.set()
        self.observations.reconciled(name, "success", self.monotonic() - started)
        return True

    def _last_status(self, name: str) -> dict[str, Any] | None:
        """The status the daemon last published for `name` (a retried download says so in it)."""
        with self._guard:
            return self.statuses.get(name)

    def _schedule(self, name: str, rolled: rollout_state.Evaluation, wall: float, mono: float) -> None:
        """Ask for a pass when the node's wave opens, and when the gate is due again while the wave waits on
        it; the main loop queues the application then (plain data: `wakeups`)."""
        due = []
        if rolled.decision is not None and rolled.decision.next_wave_at is not None:
            due.append(mono + (rolled.decision.next_wave_at - wall) + 0.001)  # just after, on the wall clock
        expires = self.gates.expires(name)
        if rolled.waiting and expires is not None:
            due.append(expires)
        with self._guard:
            if due:
                self.wakeups[name] = min(due)
                self._wanted.set()
            else:
                self.wakeups.pop(name, None)

    def _publish(self, name: str, document: dict[str, Any]) -> None:
        """Write and serve a status, unless the application stopped being managed meanwhile."""
        document = {**document, "node": self.node.status()}
        with self._guard:
            if name not in self.apps:
                return
            self.statuses[name] = document  # served even when the write below fails
            (self.ready.add if status.is_ready(document) else self.ready.discard)(name)
            self._changed.set()
            if self.store.write(name, document) or self.config.metrics_textfile:  # a no-op pass writes nothing
                self._wanted.set()  # the loop flushes the status files and rewrites the textfile

    def _forget_read_back(self, name: str) -> None:
        """No read-back of `name`: it failed (its retry reads everything, and a failed pass is not remembered), or
        it is no longer managed."""
        with self._guard:
            self.read_backs.pop(name, None)
            self.reading_back.pop(name, None)

    def _unmanage(self, name: str) -> None:
        log.info("The manifest of %s is gone: tether stops managing it; its files stay on disk.", name)
        if name in self.running:
            self.running[name].set()  # its pass stops downloading and retrying
        self.seen.pop(name, None)
        self.drift.forget(name)
        self.converged.forget(name, unmanaged=True)
        self.gates.forget(name)
        with self._guard:
            self.wakeups.pop(name, None)
        self._forget_read_back(name)
        self.backoff.succeeded(name)
        self.observations.forget(name)
        with self._guard:
            self.statuses.pop(name, None)
            self.ready.discard(name)
            if formats.refusal(status.status_path(self.config.state_dir, name)) is None:  # a newer one stays
                self.store.remove(name)
        self._changed.set()
