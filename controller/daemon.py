"""`tether run`: watch the manifests, reconcile with bounded workers, serve metrics.

Watch events and the periodic resync only ask for a rescan; the rescan
compares each application's manifest content hash and overrides with what it
saw last and queues the applications that changed. A manifest that becomes
invalid keeps its application's last good desired state; one that disappears
stops tether managing the application (its files stay) and removes its status
and metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller import (
    commands,
    drift,
    errors,
    fsutil,
    loading,
    manifests,
    metrics,
    notify,
    overrides,
    queueing,
    reconciling,
    records,
    status,
    watching,
)

log = logging.getLogger(__name__)
HANDLED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@dataclasses.dataclass(frozen=True)
class Config:
    manifests: str
    state_dir: str
    insecure_manifests: bool = False
    workers: int = 4
    resync_seconds: float = 60.0
    metrics_address: str = "127.0.0.1:9731"
    metrics_textfile: str | None = None
    shutdown_grace_seconds: float = 30.0
    content_check_seconds: float = 600.0


class Daemon:
    def __init__(self, config: Config, engine: reconciling.Engine | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.engine = engine or reconciling.Engine(config.state_dir)
        self.clock = clock
        self.monotonic = monotonic
        self.notifier = notify.Notifier(os.environ if environ is None else environ)
        self.queue = queueing.WorkQueue()
        self.backoff = queueing.BackOff()
        self.observations = metrics.Observations()
        self.engine = dataclasses.replace(self.engine, on_fetch=self.observations.fetched,
                                          on_fetch_failure=self.observations.fetch_failed)
        self.apps: dict[str, manifests.Application] = {}
        self.kinds: dict[str, manifests.Kind] = {}
        self.seen: dict[str, tuple[str, overrides.Override]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self.problems: list[errors.ManifestError] = []
        self.files: dict[str, str] = {}  # manifest file -> application name, for invalid files
        self.content: dict[str, list[str]] = {}  # content drift found by the last check
        self.content_due: dict[str, float] = {}
        self.invalid: dict[str, str] = {}  # application -> why its manifest is invalid now (last good kept)
        self.reported: set[str] = set()  # manifest problems already logged
        self.running: dict[str, threading.Event] = {}  # application -> set when its pass should give up retrying
        self.parsed: dict[Any, Any] = {}  # loading's cache of parsed manifests
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._rescan = threading.Event()
        self._full = threading.Event()  # SIGHUP: re-read and reconcile everything
        self._stop = threading.Event()
        self._changed = threading.Event()  # a status changed: rewrite the metrics textfile

    # ------------------------------------------------------------ scanning

    def request_rescan(self) -> None:
        self._rescan.set()
        self._wake.set()

    def scan(self, everything: bool = False) -> None:
        """Read the manifests and queue what changed (or everything)."""
        reserved = [os.path.realpath(self.config.state_dir), os.path.realpath(self.config.manifests)]
        before = _identity(self.config.manifests)
        found = loading.load([self.config.manifests], secure=not self.config.insecure_manifests,
                             reserved_paths=reserved, skip_busy=True, cache=self.parsed)
        if before is not None and _identity(self.config.manifests) != before:
            log.info("The manifests directory was replaced while it was read; reading it again.")
            self.request_rescan()
            return
        if any(p.file == self.config.manifests for p in found.problems):
            log.error("Cannot read the manifests directory: %s; keeping every application as it was.",
                      found.problems[0])
            with self._guard:
                self.problems = found.problems
            return
        apps = dict(found.applications)
        kinds = dict(found.kinds)
        broken = {p.file: str(p) for p in found.problems}
        invalid: dict[str, str] = {}
        for name, error in found.invalid_names.items():
            invalid[name] = str(error)
            self._keep_last_good(name, apps, kinds, str(error))
        for file in found.busy:  # still being written: keep what it said before; its close triggers a rescan
            owner = self.files.get(file)
            if owner is not None and owner in self.apps and owner not in apps:
                apps[owner] = self.apps[owner]
        for file, text in broken.items():
            owner = self.files.get(file)
            if owner is not None and owner not in apps and owner not in found.invalid_names:
                invalid[owner] = text
                self._keep_last_good(owner, apps, kinds, text)
        for text in set(broken.values()) - self.reported:
            log.error("Invalid manifest: %s", text)
        with self._guard:
            removed = set(self.apps) - set(apps)
            healed = set(self.invalid) - set(invalid)
            self.apps, self.kinds, self.problems = apps, kinds, found.problems
            self.files = {app.file: name for name, app in apps.items()}
            self.invalid, self.reported = invalid, set(broken.values())
        for name in removed:
            self._unmanage(name)
        for name, app in apps.items():
            key = (app.generation, overrides.read(self.config.state_dir, name))
            if self.seen.get(name) != key and name in self.running:
                self.running[name].set()  # a pass of the old desired state stops retrying downloads
            if everything or self.seen.get(name) != key or name in healed:
                self.seen[name] = key
                self.queue.put(name)

    def _keep_last_good(self, name: str, apps: dict[str, manifests.Application],
                        kinds: dict[str, manifests.Kind], error: str) -> None:
        last = self.apps.get(name)
        if last is None:
            return  # never valid: nothing to keep; the error shows in the log and the metrics
        apps[name] = last
        if last.kind and last.kind in self.kinds:
            kinds.setdefault(last.kind, self.kinds[last.kind])
        previous = self.statuses.get(name) or status.read(self.config.state_dir, name)
        self._publish(name, status.build_invalid(name, error, previous, self.clock()))

    def _unmanage(self, name: str) -> None:
        log.info("The manifest of %s is gone: tether stops managing it; its files stay on disk.", name)
        self.seen.pop(name, None)
        self.content.pop(name, None)
        self.content_due.pop(name, None)
        self.backoff.succeeded(name)
        self.observations.forget(name)
        with self._guard:
            self.statuses.pop(name, None)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(status.status_path(self.config.state_dir, name))
        self._changed.set()

    # ------------------------------------------------------------ working

    def process(self, name: str) -> None:
        """One pass for one application, respecting its back-off."""
        with self._guard:
            app = self.apps.get(name)
            kind = self.kinds.get(app.kind) if app is not None and app.kind else None
        if app is None:
            return
        override = overrides.read(self.config.state_dir, name)
        key = (app.generation, override)
        due = self.backoff.due(name, key)
        if due is not None and due > self.clock():
            return  # the main loop queues it again when the back-off ends
        effective = overrides.effective(app, override)
        observed = records.observe(effective.path)
        before = drift.check_structure(effective.path, observed, effective.deployment)
        started = self.monotonic()
        if (effective.drift == "report" and before.types and not effective.suspend
                and effective.deployment == observed.last_activated):
            log.warning("%s has drifted (%s); spec.drift is report, so tether leaves it as it is.", name,
                        ", ".join(before.types))
            result = reconciling.Result(name, self.engine.plan(effective), observed)
        else:
            plan = self.engine.plan(effective)
            last = self.statuses.get(name)
            if last is not None and not plan.converged and not plan.suspended:
                steps = ", ".join(f"{step.action} {step.deployment or ''}".strip() for step in plan.steps)
                self._publish(name, status.set_reconciling(last, steps, self.clock()))
            cancel = self.running[name] = threading.Event()
            try:
                result = self.engine.reconcile(effective, kind, cancel=cancel)
            finally:
                self.running.pop(name, None)
            current = result.observed.current
            if (result.ok and effective.drift == "correct" and current is not None
                    and drift.check_structure(effective.path, result.observed, effective.deployment).links):
                self.engine.relink(effective, current)
        took = self.monotonic() - started
        next_attempt = None
        if result.ok:
            self.backoff.succeeded(name)
        else:
            next_attempt = self.backoff.failed(name, key, self.clock())
        previous = status.read(self.config.state_dir, name) or self.statuses.get(name)  # the CLI may have written it
        document = status.build(effective, result, previous, self.clock())
        document["nextAttemptAt"] = status.timestamp(next_attempt)
        document["lastSuccessAt"] = document["updatedAt"] if result.ok else (previous or {}).get("lastSuccessAt")
        self._record_drift(effective, document)
        if name in self.invalid:  # still running on the last good manifest: keep saying so
            document = status.build_invalid(name, self.invalid[name], document, self.clock())
        self._publish(name, document)
        self.observations.reconciled(name, "success" if result.ok else "failure", took)  # after the status
        for run in result.hook_runs:
            self.observations.hook_ran(run, name)

    def _record_drift(self, app: manifests.Application, document: dict[str, Any]) -> None:
        """Structural drift every pass; content drift when its slower interval is due."""
        observed = records.observe(app.path)
        # Drift is a change to what tether last made: nothing before its first activation, and a desired
        # deployment that failed to deploy is a failing pass (Ready false), not drift.
        made = observed.last_activated
        types = drift.check_structure(app.path, observed, made).types if made is not None else []
        note = ""
        if observed.current is not None and self.clock() >= self.content_due.get(app.name, 0.0):
            self.content_due[app.name] = self.clock() + self.config.content_check_seconds
            try:
                self.content[app.name] = drift.check_content(app.path, observed.current, app.drift_ignore).paths
            except errors.PermanentError as exc:
                self.content[app.name], note = [], str(exc)
            if self.content[app.name]:
                log.warning("%s: %d files of %s changed since it completed, e.g. %s.", app.name,
                            len(self.content[app.name]), observed.current, ", ".join(self.content[app.name][:10]))
        files = self.content.get(app.name, [])
        status.set_drift(document, [*types, *(["content"] if files else [])], files, self.clock(), note)

    def _publish(self, name: str, document: dict[str, Any]) -> None:
        """Write and serve a status, unless the application stopped being managed meanwhile."""
        with self._guard:
            if name not in self.apps:
                return
            status.write(self.config.state_dir, name, document)
            self.statuses[name] = document
        self._changed.set()

    def _worker(self) -> None:
        while (name := self.queue.get()) is not None:
            try:
                self.process(name)
            except Exception:  # a bug must not kill the worker; the next pass tries again
                log.exception("The pass of %s failed unexpectedly.", name)
            finally:
                self.queue.done(name)
                self._wake.set()

    # ------------------------------------------------------------ metrics and systemd

    def status_documents(self) -> list[dict[str, Any]]:
        with self._guard:
            return [self.statuses[n] for n in sorted(self.statuses) if n in self.apps]

    def manifest_state(self) -> tuple[list[errors.ManifestError], int]:
        """The manifest problems, and how many manifest files are valid."""
        with self._guard:
            broken = {p.file for p in self.problems}
            files = {a.file for a in self.apps.values()} | {k.file for k in self.kinds.values()}
            return list(self.problems), len(files - broken)

    def _summary(self) -> str:
        documents = self.status_documents()
        ready = sum(1 for d in documents if status.is_ready(d))
        total = len(self.apps)
        return f"STATUS={ready} of {total} applications ready, {total - ready} not ready"

    # ------------------------------------------------------------ the main loop

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop.set()
        self._wake.set()

    def _on_reload(self, signum: int, frame: object) -> None:
        log.info("SIGHUP: reading every manifest again.")
        self._full.set()
        self.request_rescan()

    def run(self) -> int:
        fsutil.makedirs(self.config.state_dir, 0o755)
        lock = os.open(commands.daemon_lock_path(self.config.state_dir), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.error("Another `tether run` already uses the state dir %s; stop it first.", self.config.state_dir)
            os.close(lock)
            return 1
        # Threads started from here on block these signals, so the kernel hands them to the main
        # thread, whose handlers wake the loop at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        registry = metrics.registry(metrics.Collector(self.status_documents, self.manifest_state, self.observations))
        server = metrics.Server(self.config.metrics_address, registry) if self.config.metrics_address else None
        watcher = watching.Watcher([self.config.manifests], self.request_rescan,
                                   exact=[os.path.join(self.config.state_dir, "overrides")])
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGIO, signal.SIG_IGN)  # announces a writer waiting on a manifest's read lease
        try:
            fsutil.makedirs(os.path.join(self.config.state_dir, "overrides"), 0o700)
            watcher.start()
            self.scan(everything=True)
            workers = [threading.Thread(target=self._worker, name=f"worker-{i}", daemon=True)
                       for i in range(self.config.workers)]
            for worker in workers:
                worker.start()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
            self.notifier.send("READY=1", self._summary())
            log.info("tether is running: %d applications, metrics on %s.", len(self.apps),
                     f"{server.host}:{server.port}" if server else "nothing")
            self._loop(watcher, registry)
            self.notifier.send("STOPPING=1")
            log.info("Stopping: no new work; waiting up to %.0f s for running passes.",
                     self.config.shutdown_grace_seconds)
            self.queue.close()
            deadline = self.monotonic() + self.config.shutdown_grace_seconds
            for worker in workers:
                worker.join(timeout=max(0.0, deadline - self.monotonic()))
            if any(worker.is_alive() for worker in workers):
                log.warning("The shutdown grace is over: killing the hooks still running; the next start "
                            "finishes what their passes left.")
                self.engine.hooks.kill_all()
        finally:
            watcher.stop()
            if server is not None:
                server.close()
            os.close(lock)
        return 0

    def _loop(self, watcher: watching.Watcher, registry: Any) -> None:
        next_resync = self.monotonic() + self.config.resync_seconds
        next_ping = self.monotonic()
        last_summary = ""
        while not self._stop.is_set():
            now = self.monotonic()
            everything = now >= next_resync or self._full.is_set()
            if self._rescan.is_set() or everything:
                self._rescan.clear()
                if everything:
                    self._full.clear()
                self.scan(everything=everything)
                if watcher.refresh():
                    self.request_rescan()
                if everything:
                    next_resync = now + self.config.resync_seconds
            wall = self.clock()
            for name, due in self.backoff.pending().items():
                if due <= wall:
                    self.queue.put(name)
            summary = self._summary()
            if self.notifier.watchdog_interval and now >= next_ping:
                self.notifier.send("WATCHDOG=1", summary)
                next_ping = now + self.notifier.watchdog_interval
            elif summary != last_summary:
                self.notifier.send(summary)
            last_summary = summary
            if self.config.metrics_textfile and self._changed.is_set():
                self._changed.clear()
                metrics.write_textfile(self.config.metrics_textfile, registry)
            waits = [next_resync - now] + [due - wall for due in self.backoff.pending().values() if due > wall]
            if self.notifier.watchdog_interval:
                waits.append(next_ping - now)
            self._wake.wait(timeout=max(0.01, min(waits)))
            self._wake.clear()


def _identity(path: str) -> tuple[int, int] | None:
    """Which directory `path` is now (device, inode), or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
