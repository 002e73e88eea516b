"""The rollout gate (design section 11): one Prometheus instant query, and whether its answer lets waves open.

The gate holds only when `GET <prometheus>/api/v1/query?query=...` answers HTTP 200 with JSON whose status is
"success" and whose data.result is an empty vector or matrix. Anything else is closed, and the answer says why:
an unreachable server, a timeout, another HTTP status, a body that is not JSON or too large, a status "error",
series in the result ("ALERTS returned 1 series"), a scalar or string result. No data never passes.

One question is bounded: `timeoutSeconds` for the whole exchange (connecting, the headers and the body), at
most MAX_BYTES of body, redirects followed only within the same scheme, host and port (MAX_REDIRECTS), no
proxies, no credentials sent. `Cache` keeps each application's last answer for the gate's intervalSeconds,
so the daemon asks Prometheus at most once per interval per application, however often it passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from controller import errors, within
from controller.artifacts import fetching
from controller.manifests import model

if TYPE_CHECKING:  # only a rollout with a gate asks Prometheus, and imports these
    import http.client

log = logging.getLogger(__name__)
MAX_BYTES = 1 << 20
MAX_REDIRECTS = 3
MESSAGE_CHARS = 300
SELECTOR = re.compile(r"\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{.*\})?\s*", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Answer:
    """The gate's answer: open only when the query succeeded with no series; `message` says why, one sentence."""

    open: bool
    message: str


class Refused(Exception):
    """The exchange with Prometheus did not give an answer to read (a redirect elsewhere, too large, too slow)."""


HttpGet = Callable[[str, float, int], tuple[int, bytes]]  # (url, timeout seconds, max bytes) -> (status, body)


def http_get(url: str, timeout: float, max_bytes: int = MAX_BYTES,
             monotonic: Callable[[], float] = time.monotonic) -> tuple[int, bytes]:
    """GET `url` within `timeout` seconds in all, however slowly the server trickles its answer; (HTTP status,
    body). Raises TimeoutError past the deadline, OSError, http.client errors or Refused."""
    line = _Line()
    deadline = monotonic() + timeout
    return within.bounded(lambda: _exchange(url, deadline, max_bytes, monotonic, line), timeout, line.cut,
                          "tether-gate-query")


def _exchange(url: str, deadline: float, max_bytes: int, monotonic: Callable[[], float],
              line: _Line) -> tuple[int, bytes]:
    """The GET of `http_get`, following redirects on the same host, on connections that `line` can cut."""
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"{_short(url)} is not an http or https URL with a host")
        remaining = deadline - monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out")
        connection = line.open(parts, remaining)
        try:
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", target, headers={"Accept": "application/json", "User-Agent": "tether-gate"})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = urllib.parse.urljoin(url, response.getheader("Location") or "")
                moved = urllib.parse.urlsplit(location)
                if (moved.scheme, moved.netloc) != (parts.scheme, parts.netloc):
                    raise Refused(f"Prometheus redirects to {_short(location)}, another host; the gate follows "
                                  "redirects only on the same host")
                url = location
                continue
            body = response.read(max_bytes + 1)
            if len(body) > max_bytes:
                raise Refused(f"the answer is larger than {max_bytes} bytes")
            return response.status, body
        finally:
            connection.close()
    raise Refused(f"Prometheus redirects more than {MAX_REDIRECTS} times")


