"""Fetching artifacts over http(s):// and file://, streamed, verified and retried.

The body is never buffered whole: a :class:`Download` is a readable stream that
hashes, counts and optionally copies (to the artifact cache) every byte as the
extractor pulls it. Redirects are followed here, not by a library, so that
headers from the manifest are dropped when the host changes.

Everything a server says (reason phrase, status line, headers, a body excerpt,
the text of a protocol error) is server-supplied text: every error raised here
passes through one :class:`secrets.Cleaner`, which redacts the secrets sent with the
request in any form a server may echo them, drops control characters and
bounds the length, before it can reach a log, an error, a status file or a
metric. A :class:`download_watch.Watch` ends a download promptly when the pass
is cancelled, the server stalls or the deadline passes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import math
import os
import stat
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar

from controller import errors
from controller.artifacts import download_watch
from controller.manifests import secrets

if TYPE_CHECKING:  # imported where an http(s) download needs them: a file:// deploy starts without them
    import http.client
    import socket
    import ssl

log = logging.getLogger(__name__)
T = TypeVar("T")
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
BODY_EXCERPT_BYTES = 512
STALL_SECONDS = 60.0


def redact_url(url: str) -> str:
    """The URL without credentials or query string, safe for logs and status."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "?<redacted>" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


class Sink(Protocol):
    """Where a download's bytes are copied as they pass (the artifact cache), or, for a file:// download, told
    which file is read (before it is: the sink may copy the file instead of what passes)."""

    def write(self, data: bytes, /) -> object: ...

    def read_from(self, fd: int, /) -> object: ...


class Download(io.RawIOBase):
    """A readable body that hashes, counts, copies and bounds what passes through it."""

    def __init__(self, raw: IO[bytes], url: str, *, max_bytes: int, deadline: float = math.inf,
                 clock: Callable[[], float] = time.monotonic, sink: Sink | None = None,
                 watch: download_watch.Watch | None = None, clean: secrets.Cleaner | None = None,
                 length: int | None = None, broken: tuple[type[Exception], ...] = (OSError, ValueError)) -> None:
        self._raw = raw
        self._broken = broken  # what a read of `raw` raises when the transfer breaks off
        self.url = url
        self._max_bytes = max_bytes
        self._watch = watch or download_watch.Watch(redact_url(url), cancel=None, stall_seconds=STALL_SECONDS,
                                                     deadline=deadline, clock=clock)
        self._clean = clean or secrets.Cleaner.of(secrets.url_secrets(url))
        self._length = length
        self._sink = sink
        self._hash = hashlib.sha256()
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        with self._clean.errors():
            return self._readinto(buffer)

    def _readinto(self, buffer: bytearray | memoryview) -> int:
        where = redact_url(self.url)
        try:
            with self._watch.waiting():
                data = self._raw.read1(len(buffer))  # type: ignore[attr-defined]  # what has arrived, not all
        except self._broken as exc:
            self._watch.check()  # a cancel or stall shut the socket down: say that
            raise errors.FetchError(f"the download of {where} broke off after {self.received} bytes: "
                                    f"{self._clean.error(exc)}") from None
        count = len(data)
        if not count and len(buffer):
            self._watch.check()
            if self._length is not None and self.received < self._length:
                raise errors.FetchError(f"the connection closed after {self.received} of the {self._length} bytes "
                                        f"of {where}; the next attempt downloads it again")
            return 0
        buffer[:count] = data
        self._hash.update(data)
        if self._sink is not None:
            self._sink.write(data)
        self.received += count
        self._watch.progress(count)
        if self.received > self._max_bytes:
            raise errors.FetchRefused(f"the artifact at {where} is larger than {self._max_bytes} bytes (limits.maxBytes)")
        return count

    def drain(self) -> None:
        """Read to the end, so that the digest covers the whole body."""
        while self.read(1024 * 1024):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        self._watch.close()
        try:
            self._raw.close()
        finally:
            super().close()


