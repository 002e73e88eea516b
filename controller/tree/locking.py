"""One lock per application, shared by the daemon and the imperative commands, and one per daemon."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from collections.abc import Iterator

from controller import errors, fsutil

log = logging.getLogger(__name__)


def lock_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, "locks", name + ".lock")


@contextlib.contextmanager
def application_lock(state_dir: str, name: str, wait: bool = True) -> Iterator[bool]:
    """Hold the application's lock (flock on a file that is never deleted); yields True. With `wait` False,
    yields False at once, holding nothing, when another process or thread holds it."""
    path = lock_path(state_dir, name)
    try:
        fd = _open_lock(path)  # the locks directory exists but for the first lock (one open, not mkdir + stat)
    except FileNotFoundError:  # no locks directory yet, or another pass has just made it: it exists after this
        fsutil.makedirs(os.path.dirname(path), 0o700)
        fd = _open_lock(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            log.info("Another tether process is working on %s; waiting for it to finish.", name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)


def _open_lock(path: str) -> int:
    """Open (create) a lock file: a regular file, never through a symlink, never blocking on a FIFO.
    FileNotFoundError when its directory is missing."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise errors.PermanentError(f"tether cannot open its lock file {path} ({exc.strerror}); it must be a "
                                    "regular file: remove whatever is there and tether creates it") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise errors.PermanentError(f"tether's lock file {path} is not a regular file; remove it and tether "
                                    "creates it")
    return fd


def daemon_lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, "daemon.lock")


@contextlib.contextmanager
def daemon_lock(state_dir: str) -> Iterator[bool]:
    """Hold the state dir's daemon lock while the block runs; yields False when another daemon has it."""
    fd = _open_lock(daemon_lock_path(state_dir))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def daemon_running(state_dir: str) -> bool:
    """Whether a `tether run` holds this state dir."""
    try:
        fd = os.open(daemon_lock_path(state_dir), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    except OSError:  # not a file tether made: no daemon holds it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
