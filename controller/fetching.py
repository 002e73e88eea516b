"""Fetching artifacts over http(s):// and file://, streamed, verified and retried.

The body is never buffered whole: a :class:`Download` is a readable stream that
hashes, counts and optionally copies (to the artifact cache) every byte as the
extractor pulls it. Redirects are followed here, not by a library, so that
headers from the manifest are dropped when the host changes.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import hashlib
import http.client
import io
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import IO, Any, TypeVar

import tenacity

from controller import errors

log = logging.getLogger(__name__)
T = TypeVar("T")
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


def redact_url(url: str) -> str:
    """The URL without credentials or query string, safe for logs and status."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "?<redacted>" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


class Download(io.RawIOBase):
    """A readable body that hashes, counts, copies and bounds what passes through it."""

    def __init__(self, raw: IO[bytes], url: str, *, max_bytes: int, deadline: float,
                 clock: Callable[[], float], sink: IO[bytes] | None = None) -> None:
        self._raw = raw
        self.url = url
        self._max_bytes = max_bytes
        self._deadline = deadline
        self._clock = clock
        self._sink = sink
        self._hash = hashlib.sha256()
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._clock() > self._deadline:
            raise errors.FetchError(f"downloading {redact_url(self.url)} took longer than its deadline")
        try:
            count = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        except (OSError, http.client.HTTPException) as exc:
            raise errors.FetchError(
                f"the download of {redact_url(self.url)} broke off after {self.received} bytes: "
                f"{type(exc).__name__} {exc}"
            ) from exc
        if count:
            view = memoryview(buffer)[:count]
            self._hash.update(view)
            if self._sink is not None:
                self._sink.write(view)
            self.received += count
            if self.received > self._max_bytes:
                raise errors.FetchRefused(
                    f"the artifact at {redact_url(self.url)} is larger than {self._max_bytes} bytes (limits.maxBytes)"
                )
        return int(count or 0)

    def drain(self) -> None:
        """Read to the end, so that the digest covers the whole body."""
        while self.read(1024 * 1024):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
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
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


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

    def open(self, url: str, headers: Mapping[str, str], *, max_bytes: int,
             sink: IO[bytes] | None = None) -> Download:
        """Start one download; raise FetchError (retry) or FetchRefused (do not)."""
        deadline = self.clock() + self.deadline_seconds
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "file":
            path = urllib.parse.unquote(parts.path)
            try:
                raw: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by Download
            except FileNotFoundError as exc:
                raise errors.FetchRefused(f"the artifact file {path} does not exist; check source.url") from exc
            except OSError as exc:
                raise errors.FetchRefused(f"the artifact file {path} cannot be read: {exc.strerror}") from exc
            return Download(raw, url, max_bytes=max_bytes, deadline=deadline, clock=self.clock, sink=sink)
        return self._open_http(url, dict(headers), max_bytes, deadline, sink)

    def _open_http(self, url: str, headers: dict[str, str], max_bytes: int, deadline: float,
                   sink: IO[bytes] | None) -> Download:
        for _ in range(MAX_REDIRECTS + 1):
            response = self._request(url, headers)
            location = response.getheader("Location")
            if response.status in REDIRECTS and location:
                response.close()
                target = urllib.parse.urljoin(url, location)
                old, new = urllib.parse.urlsplit(url), urllib.parse.urlsplit(target)
                if new.scheme not in ("http", "https") or (old.scheme, new.scheme) == ("https", "http"):
                    raise errors.FetchRefused(
                        f"{redact_url(url)} redirects to {redact_url(target)}; tether refuses to leave https "
                        "or to follow a redirect to a non-HTTP URL"
                    )
                if (old.scheme, old.netloc) != (new.scheme, new.netloc) and headers:
                    log.info("The redirect to %s leaves %s; its headers are not sent there.",
                             redact_url(target), old.netloc)
                    headers = {}
                url = target
                continue
            self._check(response, url)
            return Download(response, url, max_bytes=max_bytes, deadline=deadline, clock=self.clock, sink=sink)
        raise errors.FetchRefused(f"{redact_url(url)} redirects more than {MAX_REDIRECTS} times")

    def _request(self, url: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            raise errors.FetchRefused(f"{redact_url(url)} has no host name")
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            context = self.ssl_context or ssl.create_default_context()
            connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.connect_timeout, context=context)
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.connect_timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"Accept-Encoding": "identity", "User-Agent": "tether", **headers}
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.settimeout(self.read_timeout)
            connection.request("GET", target, headers=sent)
            return connection.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise errors.FetchError(f"cannot download {redact_url(url)}: {type(exc).__name__} {exc}") from exc

    def _check(self, response: http.client.HTTPResponse, url: str) -> None:
        where = redact_url(url)
        status = response.status
        if status == 200:
            encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
            if encoding != "identity":
                response.close()
                raise errors.FetchRefused(
                    f"{where} answered with Content-Encoding {encoding!r} although tether asked for identity; "
                    "configure the server to send the artifact as it is"
                )
            return
        response.close()
        message = f"{where} answered HTTP {status} {response.reason}"
        if status in (408, 429) or status >= 500:
            raise errors.FetchError(message, retry_after=_retry_after(response.getheader("Retry-After")))
        hint = "; check the URL and the deployment name" if status == 404 else "; check the URL and headers"
        raise errors.FetchRefused(message + hint)

    def retrying(self, attempt: Callable[[], T], cancel: threading.Event | None = None) -> T:
        """Run `attempt`, retrying TemporaryError with exponential back-off and jitter, until `cancel` is set."""
        jitter = tenacity.wait_exponential_jitter(initial=self.backoff_initial, max=self.backoff_max)

        def wait(state: Any) -> float:
            exc = state.outcome.exception()
            after = getattr(exc, "retry_after", None)
            return max(float(jitter(state)), min(after or 0.0, 10 * self.backoff_max))

        def before_sleep(state: Any) -> None:
            log.warning("Attempt %d failed: %s; retrying in %.1f s.", state.attempt_number,
                        state.outcome.exception(), state.next_action.sleep)

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
