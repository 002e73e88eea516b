"""Running lifecycle hooks: as the application's user, in a new session, with a clean
environment, a timeout that reaches every process of the hook, and bounded output."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

from controller import errors
from controller.engine import hook_output, hook_processes
from controller.manifests import model
from controller.tree import owners, records

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SUCCESS, FAILURE, TIMEOUT = "success", "failure", "timeout"


@dataclasses.dataclass(frozen=True)
class HookRun:
    """The outcome of one hook process."""

    phase: str
    source: str  # "kind/<name>" or "application"
    deployment: str
    outcome: str
    exit_code: int | None
    started_at: float
    duration_seconds: float
    output_tail: str
    log: str


def ended(exit_code: int | None) -> str:
    """"exited with status 3", or "was killed by signal 9 (Killed)" for a negative status."""
    if exit_code is not None and exit_code < 0:
        return f"was killed by signal {-exit_code} ({signal.strsignal(-exit_code)})"
    return f"exited with status {exit_code}"


class HookFailed(errors.TemporaryError):
    """A hook exited non-zero or timed out."""

    def __init__(self, run: HookRun) -> None:
        how = "timed out" if run.outcome == TIMEOUT else ended(run.exit_code)
        tail = run.output_tail.strip().splitlines()[-1:] or [""]
        super().__init__(f"the {run.phase} hook of {run.source} {how} for {run.deployment}; "
                         f"its output is in {run.log} (last line: {tail[0][:200]!r})")
        self.run = run


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a hook runs as; None ids mean the controller's own (when it is not root)."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...]
    name: str
    home: str
    shell: str


def identity(app: model.Application, euid: int | None = None) -> Identity:
    euid = os.geteuid() if euid is None else euid
    user, gid = owners.account(app, euid)
    groups = tuple(os.getgrouplist(user.pw_name, gid))
    if euid != 0:
        return Identity(None, None, groups, user.pw_name, user.pw_dir, user.pw_shell or "/bin/sh")
    return Identity(user.pw_uid, gid, groups, user.pw_name, user.pw_dir, user.pw_shell or "/bin/sh")


def _variable(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def environment(app: model.Application, who: Identity, phase: str, deployment: str, previous: str | None,
                inherited: Mapping[str, str]) -> dict[str, str]:
    """Exactly the variables of design section 4; nothing else of the controller's environment."""
    env = {k: v for k, v in inherited.items() if k == "LANG" or k.startswith("LC_")}
    env.update(
        PATH=SAFE_PATH, HOME=who.home, USER=who.name, LOGNAME=who.name, SHELL=who.shell,
        APPLICATION_NAME=app.application, APPLICATION_PATH=app.path, ENVIRONMENT=app.environment,
        DEPLOYMENT_NAME=deployment, DEPLOYMENT_PATH=os.path.join(app.path, deployment),
        PREVIOUS_DEPLOYMENT_NAME=previous or "", HOOK_NAME=phase,
    )
    for source, target in app.user_mapping.items():
        env[f"USER_MAPPING_{_variable(source)}"] = target
    for source, target in app.group_mapping.items():
        env[f"GROUP_MAPPING_{_variable(source)}"] = target
    return env


def _popen(argv: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """Start `argv`; an inline script just written may still be open for writing in a child that another thread
    forked at that moment (until that child execs), and then exec fails with ETXTBSY: try again shortly."""
    for delay in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0):
        try:
            return subprocess.Popen(argv, **options)
        except OSError as exc:
            if exc.errno != errno.ETXTBSY:
                raise
        time.sleep(delay)
    return subprocess.Popen(argv, **options)


