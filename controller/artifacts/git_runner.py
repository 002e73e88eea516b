"""Running git for a git source, locked down, bounded in time and cancellable.

Every git command tether runs goes through :class:`Git`: no system or global
config (HOME and XDG_CONFIG_HOME are an empty private directory), no hooks, no
fsmonitor, no credential helper or prompt, no submodule recursion, and only the
protocol of the source's URL allowed. Credentials come from the manifest only:
https headers are handed to git as `http.extraHeader` through the
GIT_CONFIG_COUNT environment variables of the one process (the command line
would show them to every user in /proc; they are never written to a config
file), an ssh key is copied with mode 0600 into the private directory and given
to ssh with `IdentitiesOnly`, strict host key checking and the manifest's
known_hosts. Everything git prints is scrubbed of those secrets by a
:class:`secrets.Cleaner` before it can reach an error or a log.

A watcher thread kills the command's process group when the pass is cancelled
or the deadline passes, as a download is ended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO

from controller import errors
from controller.manifests import secrets

STDERR_KEPT = 64 * 1024
STREAM_PIPE_SIZE = 1024 * 1024  # a streamed command (git archive) writes this far ahead of its reader
TICK = 0.1
REDIRECTED = "returned error: 30"  # a 3xx that git did not follow (http.followRedirects in `arguments`)
# What git says when retrying cannot help; anything else (a refused connection, a timeout, a 5xx) is retried.
PERMANENT = ("authentication failed", "could not read username", REDIRECTED, "returned error: 401",
             "returned error: 403", "returned error: 404", "returned error: 410", "not found",
             "does not appear to be a git repository", "host key verification failed", "permission denied",
             "couldn't find remote ref", "no such remote ref", "not our ref", "unsupported", "is not a valid",
             "invalid refspec", "repository not exported")
FSCK_REFUSED = "fsck error"  # transfer.fsckObjects refused an object the server sent (a `..` or `.git` entry, ...)


def _ended(out: IO[bytes]) -> bool:
    """Whether the writer of the pipe `out` closed it (it exited, or is exiting), without waiting."""
    try:
        readable, _, _ = select.select([out], [], [], 0)
        return bool(readable) and not os.read(out.fileno(), 1)
    except (OSError, ValueError):
        return False


class BadObject(errors.PermanentError):
    """The fetch was refused: the server sent an object that git's checks refuse."""


@dataclasses.dataclass(frozen=True)
class Access:
    """How to reach one repository: its URL and the credentials from the manifest (already resolved)."""

    url: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ssh_key: str | None = None  # the private key's text
    known_hosts: str | None = None

    @property
    def scheme(self) -> str:
        return urllib.parse.urlsplit(self.url).scheme

    def cleaner(self) -> secrets.Cleaner:
        key_lines = [line for line in (self.ssh_key or "").splitlines() if len(line) >= 16]
        return secrets.Cleaner.of([*self.headers.values(), *key_lines, *([self.ssh_key] if self.ssh_key else [])])


