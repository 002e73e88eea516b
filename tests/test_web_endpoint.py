"""The daemon's HTTP endpoint through a real `tether run`: its paths and methods, and the web config
file (TLS, client certificates, headers, basic auth) with certificates made by `openssl`."""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from controller.daemon import web_config, web_server
from tests import certificates, support

ALICE, BOB = "alice-secret", "bob's other secret"


def hashed(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> certificates.Files:
    return certificates.make(tmp_path_factory.mktemp("certs"))


class Daemon:
    """A real `tether run` with no applications; its stderr is collected line by line."""

    def __init__(self, node: support.Node, *args: str, env: dict[str, str] | None = None) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "NOTIFY_"))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--manifests", str(node.manifests), "--state-dir",
             str(node.state), "--metrics-address", "127.0.0.1:0", "--resync-interval", "3600", "-v", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**environment, **(env or {})}, cwd=node.root)
        assert self.process.stderr is not None
        self.log = support.LogLines(self.process.stderr)

    @property
    def port(self) -> int:
        line = self.log.wait_for(r"Serving metrics on \S+ port \d+")[2]
        return int(line.rsplit(" ", 1)[1].rstrip("."))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def running(node: support.Node, *args: str, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    node.manifests.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(node, *args, env=env)
    try:
        yield daemon
    finally:
        daemon.stop()


def request(port: int, path: str = "/metrics", method: str = "GET", *, context: ssl.SSLContext | None = None,
            user: str | None = None, password: str = "") -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one request."""
    connection = (http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context) if context
                  else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    with contextlib.closing(connection):
        connection.request(method, path, headers=headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def client(certs: certificates.Files, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o640)
    return path


def tls_config(certs: certificates.Files, extra: str = "", users: dict[str, str] | None = None) -> str:
    """A web config whose paths are relative to the certificates' directory (where it is written)."""
    text = f"tls_server_config:\n  cert_file: {certs.server_cert.name}\n  key_file: {certs.server_key.name}\n{extra}"
    if users:
        text += "basic_auth_users:\n" + "".join(f"  {user}: '{hash_}'\n" for user, hash_ in users.items())
    return text


# ---------------------------------------------------------------- paths and methods


def test_the_endpoint_serves_metrics_a_health_check_and_an_index_and_nothing_else(node: support.Node) -> None:
    with running(node) as daemon:
        port = daemon.port
        status, headers, body = request(port, "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain")
        assert b"tether_build_info{" in body
        assert request(port, "/healthz")[::2] == (200, b"ok\n")
        status, headers, body = request(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b'href="metrics"' in body and b'href="healthz"' in body
        for path in ("/metric", "/metrics/", "/metrics/x", "/healthz/", "/favicon.ico", "/index.html", "/METRICS"):
            assert request(port, path)[0] == 404, path
        for path in ("/", "/metrics", "/healthz", "/nothing"):
            for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
                status, headers, _ = request(port, path, method)
                assert (status, headers.get("allow")) == (405, "GET, HEAD"), (method, path)
        status, headers, body = request(port, "/metrics", "HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        assert request(port, "/metrics?name[]=tether_build_info")[0] == 200  # the client's filter still works


# ---------------------------------------------------------------- TLS and basic auth


def test_over_tls_with_basic_auth_only_a_user_with_the_right_password_is_answered(
        node: support.Node, certs: certificates.Files, tmp_path: Path) -> None:
    config = write_config(certs.directory / "web.yml", tls_config(certs, users={"alice": hashed(ALICE)}) +
                          "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    with running(node, "--web-config-file", str(config)) as daemon:
        port, context = daemon.port, client(certs)
        status, headers, body = request(port, "/metrics", context=context, user="alice", password=ALICE)
        assert status == 200 and b"tether_build_info{" in body
        assert headers["x-frame-options"] == "deny"
        for user, password in ((None, ""), ("alice", "wrong"), ("alice", ""), ("bob", ALICE), ("", ALICE),
                               ("alice", ALICE + "x"), ("alice", "x" * 100)):
            for path in ("/metrics", "/healthz", "/", "/nothing"):
                status, headers, body = request(port, path, context=context, user=user, password=password)
                assert status == 401, (user, password, path)
                assert headers["www-authenticate"].startswith("Basic")
                assert headers["x-frame-options"] == "deny" and b"tether" not in body
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:  # plain HTTP to the TLS port
            plain.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            answer = b""
            with contextlib.suppress(OSError):
                while chunk := plain.recv(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.0 400 ") and b"https://" in answer and b"tether_" not in answer
        assert request(port, "/healthz", context=context, user="alice", password=ALICE)[0] == 200  # still serving


def test_a_required_client_certificate_refuses_clients_without_one_or_with_a_stranger_s(
        node: support.Node, certs: certificates.Files) -> None:
    config = write_config(certs.directory / "mtls.yml", tls_config(
        certs, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca.name}\n"))
    with running(node, env={"TETHER_WEB_CONFIG_FILE": str(config)}) as daemon:
        port = daemon.port
        assert request(port, "/metrics", context=client(certs, certs.client_cert, certs.client_key))[0] == 200
        for context in (client(certs), client(certs, certs.stranger_cert, certs.stranger_key)):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                request(port, "/metrics", context=context)
        daemon.log.wait_for("TLS handshake from 127.0.0.1 failed")


def test_client_allowed_sans_refuses_a_certificate_of_the_same_ca_for_another_name(
        node: support.Node, certs: certificates.Files) -> None:
    config = write_config(certs.directory / "sans.yml", tls_config(
        certs, f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca.name}\n"
        "  client_allowed_sans: [prometheus.example.com, '192.0.2.99']\n"))
    with running(node, "--web-config-file", str(config)) as daemon:
        port = daemon.port
        assert request(port, "/healthz", context=client(certs, certs.client_cert, certs.client_key))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            request(port, "/healthz", context=client(certs, certs.neighbour_cert, certs.neighbour_key))
        daemon.log.wait_for("carries none of client_allowed_sans")
        write_config(config, config.read_text().replace("192.0.2.99", "192.0.2.7"))  # the neighbour's IP SAN
        mark = daemon.log.mark()
        daemon.process.send_signal(signal.SIGHUP)
        daemon.log.wait_for("The metrics endpoint uses TLS, client certificates required", mark)
        assert request(port, "/healthz", context=client(certs, certs.neighbour_cert, certs.neighbour_key))[0] == 200


def test_a_client_certificate_verified_if_given_lets_clients_without_one_in(
        node: support.Node, certs: certificates.Files) -> None:
    config = write_config(certs.directory / "optional.yml", tls_config(
        certs, f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {certs.ca.name}\n"))
    with running(node, "--web-config-file", str(config)) as daemon:
        port = daemon.port
        assert request(port, "/healthz", context=client(certs))[0] == 200
        assert request(port, "/healthz", context=client(certs, certs.client_cert, certs.client_key))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            request(port, "/healthz", context=client(certs, certs.stranger_cert, certs.stranger_key))


def test_sighup_switches_the_users_and_a_bad_new_file_keeps_the_old_config(
        node: support.Node, certs: certificates.Files) -> None:
    config = write_config(certs.directory / "reload.yml", tls_config(certs, users={"alice": hashed(ALICE)}))
    with running(node, "--web-config-file", str(config)) as daemon:
        port, context = daemon.port, client(certs)
        assert request(port, context=context, user="alice", password=ALICE)[0] == 200
        write_config(config, tls_config(certs, users={"bob": hashed(BOB)}))
        mark = daemon.log.mark()
        daemon.process.send_signal(signal.SIGHUP)
        daemon.log.wait_for(r"The metrics endpoint uses TLS, basic auth for 1 users \(web config file .*reload.yml\)", mark)
        assert request(port, context=context, user="bob", password=BOB)[0] == 200
        assert request(port, context=context, user="alice", password=ALICE)[0] == 401
        write_config(config, tls_config(certs, users={"carol": "not a hash"}))
        mark = daemon.log.mark()
        daemon.process.send_signal(signal.SIGHUP)
        line = daemon.log.wait_for("keeps the web config it had", mark)[2]
        assert "reload.yml" in line and "basic_auth_users.carol" in line
        assert request(port, context=context, user="bob", password=BOB)[0] == 200
        assert request(port, context=context, user="carol", password="not a hash")[0] == 401
        assert daemon.process.poll() is None


# ---------------------------------------------------------------- bad files


def bad_files(certs: certificates.Files) -> list[tuple[str, str, str]]:
    """(what is wrong, the file's text, the key the error must name)."""
    good_tls = f"tls_server_config:\n  cert_file: {certs.server_cert.name}\n  key_file: {certs.server_key.name}\n"
    return [
        ("an unknown top-level key", "tls_server_confg: {}\n", "tls_server_confg"),
        ("an unknown TLS key", good_tls + "  cert_fiel: x\n", "tls_server_config.cert_fiel"),
        ("an unknown header", "http_server_config:\n  headers:\n    X-Powered-By: tether\n",
         "http_server_config.headers.X-Powered-By"),
        ("a header value exporter-toolkit refuses", "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
         "http_server_config.headers.X-Frame-Options"),
        ("a missing certificate file", good_tls.replace(certs.server_cert.name, "missing.crt"),
         "tls_server_config.cert_file"),
        ("a missing key file", good_tls.replace(certs.server_key.name, "missing.key"), "tls_server_config.key_file"),
        ("no key file", f"tls_server_config:\n  cert_file: {certs.server_cert.name}\n", "tls_server_config.key_file"),
        ("a key that does not match the certificate", good_tls.replace(certs.server_key.name, certs.other_key.name),
         "tls_server_config.key_file"),
        ("a certificate that is not PEM", good_tls.replace(certs.server_cert.name, "request.cnf"),
         "tls_server_config.key_file"),
        ("a missing client CA file", good_tls + "  client_auth_type: RequireAndVerifyClientCert\n"
         "  client_ca_file: nobody.crt\n", "tls_server_config.client_ca_file"),
        ("verification without a client CA", good_tls + "  client_auth_type: RequireAndVerifyClientCert\n",
         "tls_server_config.client_ca_file"),
        ("an unknown client auth type", good_tls + "  client_auth_type: RequireClientCert\n",
         "tls_server_config.client_auth_type"),
        ("an unknown TLS version", good_tls + "  min_version: TLS14\n", "tls_server_config.min_version"),
        ("a TLS version that is not a string", good_tls + "  max_version: [TLS13]\n", "tls_server_config.max_version"),
        ("a client auth type that is not a string", good_tls + "  client_auth_type: {a: b}\n",
         "tls_server_config.client_auth_type"),
        ("a key with a control character", "basic_auth_users:\n  \"al\\x1bice\": x\n", "basic_auth_users.al\\x1bice"),
        ("versions the wrong way round", good_tls + "  min_version: TLS13\n  max_version: TLS12\n",
         "tls_server_config.min_version"),
        ("an unknown cipher suite", good_tls + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
         "tls_server_config.cipher_suites"),
        ("allowed SANs without a required certificate", good_tls + "  client_auth_type: VerifyClientCertIfGiven\n"
         f"  client_ca_file: {certs.ca.name}\n  client_allowed_sans: [prometheus.example.com]\n",
         "tls_server_config.client_allowed_sans"),
        ("an inline certificate", good_tls + "  cert: '-----BEGIN CERTIFICATE-----'\n", "tls_server_config.cert"),
        ("a bad bcrypt hash", "basic_auth_users:\n  alice: secret\n", "basic_auth_users.alice"),
        ("a truncated bcrypt hash", f"basic_auth_users:\n  alice: '{hashed(ALICE)[:-1]}'\n", "basic_auth_users.alice"),
        ("users that are not a mapping", "basic_auth_users: [alice]\n", "basic_auth_users"),
        ("a rate limit", "rate_limit: {interval: 1s, burst: 20}\n", "rate_limit"),
    ]


def test_a_bad_web_config_file_is_refused_at_start_naming_the_file_and_the_key(
        node: support.Node, certs: certificates.Files) -> None:
    node.manifests.mkdir(parents=True, exist_ok=True)
    for number, (what, text, key) in enumerate(bad_files(certs)):
        config = write_config(certs.directory / f"bad-{number}.yml", text)
        done = node.tether("run", "--metrics-address", "127.0.0.1:0", "--web-config-file", str(config), timeout=60)
        assert done.returncode == 2, (what, done.stderr)
        assert f"bad-{number}.yml" in done.stderr and f"key {key}:" in done.stderr, (what, done.stderr)
        assert "Traceback" not in done.stderr and "Serving metrics" not in done.stderr, what


def test_a_web_config_file_that_is_missing_or_not_yaml_is_refused_at_start(node: support.Node, tmp_path: Path) -> None:
    node.manifests.mkdir(parents=True, exist_ok=True)
    (tmp_path / "broken.yml").write_text("tls_server_config: {cert_file: 'x'\n")
    (tmp_path / "list.yml").write_text("- tls_server_config\n")
    for name, words in (("absent.yml", "cannot read"), ("broken.yml", "not valid YAML"), ("list.yml", "mapping")):
        done = node.tether("run", "--metrics-address", "127.0.0.1:0", "--web-config-file", str(tmp_path / name),
                           timeout=60)
        assert done.returncode == 2 and name in done.stderr and words in done.stderr, done.stderr


def test_an_empty_web_config_file_serves_plain_http_without_authentication(node: support.Node, tmp_path: Path) -> None:
    config = write_config(tmp_path / "empty.yml", "")
    with running(node, "--web-config-file", str(config)) as daemon:
        assert request(daemon.port, "/healthz")[0] == 200


# ---------------------------------------------------------------- the basic-auth cache


def test_a_successful_check_is_remembered_and_a_failed_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed_password: bytes) -> bool:
        calls.append(password)
        return real(password, hashed_password)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    config = web_config.WebConfig(path="x", users={"alice": hashed(ALICE).encode()})
    auth = web_server.BasicAuth()

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert [auth.check(config, header("alice", ALICE)) for _ in range(5)] == [True] * 5
    assert len(calls) == 1
    assert [auth.check(config, header("alice", "wrong")) for _ in range(3)] == [False] * 3
    assert len(calls) == 4  # a wrong password pays bcrypt's cost every time
    assert not auth.check(config, header("mallory", ALICE)) and len(calls) == 5  # an unknown user too
    changed = web_config.WebConfig(path="x", users={"alice": hashed(ALICE).encode()})  # a new hash (new salt)
    assert auth.check(changed, header("alice", ALICE)) and len(calls) == 6
    assert not auth.check(web_config.WebConfig(path="x", users={"bob": hashed(BOB).encode()}), header("alice", ALICE))
    for bad in (None, "", "Basic", "Basic !!!", "Bearer abc", "Basic " + base64.b64encode(b"no colon").decode()):
        assert not auth.check(config, bad)


def test_a_scrape_with_a_costly_hash_is_fast_after_the_first(node: support.Node, tmp_path: Path) -> None:
    config = write_config(tmp_path / "costly.yml", f"basic_auth_users:\n  alice: '{hashed(ALICE, 13)}'\n")
    with running(node, "--web-config-file", str(config)) as daemon:
        port = daemon.port
        started = time.monotonic()
        assert request(port, user="alice", password=ALICE)[0] == 200
        first = time.monotonic() - started
        started = time.monotonic()
        for _ in range(5):
            assert request(port, user="alice", password=ALICE)[0] == 200
        assert (time.monotonic() - started) / 5 < first / 2, "later checks should come from the cache"
        daemon.log.wait_for("has basic_auth_users but no tls_server_config: passwords cross the network in the clear")


def test_a_private_key_or_a_web_config_others_may_change_is_served_with_a_warning_that_says_so(
        node: support.Node, tmp_path: Path, certs: certificates.Files) -> None:
    directory = tmp_path / "open"
    directory.mkdir()
    for source in (certs.server_cert, certs.server_key):
        (directory / source.name).write_bytes(source.read_bytes())
    (directory / certs.server_key.name).chmod(0o644)
    config = write_config(directory / "web.yml", tls_config(certs))
    config.chmod(0o666)
    with running(node, "--web-config-file", str(config)) as daemon:
        assert request(daemon.port, "/healthz", context=client(certs))[0] == 200
        daemon.log.wait_for(r"server.key has mode 0644: users other than its owner can read or replace the private key")
        daemon.log.wait_for(r"web.yml has mode 0666: users other than its owner can change it")
        assert "has mode 0600" not in daemon.log.text()


def test_many_idle_connections_do_not_each_take_a_daemon_thread(node: support.Node) -> None:
    # Each connection used to get its own thread until its 30 s timeout: enough of them (a slowloris) exhaust the
    # daemon's threads, and then deployments, which start threads too, fail. The endpoint serves a bounded number.
    with running(node) as daemon:
        port = daemon.port
        tasks = Path(f"/proc/{daemon.process.pid}/task")
        baseline = len(list(tasks.iterdir()))
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(150)]
        try:
            deadline = time.monotonic() + 3
            most = 0
            while time.monotonic() < deadline:  # all are accepted by now: a thread each, or closed
                most = max(most, len(list(tasks.iterdir())))
                time.sleep(0.05)
            assert most - baseline <= web_server.MAX_CONNECTIONS + 16, (baseline, most)  # + the daemon's own
        finally:
            for connection in held:
                connection.close()
        deadline = time.monotonic() + 20
        while True:  # the held slots are freed as their sockets close
            try:
                status, _, body = request(port)
                break
            except (ConnectionError, http.client.HTTPException):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 200 and b"tether_" in body