@dataclasses.dataclass
class Runner:
    """Runs the hooks of one phase: the kind's first, then the application's own."""

    grace_seconds: float = 10.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    _running: set[int] = dataclasses.field(default_factory=set)  # process groups of hooks running now

    def kill_all(self) -> None:
        """Kill every hook still running, with its children (the daemon's shutdown grace is over)."""
        for pgid in list(self._running):
            _signal_group(pgid, signal.SIGKILL)

    def run_phase(self, phase: str, app: model.Application, kind: model.Kind | None, deployment: str,
                  previous: str | None, on_run: Callable[[HookRun], None]) -> None:
        """Run every hook of `phase`; report each run; raise HookFailed at the first failure."""
        hooks = [(f"kind/{kind.name}", kind.hooks.get(phase)) if kind else ("", None), ("application", app.hooks.get(phase))]
        present = [(source, hook) for source, hook in hooks if hook is not None]
        if not present:
            return
        log_dir = os.path.join(records.meta_dir(app.path), "logs", deployment)
        os.makedirs(log_dir, mode=0o750, exist_ok=True)
        who = identity(app)
        env = environment(app, who, phase, deployment, previous, self.environ)
        for index, (source, hook) in enumerate(present):
            run = self._run(phase, source, hook, app, deployment, who, env, os.path.join(log_dir, f"{phase}.log"),
                            append=index > 0)
            on_run(run)
            if run.outcome != SUCCESS:
                raise HookFailed(run)

    def run_one(self, phase: str, hook: model.Hook, app: model.Application, deployment: str, previous: str | None,
                timeout_seconds: float, append: bool) -> HookRun:
        """Run one hook-like command (a health check probe) as `phase`: like a hook, with its own timeout;
        its output goes to (or, with `append`, is added to) `.tether/logs/<deployment>/<phase>.log`."""
        log_dir = os.path.join(records.meta_dir(app.path), "logs", deployment)
        os.makedirs(log_dir, mode=0o750, exist_ok=True)
        who = identity(app)
        env = environment(app, who, phase, deployment, previous, self.environ)
        limited = dataclasses.replace(app, hook_timeout_seconds=timeout_seconds)
        return self._run(phase, "application", hook, limited, deployment, who, env,
                         os.path.join(log_dir, f"{phase}.log"), append=append, reap=True)

    def _run(self, phase: str, source: str, hook: model.Hook, app: model.Application, deployment: str,
             who: Identity, env: dict[str, str], log_path: str, append: bool, reap: bool = False) -> HookRun:
        """Run one hook; with `reap` (a probe, which has no business leaving processes behind), whatever is left
        of its process group once it ended is killed. A hook may start a service that outlives it."""
        cwd = os.path.join(app.path, deployment)
        script = None
        if hook.script is not None:
            fd, script = tempfile.mkstemp(prefix=f"{records.HOOK_SCRIPT_PREFIX}{phase}-", dir=records.meta_dir(app.path))
            try:
                with os.fdopen(fd, "w") as handle:
                    handle.write(hook.script)
                os.chmod(script, 0o500)
                if who.uid is not None:
                    os.chown(script, who.uid, who.gid or 0)  # readable and executable by the hook's user only
            except BaseException:
                os.unlink(script)  # (a full disk, say)
                raise
            argv = [script] if hook.script.startswith("#!") else ["/bin/sh", script]
        else:
            assert hook.path is not None
            argv = [hook.path]
        output = hook_output.BoundedLog(log_path, append=append)
        output.note(f"== {phase} hook of {source} for {deployment} ==\n")
        started, wall = self.clock(), self.wall_clock()
        try:
            exit_code, timed_out = self._spawn(argv, cwd, env, who, output, started + app.hook_timeout_seconds,
                                               app.path, {"phase": phase, "source": source, "deployment": deployment},
                                               reap)
        except OSError as exc:
            output.write(f"tether could not start the hook: {exc}; the hook's user needs to be able to reach "
                         f"{records.meta_dir(app.path)} and {cwd}\n".encode())
            exit_code, timed_out = None, False
        finally:
            output.close()
            if script is not None:
                os.unlink(script)
        outcome = TIMEOUT if timed_out else SUCCESS if exit_code == 0 else FAILURE
        run = HookRun(phase, source, deployment, outcome, exit_code, wall, self.clock() - started,
                      output.tail_text(), log_path)
        log.log(logging.INFO if outcome == SUCCESS else logging.ERROR, "%s: the %s hook of %s ended: %s (exit %s).",
                app.name, phase, source, outcome, exit_code)
        return run

    def _spawn(self, argv: list[str], cwd: str, env: dict[str, str], who: Identity, output: hook_output.BoundedLog,
               deadline: float, app_path: str, about: dict[str, str], reap: bool) -> tuple[int | None, bool]:
        ids: dict[str, object] = {}
        if who.uid is not None:
            ids = {"user": who.uid, "group": who.gid, "extra_groups": list(who.groups)}
        process = _popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, umask=0o022,
                         preexec_fn=hook_processes.die_with_parent(), **ids)
        assert process.stdout is not None
        self._running.add(process.pid)
        watchdog = hook_processes.Watchdog(process.pid)  # the hook's group dies with tether (design section 4)
        try:
            with hook_processes.recorded(app_path, process.pid, **about):
                return self._supervise(process, process.stdout, output, deadline)
        finally:
            if reap:
                _signal_group(process.pid, signal.SIGKILL)
            watchdog.release()
            self._running.discard(process.pid)

    def _supervise(self, process: subprocess.Popen[bytes], stream: Any, output: hook_output.BoundedLog,
                   deadline: float) -> tuple[int | None, bool]:
        """Copy the hook's output until it ends or its deadline; then TERM, grace, KILL its whole group."""
        timed_out = not self._pump(stream, output, deadline)
        if not timed_out:
            try:
                process.wait(timeout=max(0.0, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            _signal_group(process.pid, signal.SIGTERM)
            grace_end = self.clock() + self.grace_seconds
            self._pump(stream, output, grace_end)  # until every process holding the output is gone, or grace ends
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, grace_end - self.clock()))
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
        stream.close()
        return (None if timed_out else process.returncode), timed_out

    def _pump(self, stream: object, output: hook_output.BoundedLog, deadline: float) -> bool:
        """Copy output until end of file (True) or the deadline (False)."""
        fd = stream.fileno()  # type: ignore[attr-defined]
        os.set_blocking(fd, False)
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    remaining = deadline - self.clock()
                    if remaining <= 0:
                        return False
                    selector.select(remaining)
                    continue
                if not data:
                    return True
                output.write(data)
                if self.clock() >= deadline:  # a hook that never stops printing still ends on time
                    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def prune_logs(path: str, keep: set[str], extra: int = 20) -> None:
    """Remove hook logs of deployments that are gone, keeping the `extra` newest of those."""
    logs = os.path.join(records.meta_dir(path), "logs")
    if not os.path.isdir(logs):
        return
    gone = [e for e in os.scandir(logs) if e.is_dir(follow_symlinks=False) and e.name not in keep]
    gone.sort(key=lambda e: e.stat(follow_symlinks=False).st_mtime, reverse=True)
    for entry in gone[extra:]:
        shutil.rmtree(entry.path)