def shown_url(url: str) -> str:
    """The URL without any user, password, query or fragment: for errors and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def ssh_command(key_file: str | None, known_hosts: str) -> str:
    """The GIT_SSH_COMMAND for an ssh:// source: no user config, no agent, strict host keys, only `key_file`."""
    words = ["ssh", "-F", "/dev/null", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
             "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "IdentityAgent=none", "-o", "ForwardAgent=no", "-o", "ConnectTimeout=30"]
    # Without -i, ssh would offer the default identities of the user tether runs as (root's ~/.ssh/id_*, found
    # through the password database whatever HOME says): only the manifest's key, or none at all.
    words += ["-i", key_file] if key_file is not None else ["-o", "IdentityFile=none"]
    return " ".join(shlex.quote(word) for word in words)


def permanent(stderr: str) -> bool:
    """True when git's complaint is one that retrying cannot fix."""
    lowered = stderr.lower()
    return any(text in lowered for text in PERMANENT)


class Git:
    """git commands on one bare repository (`git_dir`), for one pass; use as a context manager."""

    def __init__(self, git_dir: str, access: Access | None = None, *, cancel: threading.Event | None = None,
                 timeout_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 executable: str = "git") -> None:
        self.git_dir = git_dir
        self.access = access or Access(url="file:///")
        self.cancel = cancel
        self.deadline = clock() + timeout_seconds
        self.timeout_seconds = timeout_seconds
        self.clock = clock
        self.executable = executable
        self.clean = self.access.cleaner()
        self._private = tempfile.mkdtemp(prefix="tether-git-")
        os.mkdir(os.path.join(self._private, "home"), 0o700)
        self._key_file: str | None = None
        if self.access.ssh_key is not None:
            self._key_file = os.path.join(self._private, "key")
            fd = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(self.access.ssh_key.rstrip("\n") + "\n")

    def __enter__(self) -> Git:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self._private, ignore_errors=True)

    @property
    def private_dir(self) -> str:
        """A directory only this pass uses (e.g. for a GNUPGHOME); removed with the runner."""
        return self._private

    def environment(self, network: bool, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        home = os.path.join(self._private, "home")
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": home,
               "XDG_CONFIG_HOME": home, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
               "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false",
               "GIT_NO_REPLACE_OBJECTS": "1", "GIT_ATTR_NOSYSTEM": "1", "LC_ALL": "C", "GIT_DIR": self.git_dir,
               "GIT_SSH_COMMAND": "/bin/false", "GIT_PROTOCOL_FROM_USER": "0"}
        if network and self.access.scheme == "ssh":
            env["GIT_SSH_COMMAND"] = ssh_command(self._key_file, self.access.known_hosts or "/dev/null")
            env["GIT_SSH_VARIANT"] = "ssh"
        if network and self.access.headers:  # in this process's environment only: never argv, never a file
            pairs = [("http.extraHeader", f"{name}: {value}") for name, value in self.access.headers.items()]
            env["GIT_CONFIG_COUNT"] = str(len(pairs))
            for index, (key, value) in enumerate(pairs):
                env[f"GIT_CONFIG_KEY_{index}"], env[f"GIT_CONFIG_VALUE_{index}"] = key, value
        env.update(extra or {})
        return env

    def arguments(self, args: Sequence[str]) -> list[str]:
        scheme = self.access.scheme
        config = {"core.hooksPath": "/dev/null", "protocol.allow": "never", f"protocol.{scheme}.allow": "always",
                  "credential.helper": "", "core.askPass": "/bin/false", "submodule.recurse": "false",
                  "fetch.recurseSubmodules": "false", "core.fsmonitor": "false", "safe.directory": self.git_dir,
                  "gc.auto": "0", "maintenance.auto": "false", "transfer.fsckObjects": "true",
                  "http.followRedirects": "false" if self.access.headers else "initial", "tar.umask": "022",
                  "core.sshCommand": "/bin/false", "uploadpack.allowFilter": "false", "advice.detachedHead": "false",
                  # No signature program but the one git_verify names: git picks it by the signature's own format,
                  # and `$Format:%G?$` would start one per occurrence.
                  "gpg.program": "/bin/false", "gpg.ssh.program": "/bin/false", "gpg.x509.program": "/bin/false"}
        if scheme == "file":
            config["safe.directory"] = "*"  # also for the upload-pack of a local repository another user owns
        words = [self.executable]
        for key, value in config.items():
            words += ["-c", f"{key}={value}"]
        return words + list(args)

    def _spawn(self, args: Sequence[str], network: bool, stdout: IO[bytes] | int, stderr: IO[bytes],
               stdin: int | IO[bytes], extra_env: Mapping[str, str] | None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.arguments(args), stdin=stdin, stdout=stdout, stderr=stderr,
                                env=self.environment(network, extra_env), cwd=self._private,
                                start_new_session=True, close_fds=True)

    def _watch(self, process: subprocess.Popen[bytes], why: list[str]) -> tuple[threading.Thread, threading.Event]:
        """A thread that kills the process group once the pass is cancelled or the deadline passes; set the
        event it returns when the process has ended."""
        done = threading.Event()

        def run() -> None:
            while not done.wait(TICK):
                reason = "cancelled" if self.cancel is not None and self.cancel.is_set() else \
                    "timeout" if self.clock() > self.deadline else None
                if reason is not None:
                    why.append(reason)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
                    return

        thread = threading.Thread(target=run, name="git watch", daemon=True)
        thread.start()
        return thread, done

    def _failure(self, args: Sequence[str], why: list[str], code: int, stderr: str,
                 what: str) -> errors.TetherError:
        if why and why[0] == "cancelled":
            return errors.Cancelled(f"{what} was cancelled: the desired state changed")
        if why:
            return errors.TemporaryError(f"{what} took longer than {self.timeout_seconds:g} s and was stopped; "
                                         "it is retried")
        text = self.clean.text(" ".join(stderr.split()), secrets.MESSAGE_CHARS // 2)
        if code < 0:
            text = f"{text}; " * bool(text) + f"git was killed by signal {-code} ({signal.strsignal(-code)})"
        text = text or f"exit status {code}"
        message = f"{what} failed: {text}"
        if REDIRECTED in stderr.lower():
            message += ("; tether follows no git redirect while it sends the source's headers (they would go wherever "
                        "the server says), and no other redirect but the first: set source.git.url to the "
                        "repository's own URL")
        if FSCK_REFUSED in stderr.lower():
            return BadObject(message + "; the repository holds an object that git's checks refuse (named above): "
                             "fix or delete the ref that reaches it on the server")
        return errors.PermanentError(message) if permanent(stderr) else errors.TemporaryError(message)

    def run(self, *args: str, network: bool = False, what: str = "git", stdin: bytes | None = None,
            extra_env: Mapping[str, str] | None = None, check: bool = True) -> tuple[int, bytes, str]:
        """Run one command to its end; (exit status, stdout, cleaned stderr). With `check`, a non-zero exit
        raises TemporaryError or PermanentError (by what git said), cleaned of secrets."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                tempfile.TemporaryFile() as given:
            given.write(stdin or b"")
            given.seek(0)
            process = self._spawn(args, network, out, err, given, extra_env)
            why: list[str] = []
            watcher, done = self._watch(process, why)
            code = process.wait()
            done.set()
            watcher.join()
            out.seek(0)
            err.seek(max(0, err.seek(0, os.SEEK_END) - STDERR_KEPT))
            stderr = err.read().decode("utf-8", "replace")
            output = out.read()
        if why or (check and code != 0):
            raise self._failure(args, why, code, stderr, what)
        return code, output, self.clean.text(stderr, secrets.MESSAGE_CHARS)

    @contextlib.contextmanager
    def stream(self, *args: str, what: str = "git") -> Iterator[IO[bytes]]:
        """Run one command and yield its stdout as a stream; a failure (or being stopped) raises at the end."""
        with tempfile.TemporaryFile() as err:
            process = self._spawn(args, False, subprocess.PIPE, err, subprocess.DEVNULL, None)
            why: list[str] = []
            watcher, done = self._watch(process, why)
            assert process.stdout is not None
            with contextlib.suppress(OSError):  # the default 64 KiB: git stops at every pause of its reader
                fcntl.fcntl(process.stdout.fileno(), fcntl.F_SETPIPE_SZ, STREAM_PIPE_SIZE)
            error: BaseException | None = None
            stopped = False
            try:
                yield process.stdout
            except BaseException as exc:
                error = exc
                stopped = not _ended(process.stdout)  # git still writes: stop it (its status then says nothing)
                if stopped:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
            finally:
                process.stdout.close()
                code = process.wait()
                done.set()
                watcher.join()
            err.seek(max(0, err.seek(0, os.SEEK_END) - STDERR_KEPT))
            stderr = err.read().decode("utf-8", "replace")
        if error is not None and (stopped or not (why or code != 0)):
            raise error
        if why or code != 0:  # git's own failure (or crash) explains a stream that ended short
            raise self._failure(args, why, code, stderr, what) from error