class _Line:
    """The connection an exchange is on, so that `cut` (from the caller's thread, at the deadline) can shut it
    down while it waits for the status line, headers, chunk sizes or body."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self._cut = False

    def open(self, parts: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
        """A connection to the URL's host and port, connected; TimeoutError when cut meanwhile. Connecting and
        the TLS handshake each end within `timeout` of their own (ssl keeps one deadline for a handshake)."""
        import http.client

        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        connection = kind(parts.hostname or "", parts.port, timeout=timeout)
        connection.connect()
        with self._lock:
            if self._cut:
                connection.close()
                raise TimeoutError("timed out")
            self._connection = connection
        return connection

    def cut(self) -> None:
        """End the exchange: shut its socket down (a blocked read returns at once), and refuse a next one."""
        import socket

        with self._lock:
            self._cut = True
            sock = None if self._connection is None else self._connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def query_url(gate: model.Gate) -> str:
    return gate.prometheus.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": gate.query})


def ask(gate: model.Gate, http_get: HttpGet = http_get, clock: Callable[[], float] = time.monotonic) -> Answer:
    """Ask Prometheus once; never raises: every failure is a closed gate with its reason."""
    import http.client

    started = clock()
    try:
        code, body = http_get(query_url(gate), gate.timeout_seconds, MAX_BYTES)
    except TimeoutError:
        return _closed(f"Prometheus did not answer within {gate.timeout_seconds:g} s")
    except Refused as exc:
        return _closed(str(exc))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return _closed(f"Prometheus at {_short(gate.prometheus)} cannot be asked: "
                       f"{getattr(exc, 'strerror', None) or exc or type(exc).__name__}")
    took = clock() - started
    try:
        answer = judge(gate.query, code, body)
    except (RecursionError, ValueError) as exc:  # an answer shaped to break the reading of it
        return _closed(f"Prometheus's answer cannot be read ({type(exc).__name__}: {exc})")
    log.debug("The gate %s answered in %.3f s: %s", gate.query, took, answer.message)
    return answer


def judge(query: str, code: int, body: bytes) -> Answer:
    """The answer from an HTTP status and body of the query API."""
    document = _json(body)
    if code != 200:
        error = document.get("error") if isinstance(document, dict) else None
        return _closed(f"Prometheus answered HTTP {code}" + (f": {error}" if isinstance(error, str) else ""))
    if not isinstance(document, dict):
        return _closed("Prometheus answered HTTP 200 with a body that is not a JSON object")
    if document.get("status") != "success":
        error = document.get("error")
        return _closed(f"the query failed (status {document.get('status')!r})"
                       + (f": {error}" if isinstance(error, str) else ""))
    data = document.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("result"), list):
        return _closed("Prometheus's answer has no data.result list")
    kind, result = data.get("resultType"), data["result"]
    if kind not in ("vector", "matrix"):
        shown = errors.printable(kind)[:20] if isinstance(kind, str) else "result of no known type"
        return _closed(f"the query returned a {shown}, not series; the gate needs a query that selects series, "
                       "such as ALERTS{...}")
    if result:
        return _closed(f"{_name(query)} returned {len(result)} series")
    return Answer(True, f"{_name(query)} returned no series")


class Cache:
    """Each application's last gate answer, asked again once intervalSeconds have passed (or the gate changed)."""

    def __init__(self, ask: Callable[[model.Gate], Answer] = ask,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._ask, self.monotonic = ask, monotonic
        self._answers: dict[str, tuple[model.Gate, float, Answer]] = {}
        self._lock = threading.Lock()
        self.asked = 0  # questions sent to Prometheus since the start

    def answer(self, name: str, gate: model.Gate) -> Answer:
        """The answer for application `name`, from the cache while it is younger than the interval."""
        now = self.monotonic()
        with self._lock:
            known = self._answers.get(name)
        if known is not None and known[0] == gate and now < known[1] + gate.interval_seconds:
            return known[2]
        answer = self._ask(gate)
        with self._lock:
            self._answers[name] = (gate, now, answer)
            self.asked += 1
        if known is None or known[2] != answer:
            log.info("The rollout gate of %s is %s: %s.", name, "open" if answer.open else "closed", answer.message)
        return answer

    def expires(self, name: str) -> float | None:
        """When (monotonic) the cached answer of `name` is due to be asked again; None when nothing is cached."""
        with self._lock:
            known = self._answers.get(name)
        return None if known is None else known[1] + known[0].interval_seconds

    def forget(self, name: str) -> None:
        with self._lock:
            self._answers.pop(name, None)


def _closed(message: str) -> Answer:
    return Answer(False, errors.printable(message)[:MESSAGE_CHARS])


def _json(body: bytes) -> Any:
    """The JSON document in `body`; None when it is no JSON that can be read (also when nested too deeply)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _name(query: str) -> str:
    """ALERTS for the query ALERTS{alertstate="firing"}; "the query" when it is more than a selector."""
    found = SELECTOR.fullmatch(query)
    return found[1] if found else "the query"


def _short(url: str) -> str:
    """The URL for a message: no credentials, no query."""
    try:
        return errors.printable(fetching.redact_url(url))[:120]
    except ValueError:  # a port that is no number
        return "the Prometheus URL"
