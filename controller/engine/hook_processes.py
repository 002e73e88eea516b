"""Hooks never outlive the tether that started them, and never run beside a copy left by one that died.

Three guards, because each alone has a gap:

- The hook's own process gets PR_SET_PDEATHSIG(SIGKILL), set after it took the hook's user (a change of
  credentials clears it). The kernel sends it when the *thread* that forked the hook ends: the daemon forks
  hooks from its worker threads, which live until their pass (and so the hook) has ended.
- A watchdog (`/bin/sh`, as tether's user, in a session of its own) waits on a pipe that only tether holds;
  when it reads end of file without "done" (tether died), it kills the hook's whole process group, so the
  hook's children die too (PDEATHSIG is not inherited).
- The hook's process group, its leader's pid and start time (and the boot id) are recorded in
  `<path>/.tether/running-hook.json` while it runs. Each pass, under the application lock and before it starts
  anything, stops a group that survived (TERM, a grace, then KILL) if the recorded process is still the one
  that was started: a pid that was reused by another process (another start time) is never signalled.

What tether promises is the hook's process group: a process that leaves it (setsid, setpgid, a double fork
into a new session) is out of tether's reach, as it is out of any shell's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from controller import formats, fsutil
from controller.tree import records

log = logging.getLogger(__name__)

RECORD = os.path.basename(records.running_hook_path("/"))  # records.observe checks its format too
PR_SET_PDEATHSIG = 1
WATCHDOG = 'read -r line; [ "$line" = done ] || kill -s KILL -- "-$1" 2>/dev/null'
_prctl = fsutil.LIBC.prctl


def die_with_parent() -> Callable[[], None]:
    """A preexec function for a hook: SIGKILL when the thread that forked it ends, and no signal blocked (the
    daemon's workers block SIGTERM, SIGINT and SIGHUP for its main thread, and a child inherits the mask of the
    thread that forked it). It only calls a C function resolved here, before the fork, and os and signal
    functions, so it is safe in a threaded process."""
    parent = os.getpid()

    def preexec() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # tether died before the signal was armed
            os._exit(1)

    return preexec


class Watchdog:
    """Kills process group `pgid` if tether dies before `release()`."""

    def __init__(self, pgid: int) -> None:
        read_end, self._write_end = os.pipe()
        try:
            self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
                ["/bin/sh", "-c", WATCHDOG, "tether-hook-watchdog", str(pgid)], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        except OSError as exc:
            log.warning("tether could not start the watchdog of hook process group %d (%s); if tether dies, the "
                        "next pass stops the hook.", pgid, exc)
            self.process = None
        finally:
            os.close(read_end)

    def release(self) -> None:
        """The hook has ended: the watchdog exits without killing anything."""
        with contextlib.suppress(OSError):
            os.write(self._write_end, b"done\n")
        os.close(self._write_end)
        if self.process is not None:
            self.process.wait()


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].decode("ascii").split()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def start_time(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot; None if it does not exist or has ended."""
    fields = _stat(pid)
    return int(fields[19]) if fields and fields[0] != "Z" else None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _members(pgid: int, since: int) -> Iterator[int]:
    """Living processes of group `pgid` started at or after `since`."""
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] != "Z" \
                    and int(fields[2]) == pgid and int(fields[19]) >= since:
                yield int(entry.name)


@contextlib.contextmanager
def recorded(path: str, pid: int, **about: Any) -> Iterator[None]:
    """Record the running hook (process group `pid`) in `<path>/.tether` while the block runs."""
    record = os.path.join(records.meta_dir(path), RECORD)
    started = start_time(pid)
    try:
        if started is not None:
            fsutil.atomic_write_json(record, formats.stamped({"pid": pid, "pgid": pid, "startTime": started,
                                                              "bootId": _boot_id(), **about}), mode=0o600)
    except OSError as exc:
        log.warning("tether could not record the running hook in %s (%s); if tether dies, its watchdog still "
                    "stops the hook.", record, exc)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(record)


def stop_survivor(name: str, path: str, grace_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic,
                  pause: Callable[[float], None] = time.sleep) -> bool:
    """Stop the process group of a hook that outlived the tether that started it; True if there was one."""
    record = os.path.join(records.meta_dir(path), RECORD)
    try:
        data = fsutil.read_json(record)
    except (OSError, ValueError):
        data = None
    formats.check(data, record)  # a newer tether's hook file is left as it is: NewerFormat
    if data is None and not os.path.lexists(record):
        return False
    found = _survivor(data)
    if found is not None:
        pgid, started = found
        log.warning("%s: the %s hook of %s for %s (process group %d) outlived the tether that started it; "
                    "stopping it before this pass starts anything.", name, data.get("phase"), data.get("source"),
                    data.get("deployment"), pgid)
        _stop_group(pgid, started, grace_seconds, clock, pause)
    try:
        os.unlink(record)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("%s: tether could not remove %s (%s); remove it by hand.", name, record, exc)
    return found is not None


def _survivor(data: Any) -> tuple[int, int] | None:
    """(process group, start time) of the recorded hook if any process of it still lives."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), int) and data[k] > 1
                                             for k in ("pid", "pgid", "startTime")):
        return None
    if data.get("bootId") != _boot_id():
        return None  # started before a reboot: every process of it is gone
    pid, pgid, started = data["pid"], data["pgid"], data["startTime"]
    now = start_time(pid)
    if now is not None:
        return (pgid, started) if now == started else None  # another start time: the pid was reused
    # The leader is gone; while any member lives, the group's id cannot be reused, so members are the hook's.
    return (pgid, started) if next(_members(pgid, started), None) is not None else None


def _stop_group(pgid: int, started: int, grace_seconds: float, clock: Callable[[], float],
                pause: Callable[[float], None]) -> None:
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, grace_seconds)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = clock() + wait
        while next(_members(pgid, started), None) is not None:
            if clock() >= deadline:
                break
            pause(0.05)
        else:
            return
    log.error("Process group %d of a hook is still alive after SIGKILL; see `ps -g %d`.", pgid, pgid)
