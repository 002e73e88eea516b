"""The daemon's HTTP endpoint: `/metrics` (the exposition), `/healthz`, a small `/` page; 404 elsewhere,
405 for methods other than GET and HEAD. A web config (web_config.py) adds TLS, client certificates,
headers and basic auth; `reload` swaps it for the next connections (SIGHUP)."""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import logging
import socket
import socketserver
import ssl
import threading
import time
import wsgiref.simple_server
from collections.abc import Callable, Iterable
from typing import Any

import bcrypt
import prometheus_client

from controller import errors
from controller.daemon import exposition, web_config

log = logging.getLogger(__name__)

REFUSED_LOG_SECONDS = 60.0
TIMEOUT_SECONDS = 30.0  # a connection that sends nothing (or never finishes its handshake) is closed then
MAX_CONNECTIONS = 64  # served at once, a thread each; more are closed unanswered (a scrape needs one)
CACHE_SIZE = 256  # successful basic-auth checks remembered, so a scrape does not pay bcrypt's cost each time
# The hash of a random password, checked for an unknown user so that its answer takes as long as a known one's.
DECOY_HASH = b"$2b$10$Fq8k.4nComKoCrE5d7ueWOATqlK7kTYKWNyJQvuvQzaUh9LPm60/i"
INDEX = (b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>tether</title></head>\n<body><h1>tether</h1>\n"
         b"<p>A node-local continuous-delivery controller.</p>\n<ul><li><a href=\"metrics\">metrics</a></li>\n"
         b"<li><a href=\"healthz\">healthz</a></li></ul>\n</body></html>\n")
PLAIN_ON_TLS = (b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
                b"This port speaks TLS: use https://.\n")
TLS_HANDSHAKE = b"\x16"  # the first byte of a TLS record that carries a handshake (ClientHello)
StartResponse = Callable[..., Any]


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes; successful checks are remembered,
    keyed on a digest of the user, the hash and the password (never the password itself)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._good: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def check(self, users: web_config.WebConfig, header: str | None) -> bool:
        credentials = _credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        hashed = DECOY_HASH
        for name, candidate in users.users.items():  # every name compared, in constant time
            if hmac.compare_digest(name.encode(), user):
                hashed = candidate
        known = hashed is not DECOY_HASH
        key = hashlib.sha256(b"\0".join(base64.b64encode(part) for part in (user, hashed, password))).digest()
        with self._lock:
            if known and key in self._good:
                self._good.move_to_end(key)
                return True
        try:
            good = bcrypt.checkpw(password, hashed) and known
        except ValueError:  # a password longer than bcrypt takes (72 bytes) with newer bcrypt: not this one
            good = False
        if good:
            with self._lock:
                self._good[key] = None
                while len(self._good) > CACHE_SIZE:
                    self._good.popitem(last=False)
        return good


def _credentials(header: str | None) -> tuple[bytes, bytes] | None:
    scheme, _, encoded = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


class _App:
    """The WSGI application: authentication, then the paths."""

    def __init__(self, registry: prometheus_client.CollectorRegistry, config: Callable[[], web_config.WebConfig],
                 healthy: Callable[[], bool]) -> None:
        self.exposition = exposition.wsgi_app(registry)  # with the per-application cache (P5)
        self.config, self.healthy, self.auth = config, healthy, BasicAuth()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        config = self.config()
        head = environ.get("REQUEST_METHOD") == "HEAD"

        def answer(status: str, body: bytes, headers: list[tuple[str, str]] | None = None,
                   kind: str = "text/plain; charset=utf-8") -> list[bytes]:
            fields = [("Content-Type", kind), *(headers or []), *config.headers, ("Content-Length", str(len(body)))]
            start_response(status, fields)
            return [] if head else [body]

        if config.users and not self.auth.check(config, environ.get("HTTP_AUTHORIZATION")):
            return answer("401 Unauthorized", b"Unauthorized\n", [("WWW-Authenticate", 'Basic realm="tether"')])
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return answer("405 Method Not Allowed", b"Method Not Allowed: use GET or HEAD.\n",
                          [("Allow", "GET, HEAD")])
        path = environ.get("PATH_INFO") or "/"
        if path == "/":
            return answer("200 OK", INDEX, kind="text/html; charset=utf-8")
        if path == "/healthz":
            return answer("200 OK", b"ok\n") if self.healthy() else answer("503 Service Unavailable", b"stopping\n")
        if path != "/metrics":
            return answer("404 Not Found", b"Not Found: see /metrics and /healthz.\n")
        made: list[Any] = []
        body = b"".join(self.exposition({**environ, "REQUEST_METHOD": "GET"},
                                        lambda status, headers, exc_info=None: made.extend((status, headers))))
        fields = [(k, v) for k, v in made[1] if k.lower() != "content-length"]
        start_response(made[0], [*fields, *config.headers, ("Content-Length", str(len(body)))])
        return [] if head else [body]