def _wait(event: threading.Event, seconds: float) -> None:
    """Sleep for a retry, waking early when the retries are cancelled."""
    event.wait(seconds)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    import email.utils  # an HTTP date: only a server that asked for a later retry needs the parser

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _excerpt(response: http.client.HTTPResponse, sock: socket.socket | None) -> str:
    """The start of an error body, if it arrives at once (one read, a short timeout), on one line."""
    import http.client  # loaded by the request already

    try:
        if sock is not None:
            sock.settimeout(2.0)
        data = response.read1(BODY_EXCERPT_BYTES)
    except (OSError, ValueError, http.client.HTTPException):
        return ""
    return " ".join(data.decode("utf-8", "replace").split())


@dataclasses.dataclass(frozen=True)
class Retry:
    """A failed attempt that is retried: attempt `failed` of `attempts` failed with `error`; the next starts
    `delay` seconds from now."""

    failed: int
    attempts: int
    delay: float
    error: str


@dataclasses.dataclass(frozen=True)
class Fetcher:
    """Opens artifact URLs with timeouts, a deadline, redirects and retries."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    deadline_seconds: float = 3600.0
    attempts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    ssl_context: ssl.SSLContext | None = None

    def open(self, url: str, headers: Mapping[str, str], *, max_bytes: int, sink: Sink | None = None,
             cancel: threading.Event | None = None, stall_seconds: float = STALL_SECONDS) -> Download:
        """Start one download; raise FetchError (retry) or FetchRefused (do not), each cleaned of secrets."""
        clean = secrets.Cleaner.of([*headers.values(), *secrets.url_secrets(url)])
        watch = download_watch.Watch(redact_url(url), cancel=cancel, stall_seconds=stall_seconds,
                                     deadline=self.clock() + self.deadline_seconds, clock=self.clock)
        try:
            with clean.errors():
                return self._open(url, dict(headers), max_bytes, sink, watch, clean)
        except BaseException:
            watch.close()
            raise

    def _open(self, url: str, headers: dict[str, str], max_bytes: int, sink: Sink | None,
              watch: download_watch.Watch, clean: secrets.Cleaner) -> Download:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "file":
            return self._open_http(url, headers, max_bytes, sink, watch, clean)
        path = urllib.parse.unquote(parts.path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            raise errors.FetchRefused(f"the artifact file {path} does not exist; check source.url") from None
        except OSError as exc:
            raise errors.FetchRefused(f"the artifact file {path} cannot be read: {exc.strerror}") from None
        raw = open(fd, "rb")  # noqa: SIM115 - closed by Download
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raw.close()
            raise errors.FetchRefused(f"the artifact file {path} is not a regular file; check source.url")
        if sink is not None:
            sink.read_from(fd)
        return Download(raw, url, max_bytes=max_bytes, watch=watch, clean=clean, length=st.st_size, sink=sink)

    def _open_http(self, url: str, headers: dict[str, str], max_bytes: int, sink: Sink | None,
                   watch: download_watch.Watch, clean: secrets.Cleaner) -> Download:
        import http.client  # with ssl and email's header parser, tens of milliseconds a file:// deploy does not pay

        for _ in range(MAX_REDIRECTS + 1):
            response = self._request(url, headers, watch, clean)
            location = response.getheader("Location")
            if response.status in REDIRECTS and location:
                response.close()
                try:  # the server's Location: a port out of range or a broken IPv6 address is its mistake
                    target = urllib.parse.urljoin(url, location)
                    old, new = urllib.parse.urlsplit(url), urllib.parse.urlsplit(target)
                    valid = bool(new.hostname) and (new.port is None or new.port > 0)
                except ValueError:
                    valid = False
                if not valid:
                    response.close()
                    raise errors.FetchRefused(f"{redact_url(url)} redirects to {clean.text(location)[:200]!r}, which "
                                              "is not a valid URL with a host; fix the server's redirect")
                if new.scheme not in ("http", "https") or (old.scheme, new.scheme) == ("https", "http"):
                    raise errors.FetchRefused(
                        f"{redact_url(url)} redirects to {clean.text(redact_url(target))}; tether refuses to leave "
                        "https or to follow a redirect to a non-HTTP URL"
                    )
                if (old.scheme, old.netloc) != (new.scheme, new.netloc) and headers:
                    log.info("The redirect to %s leaves %s; its headers are not sent there.",
                             clean.text(redact_url(target)), old.netloc)
                    headers = {}
                url = target
                continue
            self._check(response, url, clean, watch)
            return Download(response, url, max_bytes=max_bytes, watch=watch, clean=clean, length=response.length,
                            sink=sink, broken=(OSError, ValueError, http.client.HTTPException))
        raise errors.FetchRefused(f"{redact_url(url)} redirects more than {MAX_REDIRECTS} times")

    def _request(self, url: str, headers: Mapping[str, str], watch: download_watch.Watch,
                 clean: secrets.Cleaner) -> http.client.HTTPResponse:
        import http.client
        import ssl

        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port  # a ValueError when out of range (a URL given by `tether deploy --url`)
        except ValueError as exc:
            raise errors.FetchRefused(f"{clean.text(redact_url(url))} is not a valid URL ({exc}); fix it") from None
        if not parts.hostname:
            raise errors.FetchRefused(f"{redact_url(url)} has no host name")
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            context = self.ssl_context or ssl.create_default_context()
            connection = http.client.HTTPSConnection(parts.hostname, port, timeout=self.connect_timeout, context=context)
        else:
            connection = http.client.HTTPConnection(parts.hostname, port, timeout=self.connect_timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"Accept-Encoding": "identity", "User-Agent": "tether", **headers}
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(self.read_timeout)
            watch.attach(connection.sock)
            with watch.waiting():
                connection.request("GET", target, headers=sent)
                return connection.getresponse()
        except UnicodeError:
            connection.close()
            raise errors.FetchRefused("a header value is not ASCII (or Latin-1) text, which HTTP cannot carry; "
                                      "fix the header's source") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            connection.close()
            watch.check()
            raise errors.FetchError(f"cannot download {redact_url(url)}: {clean.error(exc)}") from None
        except BaseException:
            connection.close()
            raise

    def _check(self, response: http.client.HTTPResponse, url: str, clean: secrets.Cleaner,
               watch: download_watch.Watch) -> None:
        where = clean.text(redact_url(url))
        status = response.status
        if status == 200:
            encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
            if encoding != "identity":
                response.close()
                raise errors.FetchRefused(
                    f"{where} answered with Content-Encoding {clean.text(encoding)!r} although tether asked for "
                    "identity; configure the server to send the artifact as it is"
                )
            return
        message = f"{where} answered HTTP {status} {clean.text(response.reason or '')}".rstrip()
        challenge = response.getheader("WWW-Authenticate") if status == 401 else None
        if challenge:
            message += f" (it asks for {clean.text(challenge)})"
        if excerpt := _excerpt(response, watch.sock):
            message += f": {clean.text(excerpt)}"
        response.close()
        if status in (408, 429) or status >= 500:
            raise errors.FetchError(message, retry_after=_retry_after(response.getheader("Retry-After")))
        hint = "; check the URL and the deployment name" if status == 404 else "; check the URL and headers"
        raise errors.FetchRefused(message + hint)

    def retrying(self, attempt: Callable[[], T], cancel: threading.Event | None = None,
                 on_retry: Callable[[Retry], None] = lambda retry: None) -> T:
        """Run `attempt`, retrying TemporaryError with exponential back-off and jitter, until `cancel` is set;
        `on_retry` hears of each failed attempt that is retried, before the wait."""
        import tenacity  # a pass that downloads; other commands start without it

        jitter = tenacity.wait_exponential_jitter(initial=self.backoff_initial, max=self.backoff_max)

        def wait(state: Any) -> float:
            exc = state.outcome.exception()
            after = getattr(exc, "retry_after", None)
            return max(float(jitter(state)), min(after or 0.0, 10 * self.backoff_max))

        def before_sleep(state: Any) -> None:
            log.warning("Attempt %d failed: %s; retrying in %.1f s.", state.attempt_number,
                        state.outcome.exception(), state.next_action.sleep)
            on_retry(Retry(state.attempt_number, self.attempts, state.next_action.sleep,
                           str(state.outcome.exception())))

        stop = tenacity.stop_after_attempt(self.attempts)
        retrying = tenacity.Retrying(
            stop=stop if cancel is None else stop | tenacity.stop_when_event_set(cancel),
            wait=wait,
            retry=tenacity.retry_if_exception_type(errors.TemporaryError),
            sleep=self.sleep if cancel is None else functools.partial(_wait, cancel),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(attempt)
