"""Health checks (design section 11): probe an activated deployment until it has been healthy long enough.

A probe is an HTTP GET or a command run like a hook. The deployment is healthy once probes have passed
continuously for `healthySeconds` (from the start of the first passing probe of a run to the start of the
last); a failed probe starts the count again. Not healthy by the deadline (`deadlineSeconds` after probing
started, a wall-clock time kept in the deployment's record so that a restarted tether keeps it) raises
`Unhealthy`, which the engine treats as an afterActivate failure.

HTTP probes go to the URL as given: no redirect is followed (a 3xx is a failed probe unless expectStatus lists
it), no proxy is used, no credentials or manifest headers are sent, and a probe never takes longer than
`timeoutSeconds` however slowly the server answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable

from controller import errors, within
from controller.engine import hooks
from controller.manifests import model

log = logging.getLogger(__name__)

SUCCESS, FAILURE, TIMEOUT = hooks.SUCCESS, hooks.FAILURE, hooks.TIMEOUT
OUTCOMES = (SUCCESS, FAILURE, TIMEOUT)
PHASE = "healthCheck"  # HOOK_NAME of a command probe, and the name of its log
LOG_LIMIT = 1024 * 1024  # the log starts afresh (with the latest probes) once it holds this much
BODY_LIMIT = 64 * 1024  # bytes of an answer read (then dropped), so the connection ends cleanly


class Unhealthy(errors.TemporaryError):
    """The deployment was not healthy by its deadline."""


class Interrupted(errors.TemporaryError):
    """Probing stopped before a verdict (tether is stopping or the desired state changed); the next pass resumes."""


@dataclasses.dataclass(frozen=True)
class Probe:
    outcome: str  # success | failure | timeout
    message: str  # what happened, in words: "GET http://... answered 503"


@dataclasses.dataclass(frozen=True)
class Report:
    """A verdict: healthy (with how it was shown) or not."""

    deployment: str
    healthy: bool
    message: str


def http_status(url: str, timeout: float) -> int:
    """GET `url` once, within `timeout` seconds in all, following nothing; the status code.

    Raises TimeoutError when the server does not answer in time, OSError when it cannot be reached."""
    import http.client  # with ssl, only a pass that runs an HTTP check imports them
    import socket
    import ssl

    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)

    def ask() -> int:
        connection.request("GET", target, headers={"User-Agent": "tether-health-check", "Connection": "close"})
        response = connection.getresponse()
        response.read(BODY_LIMIT)
        return response.status

    def cut() -> None:  # a server that trickles its answer: end the connection from here
        with contextlib.suppress(OSError):
            if connection.sock is not None:
                connection.sock.shutdown(socket.SHUT_RDWR)
        connection.close()

    try:
        return within.bounded(ask, timeout, cut, "tether-health-probe")
    except TimeoutError as exc:  # socket.timeout too
        raise TimeoutError(f"no answer within {timeout:g} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise OSError(str(exc) or type(exc).__name__) from exc
    finally:
        connection.close()


def _wait(cancel: threading.Event | None, seconds: float) -> bool:
    """Wait `seconds`; True if `cancel` was set meanwhile."""
    if cancel is None:
        time.sleep(max(0.0, seconds))
        return False
    return cancel.wait(max(0.0, seconds))


@dataclasses.dataclass
class Prober:
    """Probes a deployment until it is healthy, its deadline passes, or `cancel` is set."""

    get: Callable[[str, float], int] = http_status
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    wait: Callable[[threading.Event | None, float], bool] = _wait

    def prove(self, app: model.Application, runner: hooks.Runner, deployment: str, previous: str | None,
              since: float, on_probe: Callable[[Probe], None], cancel: threading.Event | None = None,
              resumed: bool = False) -> Report:
        """Probe until healthy (a Report) or the deadline, `since` (wall clock) + deadlineSeconds (Unhealthy)."""
        check = app.health_check
        assert check is not None
        deadline = self.clock() + (since + check.deadline_seconds - self.wall_clock())
        streak: float | None = None  # when the current run of passing probes started
        passed, last, count = 0, "the deadline passed before a probe could run (was tether stopped?)", 0
        while (now := self.clock()) < deadline:
            timeout = min(check.timeout_seconds, deadline - now)
            probe = self._probe(app, check, runner, deployment, previous, timeout, append=resumed or count > 0)
            count += 1
            on_probe(probe)
            if probe.outcome == SUCCESS:
                streak, passed = (now, 0) if streak is None else (streak, passed)
                passed += 1
                if now - streak >= check.healthy_seconds:
                    message = f"{passed} probes passed over {now - streak:.1f} s"
                    log.info("%s: %s is healthy: %s.", app.name, deployment, message)
                    return Report(deployment, True, message)
                last = f"probes passed for {now - streak:.1f} s, less than healthySeconds ({check.healthy_seconds:g})"
            else:
                streak, last = None, probe.message
                log.warning("%s: a health check probe of %s failed: %s.", app.name, deployment, probe.message)
            if self.wait(cancel, min(now + check.interval_seconds, deadline) - self.clock()):
                raise Interrupted(f"{app.name}: probing {deployment} was interrupted; the next pass resumes it")
        raise Unhealthy(f"{deployment} was not healthy within deadlineSeconds ({check.deadline_seconds:g} s) of "
                        f"the start of probing ({count} probes): {last}")

    def _probe(self, app: model.Application, check: model.HealthCheck, runner: hooks.Runner, deployment: str,
               previous: str | None, timeout: float, append: bool) -> Probe:
        if check.url is not None:
            try:
                code = self.get(check.url, timeout)
            except TimeoutError:
                return Probe(TIMEOUT, f"GET {check.url} did not answer within {timeout:g} s")
            except OSError as exc:
                return Probe(FAILURE, f"GET {check.url} failed: {exc}")
            if code in check.expect_status:
                return Probe(SUCCESS, f"GET {check.url} answered {code}")
            return Probe(FAILURE, f"GET {check.url} answered {code}" + (
                " (a redirect, which tether never follows)" if 300 <= code < 400 else ""))
        assert check.command is not None
        log_path = os.path.join(app.path, ".tether", "logs", deployment, f"{PHASE}.log")
        with contextlib.suppress(OSError):
            append = append and os.lstat(log_path).st_size < LOG_LIMIT
        run = runner.run_one(PHASE, check.command, app, deployment, previous, timeout, append=append)
        if run.outcome == SUCCESS:
            return Probe(SUCCESS, "the health check command exited with status 0")
        how = f"timed out after {timeout:g} s" if run.outcome == TIMEOUT else hooks.ended(run.exit_code)
        tail = run.output_tail.strip().splitlines()[-1:] or [""]
        return Probe(run.outcome, f"the health check command {how} (output in {run.log}; last line: {tail[0][:200]!r})")