class _Server4(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    """One thread per connection, at most MAX_CONNECTIONS at once: idle or slow clients (a slowloris) would
    otherwise take a thread each until the kernel or systemd's TasksMax refuses new ones, and the daemon's
    deployments, which start threads too, would fail. A connection over the bound is closed at once."""

    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops connections that arrive together (the SYNs are retried)
    block_on_close = False  # a client that holds its connection open must not hold up the daemon's exit
    web: Callable[[], web_config.WebConfig]
    _slots = threading.BoundedSemaphore(MAX_CONNECTIONS)  # replaced per server in Server.__init__
    _refused_at = 0.0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            now = time.monotonic()
            if now - self._refused_at > REFUSED_LOG_SECONDS:  # one line a minute, however many are refused
                self._refused_at = now
                log.warning("The metrics endpoint already serves %d connections; more (from %s, among others) are "
                            "closed unanswered until some end.", MAX_CONNECTIONS, client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("A metrics connection from %s ended in an error.", client_address, exc_info=True)


class _Server6(_Server4):
    address_family = socket.AF_INET6


class _Handler(wsgiref.simple_server.WSGIRequestHandler):
    timeout = TIMEOUT_SECONDS
    server: _Server4

    def setup(self) -> None:
        config = self.server.web()  # one config for the whole connection, whatever SIGHUP does meanwhile
        context = config.context
        if context is not None:
            self.request.settimeout(TIMEOUT_SECONDS)
            first = self.request.recv(1, socket.MSG_PEEK)
            if first and first != TLS_HANDSHAKE:  # plain HTTP on the TLS port: say so, as Go's servers do
                log.info("A plain HTTP request from %s came to the TLS port; it was answered 400.",
                         self.client_address[0])
                self.request.sendall(PLAIN_ON_TLS)
                raise ConnectionAbortedError("plain HTTP on the TLS port")
            try:
                self.request = context.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.info("A TLS handshake from %s failed: %s.", self.client_address[0],
                         errors.printable(str(getattr(exc, "reason", None) or exc)))
                raise
            if config.allowed_sans and not web_config.peer_sans(self.request.getpeercert() or {}) & config.allowed_sans:
                log.info("A client certificate from %s carries none of client_allowed_sans; the connection was "
                         "closed.", self.client_address[0])
                self.request.close()
                raise ConnectionRefusedError("no allowed SAN in the client certificate")
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.close()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("Metrics request from %s: %s", self.address_string(), format % args)


class Server:
    """The endpoint on "host:port", "[v6]:port" or ":port" (every interface), served from a daemon
    thread until `close()`; `.port` is the actual port (the kernel picks one for port 0)."""

    def __init__(self, address: str, registry: prometheus_client.CollectorRegistry,
                 config: web_config.WebConfig = web_config.PLAIN, healthy: Callable[[], bool] = lambda: True) -> None:
        host, colon, port = address.rpartition(":")
        if not colon or not port.isdigit() or int(port) > 65535:
            raise errors.PermanentError(f"the metrics address {address!r} is not host:port, e.g. 127.0.0.1:9731")
        host = host.removeprefix("[").removesuffix("]")
        self.config = config
        try:
            self._server: _Server4 = wsgiref.simple_server.make_server(
                host, int(port), _App(registry, lambda: self.config, healthy), _Server6 if ":" in host else _Server4,
                _Handler)
        except OSError as exc:
            raise errors.TemporaryError(f"tether cannot serve metrics on {address}: {exc.strerror}; is another "
                                        "process listening there?") from exc
        self._server.web = lambda: self.config
        self._server._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        log.info("Serving metrics on %s port %d.", self._server.server_address[0], self.port)
        self._describe()

    def _describe(self) -> None:
        if self.config.users and self.config.context is None:
            log.warning("The web config file %s has basic_auth_users but no tls_server_config: passwords cross the "
                        "network in the clear; add a certificate and key.", errors.shown_path(self.config.path))
        log.info("The metrics endpoint uses %s%s.", self.config.summary(),
                 f" (web config file {errors.shown_path(self.config.path)})" if self.config.path else "")

    def reload(self, config: web_config.WebConfig) -> None:
        """Use `config` from the next connection on (connections already open keep theirs)."""
        self.config = config
        self._describe()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
