"""`tether run`: watch the manifests, reconcile with bounded workers, serve metrics.

Watch events and the periodic resync only ask for a rescan; the rescan
compares each application's manifest content hash and overrides with what it
saw last and queues the applications that changed. A manifest that becomes
invalid keeps its application's last good desired state; one that disappears
stops tether managing the application (its files stay) and removes its status
and metrics. Every rescan also reads the node file: a new node identity (a rollout
decision depends on it) queues a pass of every application; an invalid node file
keeps the last good identity and counts as an invalid manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from controller import __version__, errors, fsutil
from controller.daemon import (
    converged,
    drift_watch,
    exposition,
    metrics,
    notify,
    passes,
    queueing,
    scanning,
    watching,
    web_config,
    web_server,
)
from controller.engine import reconciling, status, status_store
from controller.fleet import gate
from controller.fleet import node as node_identity
from controller.manifests import model, overrides, validated_cache
from controller.tree import locking

log = logging.getLogger(__name__)
HANDLED = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
STATUS_SYNC_SECONDS = 1.0  # status files written while the queue never empties are flushed at least this often


@dataclasses.dataclass(frozen=True)
class Config:
    manifests: str
    state_dir: str
    insecure_manifests: bool = False
    workers: int = 4
    resync_seconds: float = 60.0
    metrics_address: str = "127.0.0.1:9731"
    metrics_textfile: str | None = None
    web_config_file: str | None = None  # TLS and basic auth for the metrics endpoint
    shutdown_grace_seconds: float = 30.0
    content_check_seconds: float = 600.0
    node_config: str = node_identity.DEFAULT_PATH


class Daemon(passes.Passes):
    def __init__(self, config: Config, engine: reconciling.Engine | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 environ: Mapping[str, str] | None = None,
                 ask_gate: Callable[[model.Gate], gate.Answer] = gate.ask,
                 backoff: queueing.BackOff | None = None) -> None:
        self.config: Config = config
        self.engine = engine or reconciling.Engine(config.state_dir)
        self.clock = clock
        self.monotonic = monotonic
        self.notifier = notify.Notifier(os.environ if environ is None else environ)
        self.queue = queueing.WorkQueue()
        self.backoff = backoff or queueing.BackOff()  # of failed passes
        self.observations = metrics.Observations()
        self.engine = dataclasses.replace(self.engine, on_fetch=self.observations.fetched,
                                          on_fetch_failure=self.observations.fetch_failed,
                                          on_retry=status.retry_recorder(self._last_status, self._publish, clock))
        self.apps: dict[str, model.Application] = {}
        self.kinds: dict[str, model.Kind] = {}
        self.seen: dict[str, tuple[str, overrides.Override]] = {}
        self.statuses: dict[str, dict[str, Any]] = {}  # what each status says, with fresh updatedAt/lastSuccessAt
        self.store = status_store.Store(config.state_dir, monotonic=monotonic)  # writes a status only on change
        self.ready: set[str] = set()  # applications whose status says Ready, for the systemd status line
        self.problems: list[errors.ManifestError] = []
        self.files: dict[str, str] = {}  # manifest file -> application name, for invalid files
        self.drift = drift_watch.DriftWatch(config.content_check_seconds, clock)
        self.converged = converged.Converged()  # applications whose last pass was a no-op, and what it read
        self.invalid: dict[str, str] = {}  # application -> why its manifest is invalid now (last good kept)
        self.reported: set[str] = set()  # manifest problems already logged
        self.running: dict[str, threading.Event] = {}  # application -> set when its pass should give up retrying
        self.parsed: dict[Any, Any] = {}  # loading's cache of parsed manifests
        self.identities: dict[str, Any] = {}  # and of which manifest files are as they were when read
        self.validated = validated_cache.Store(config.state_dir)  # and across starts, in the state dir
        self.node = node_identity.Tracker(config.node_config, secure=not config.insecure_manifests)
        self.gates = gate.Cache(ask_gate, monotonic)  # each application's last gate answer, for intervalSeconds
        self.wakeups: dict[str, float] = {}  # application -> when (monotonic) its rollout wants a pass
        # application -> when (monotonic) to read back what a pass changed, and that pass's (generation, override)
        self.read_backs: dict[str, tuple[float, Hashable]] = {}
        self.reading_back: dict[str, Hashable] = {}  # read-backs queued, not yet begun, and what they read back
        self._node_changed = False  # the next scan queues every application
        self._guard = threading.Lock()
        self._wake = threading.Event()
        self._wanted = threading.Event()  # a pass left the main loop something to do (see _after_pass)
        self._rescan = threading.Event()
        self._full = threading.Event()  # SIGHUP: re-read and reconcile everything
        self._stop = threading.Event()
        self._changed = threading.Event()  # a status changed: rewrite the metrics textfile
        self._reload_web = threading.Event()  # SIGHUP: read the web config file again
        self._web: web_server.Server | None = None

    # ------------------------------------------------------------ scanning

    def request_rescan(self) -> None:
        self._rescan.set()
        self._wake.set()

    def scan(self, everything: bool = False) -> None:
        """Read the node file and the manifests and queue what changed (or everything)."""
        if self.node.refresh():
            with self._guard:
                self._node_changed = True
        found = scanning.read(self.config.manifests, self.config.state_dir, not self.config.insecure_manifests,
                              self.parsed, self.validated, self.identities)
        if found is None:
            log.info("The manifests directory was replaced while it was read; reading it again.")
            self.request_rescan()
            return
        if any(p.file == self.config.manifests for p in found.problems):
            log.error("Cannot read the manifests directory: %s; keeping every application as it was.",
                      found.problems[0])
            with self._guard:
                self.problems = found.problems
            return
        scanned = scanning.merge(found, self.apps, self.kinds, self.files)
        for text in scanned.broken - self.reported:
            log.error("Invalid manifest: %s", text)
        with self._guard:
            removed = set(self.apps) - set(scanned.apps)
            healed = set(self.invalid) - set(scanned.invalid)
            last_apps = self.apps
            self.apps, self.kinds, self.problems = scanned.apps, scanned.kinds, scanned.problems
            self.files, self.invalid, self.reported = scanned.files, scanned.invalid, set(scanned.broken)
        for name, error in scanned.invalid.items():
            if name in last_apps:  # running on its last good manifest: say why in its status
                previous = self.statuses.get(name) or self.store.read(name)[0]
                self._publish(name, status.build_invalid(name, error, previous, self.clock()))
        for name in removed:
            self._unmanage(name)
        with self._guard:
            node_changed, self._node_changed = self._node_changed, False
        everything = everything or node_changed
        if node_changed:  # what failed for want of a valid node file (or under the old identity) is tried now
            for name in scanned.apps:
                self.backoff.succeeded(name)
        for name, app in scanned.apps.items():
            key = (app.generation, overrides.read(self.config.state_dir, name))
            if self.seen.get(name) != key and name in self.running:
                self.running[name].set()  # a pass of the old desired state stops retrying downloads
            if self.seen.get(name) == key and name not in healed and everything and self._converged_now(app, key[1]):
                continue  # a full resync's pass of an application that finds nothing changed: no worker needed
            if everything or self.seen.get(name) != key or name in healed:
                self.seen[name] = key
                self.queue.put(name)

    # ------------------------------------------------------------ metrics and systemd

    def status_documents(self) -> list[dict[str, Any]]:
        with self._guard:
            return [self.statuses[n] for n in sorted(self.statuses) if n in self.apps]

    def manifest_state(self) -> tuple[list[errors.ManifestError], int]:
        """The manifest problems, and how many manifest files are valid."""
        with self._guard:
            broken = {p.file for p in self.problems}
            files = {a.file for a in self.apps.values()} | {k.file for k in self.kinds.values()}
            node_problems = [self.node.error] if self.node.error else []
            return list(self.problems) + node_problems, len(files - broken)

    def _summary(self) -> str:
        with self._guard:  # kept up to date by _publish: the loop asks after every pass, so no walk over all
            ready, total = len(self.ready & self.apps.keys()), len(self.apps)
        return f"STATUS={ready} of {total} applications ready, {total - ready} not ready"

    # ------------------------------------------------------------ the main loop

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop.set()
        self._wake.set()

    def _on_reload(self, signum: int, frame: object) -> None:
        log.info("SIGHUP: reading every manifest again%s.", " and the web config file" if self.config.web_config_file
                 else "")
        self._reload_web.set()
        self._full.set()
        self.request_rescan()

    def run(self) -> int:
        fsutil.makedirs(self.config.state_dir, 0o755)
        with locking.daemon_lock(self.config.state_dir) as locked:
            if not locked:
                log.error("Another `tether run` already uses the state dir %s; stop it first.", self.config.state_dir)
                return 1
            return self._run()

    def _run(self) -> int:
        # Threads started from here on block these signals, so the kernel hands them to the main
        # thread, whose handlers wake the loop at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        registry = metrics.registry(metrics.Collector(self.status_documents, self.manifest_state, self.observations,
                                                      node=lambda: self.node.identity.name))
        web = web_config.load(self.config.web_config_file) if self.config.web_config_file else web_config.PLAIN
        server = (web_server.Server(self.config.metrics_address, registry, web, healthy=lambda: not self._stop.is_set())
                  if self.config.metrics_address else None)
        self._web = server
        # The node file's directory is watched with the manifests' parent: an edit, an atomic rename or a
        # removal of the node file asks for a rescan, which reads it again.
        watcher = watching.Watcher([self.config.manifests, self.config.node_config], self.request_rescan,
                                   exact=[os.path.join(self.config.state_dir, "overrides")])
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        signal.signal(signal.SIGIO, signal.SIG_IGN)  # announces a writer waiting on a manifest's read lease
        try:
            fsutil.makedirs(os.path.join(self.config.state_dir, "overrides"), 0o700)
            watcher.start()
            self.node.refresh(first=True)
            self.scan(everything=True)
            workers = queueing.Workers(self.queue, self.config.workers, self.process, self._after_pass)
            workers.start()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)
            self.notifier.send("READY=1", self._summary())
            log.info("tether is running (version %s): manifests %s, state dir %s, %d applications, %d workers, "
                     "metrics on %s.", __version__, self.config.manifests, self.config.state_dir, len(self.apps), self.config.workers,
                     f"{server.host}:{server.port}" if server else "nothing (--metrics-address is empty)")
            self._loop(watcher, registry)
            self.notifier.send("STOPPING=1")
            for cancel in list(self.running.values()):
                cancel.set()  # downloads end now; hooks get the shutdown grace
            log.info("Stopping: no new work; waiting up to %.0f s for running passes.",
                     self.config.shutdown_grace_seconds)
            if not workers.stop(self.config.shutdown_grace_seconds, self.monotonic):
                log.warning("The shutdown grace is over: killing the hooks still running; the next start "
                            "finishes what their passes left.")
                self.engine.hooks.kill_all()
            self.store.sync()
        finally:
            watcher.stop()
            if server is not None:
                server.close()
        return 0

    def queue_due(self, now: float) -> list[float]:
        """Queue the applications whose rollout wants a pass, or whose read-back is due, at `now` (monotonic);
        return the times still ahead."""
        ahead, due = [], []
        with self._guard:
            for name, when in list(self.wakeups.items()):
                if when > now:
                    ahead.append(when)
                else:
                    del self.wakeups[name]  # (a pass asks for the next one)
                    due.append(name)
            for name, (when, key) in list(self.read_backs.items()):
                if when > now:
                    ahead.append(when)
                else:
                    del self.read_backs[name]
                    self.reading_back[name] = key
                    due.append(name)
        for name in due:
            self.queue.put(name)
        return ahead

    def _after_pass(self) -> None:
        """Wake the main loop after a pass that left it something to do, and when the queue is empty (flush the
        statuses, say so in the systemd status line). Waking it after every pass made a loop iteration per
        application: with 1000 applications, most of a no-op resync's CPU beyond the passes themselves."""
        if self._wanted.is_set() or self.queue.idle():
            self._wake.set()

    def _reload_web_config(self) -> None:
        if not self.config.web_config_file or self._web is None:
            return
        try:
            self._web.reload(web_config.load(self.config.web_config_file))
        except errors.PermanentError as exc:
            log.error("%s; the metrics endpoint keeps the web config it had.", exc)

    def _loop(self, watcher: watching.Watcher, registry: Any) -> None:
        next_resync = self.monotonic() + self.config.resync_seconds
        while not self._stop.is_set():
            now = self.monotonic()
            self._wanted.clear()
            everything = now >= next_resync or self._full.is_set()
            if self._reload_web.is_set():
                self._reload_web.clear()
                self._reload_web_config()
            if self._rescan.is_set() or everything:
                self._rescan.clear()
                if everything:
                    self._full.clear()
                self.scan(everything=everything)
                if watcher.refresh():
                    self.request_rescan()
                if everything:
                    next_resync = now + self.config.resync_seconds
            for name, due in self.backoff.pending().items():
                if due <= now:
                    self.queue.put(name)
            ahead = self.queue_due(now)
            next_ping = self.notifier.keep_alive(now, self._summary())
            unsynced = self.store.unsynced_since
            if unsynced is not None and (self.queue.idle() or now - unsynced >= STATUS_SYNC_SECONDS):
                self.store.sync()  # one syncfs for the statuses of a batch of passes, not an fsync per file
                unsynced = None
            if self.config.metrics_textfile and self._changed.is_set():
                self._changed.clear()
                exposition.write_textfile(self.config.metrics_textfile, registry)
            waits = [next_resync - now] + [due - now for due in self.backoff.pending().values() if due > now]
            waits += [due - now for due in ahead]
            if next_ping is not None:
                waits.append(next_ping - now)
            if unsynced is not None:
                waits.append(unsynced + STATUS_SYNC_SECONDS - now)
            if not self.queue.idle():  # passes wake the loop only when needed: keep the status line fresh
                waits.append(STATUS_SYNC_SECONDS)
            self._wake.wait(timeout=max(0.01, min(waits)))
            self._wake.clear()

