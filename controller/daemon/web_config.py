"""`--web-config-file`: TLS, client certificates, HTTP headers and basic-auth users for the metrics
endpoint, in the Prometheus exporter-toolkit format (as node_exporter reads it). A bad file is refused
whole with the file and the key named; paths in it are relative to the file's directory."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import re
import ssl
from collections.abc import Mapping
from typing import Any

import yaml

from controller import errors

log = logging.getLogger(__name__)

CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert", "VerifyClientCertIfGiven",
                     "RequireAndVerifyClientCert")
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1, "TLS12": ssl.TLSVersion.TLSv1_2,
                "TLS13": ssl.TLSVersion.TLSv1_3}
# Go's names (crypto/tls) of the TLS 1.2 cipher suites it offers, and OpenSSL's names of the same suites.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
}
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
CURVES = ("CurveP256", "CurveP384", "CurveP521", "X25519")
# The headers exporter-toolkit lets a file set, with the values it accepts (None: any).
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None, "Content-Security-Policy": None}
BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "client_allowed_sans", "min_version",
            "max_version", "cipher_suites", "prefer_server_cipher_suites", "curve_preferences")
UNSUPPORTED = {"cert": "cert_file", "key": "key_file", "client_ca": "client_ca_file"}  # inline PEM: use a file
TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")


@dataclasses.dataclass(frozen=True)
class WebConfig:
    """What a web config file asks for. `context` is None for plain HTTP; `users` maps each user name
    to its bcrypt hash (empty: no basic auth)."""

    path: str
    context: ssl.SSLContext | None = None
    client_auth: str = "NoClientCert"
    headers: tuple[tuple[str, str], ...] = ()
    allowed_sans: frozenset[str] = frozenset()  # a client certificate must carry one of these SANs (if any)
    users: Mapping[str, bytes] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """A few words for the log: "TLS, client certificates required, basic auth for 2 users"."""
        parts = ["TLS" if self.context else "plain HTTP"]
        if self.client_auth in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
            parts.append("client certificates required")
        elif self.client_auth != "NoClientCert":
            parts.append("client certificates verified if given")
        parts.append(f"basic auth for {len(self.users)} users" if self.users else "no basic auth")
        return ", ".join(parts)


PLAIN = WebConfig(path="")  # no --web-config-file: plain HTTP, no authentication


class _Refused(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


def load(path: str) -> WebConfig:
    """Read and check the web config file at `path`: a PermanentError names the file, the key and what to do."""
    shown = errors.shown_path(path)
    try:
        with open(path, "rb") as stream:
            document = yaml.safe_load(stream)
    except OSError as exc:
        raise errors.PermanentError(f"tether cannot read the web config file {shown}: {exc.strerror or exc}; "
                                    "check the path given to --web-config-file (TETHER_WEB_CONFIG_FILE).") from exc
    except yaml.YAMLError as exc:
        raise errors.PermanentError(f"the web config file {shown} is not valid YAML: "
                                    f"{errors.printable(str(exc))}") from exc
    _warn_if_open(path, 0o022, "users other than its owner can change it and turn authentication off")
    try:
        return _parse(path, {} if document is None else document)
    except _Refused as refused:
        raise errors.PermanentError(f"the web config file {shown}, key {errors.printable(refused.key)}: "
                                    f"{errors.printable(refused.message)}") from None


def san(value: str) -> str:
    """A SAN as compared: an IP address in its compressed form (Python and Go write IPv6 differently)."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value.strip()


def peer_sans(certificate: Mapping[str, Any]) -> set[str]:
    """The DNS names, IP addresses, e-mail addresses and URIs of a certificate from `getpeercert()`."""
    return {san(str(value)) for _kind, value in certificate.get("subjectAltName", ())}


def _warn_if_open(path: str, bits: int, what: str) -> None:
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return  # the open() that follows says why
    if mode & bits:
        log.warning("%s has mode %04o: %s; make it 0600, root-owned.", errors.shown_path(path), mode, what)


def _mapping(value: object, key: str, known: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Refused(key, f"must be a mapping, not {type(value).__name__}.")
    for name in value:
        if not isinstance(name, str) or name not in known:
            raise _Refused(f"{key}.{name}" if key else str(name),
                           f"is not a key tether knows; the keys are {', '.join(known)}.")
    return value


def _string(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _Refused(key, "must be a non-empty string.")
    return value


def _strings(value: object, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Refused(key, "must be a list of strings.")
    return value


def _parse(path: str, document: object) -> WebConfig:
    top = dict(_mapping(document, "", (*TOP_KEYS, "rate_limit")))
    if "rate_limit" in top:
        raise _Refused("rate_limit", "tether does not limit the request rate; remove the key (a scrape every few "
                       "seconds is cheap), or put a reverse proxy in front.")
    tls = dict(_mapping(top.get("tls_server_config"), "tls_server_config", (*TLS_KEYS, *UNSUPPORTED)))
    for inline, file_key in UNSUPPORTED.items():
        if inline in tls:
            raise _Refused(f"tls_server_config.{inline}", f"inline PEM is not supported; put it in a file and name "
                           f"it with {file_key}.")
    context, client_auth = (_context(tls, path) if tls else (None, "NoClientCert"))
    http = _mapping(top.get("http_server_config"), "http_server_config", ("headers", "http2"))
    if not isinstance(http.get("http2", True), bool):
        raise _Refused("http_server_config.http2", "must be true or false.")
    headers = _mapping(http.get("headers"), "http_server_config.headers", tuple(HEADERS))
    for name, value in headers.items():
        allowed = HEADERS[name]
        if not isinstance(value, str) or (allowed is not None and value not in allowed):
            raise _Refused(f"http_server_config.headers.{name}", "must be "
                           + ("a string." if allowed is None else f"one of {', '.join(allowed)}."))
    users = top.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise _Refused("basic_auth_users", "must be a mapping of user names to bcrypt hashes.")
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise _Refused(f"basic_auth_users.{user}", "a user name is a non-empty string without a colon.")
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            raise _Refused(f"basic_auth_users.{user}", "is not a bcrypt hash ($2y$10$ and 53 more characters); "
                           "make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`.")
    sans = _strings(tls.get("client_allowed_sans"), "tls_server_config.client_allowed_sans")
    if sans and client_auth not in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
        raise _Refused("tls_server_config.client_allowed_sans", "needs client_auth_type RequireAndVerifyClientCert: "
                       "a client without a certificate has no SAN to match.")
    return WebConfig(path=path, context=context, client_auth=client_auth, allowed_sans=frozenset(map(san, sans)),
                     headers=tuple((k, v) for k, v in headers.items() if v), users={
                         user: hashed.encode() for user, hashed in users.items()})


def _file(tls: Mapping[str, Any], key: str, directory: str) -> str:
    name = os.path.join(directory, _string(tls[key], f"tls_server_config.{key}"))
    if not os.path.isfile(name):
        raise _Refused(f"tls_server_config.{key}", f"{errors.shown_path(name)} is not a file.")
    return name


def _context(tls: Mapping[str, Any], path: str) -> tuple[ssl.SSLContext, str]:
    directory = os.path.dirname(os.path.abspath(path))
    for key in ("cert_file", "key_file"):
        if key not in tls:
            raise _Refused(f"tls_server_config.{key}", "is missing: TLS needs both cert_file and key_file.")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    key_file = _file(tls, "key_file", directory)
    _warn_if_open(key_file, 0o066, "users other than its owner can read or replace the private key")
    try:
        context.load_cert_chain(_file(tls, "cert_file", directory), key_file)
    except ssl.SSLError as exc:
        raise _Refused("tls_server_config.key_file", f"the key does not match the certificate, or one of them is "
                       f"not PEM ({exc.reason or exc}).") from None
    client_auth = tls.get("client_auth_type", "NoClientCert")
    if not isinstance(client_auth, str) or client_auth not in CLIENT_AUTH_TYPES:
        raise _Refused("tls_server_config.client_auth_type", f"{client_auth!r} is none of "
                       f"{', '.join(CLIENT_AUTH_TYPES)}.")
    if "client_ca_file" in tls:
        try:
            context.load_verify_locations(cafile=_file(tls, "client_ca_file", directory))
        except ssl.SSLError as exc:
            raise _Refused("tls_server_config.client_ca_file", f"holds no PEM certificate ({exc.reason or exc}).") \
                from None
    elif client_auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        raise _Refused("tls_server_config.client_ca_file", f"is missing: {client_auth} verifies client certificates "
                       "against it.")
    elif client_auth == "RequireAnyClientCert":
        raise _Refused("tls_server_config.client_ca_file", "is missing: tether verifies every client certificate it "
                       "requires (Python's ssl cannot accept one unverified); give the clients' CA.")
    if client_auth == "RequireAnyClientCert":
        log.warning("The web config file %s asks for RequireAnyClientCert; tether verifies client certificates "
                    "against client_ca_file (as RequireAndVerifyClientCert).", errors.shown_path(path))
    if client_auth in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
        context.verify_mode = ssl.CERT_REQUIRED
    elif client_auth in ("VerifyClientCertIfGiven", "RequestClientCert") and "client_ca_file" in tls:
        context.verify_mode = ssl.CERT_OPTIONAL  # RequestClientCert: a given certificate is verified too
    for key, attribute in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        version = tls.get(key, "TLS12" if key == "min_version" else "TLS13")
        if not isinstance(version, str) or version not in TLS_VERSIONS:
            raise _Refused(f"tls_server_config.{key}", f"{version!r} is none of {', '.join(TLS_VERSIONS)}.")
        setattr(context, attribute, TLS_VERSIONS[version])
    if context.minimum_version > context.maximum_version:
        raise _Refused("tls_server_config.min_version", "is above max_version.")
    suites = _strings(tls.get("cipher_suites"), "tls_server_config.cipher_suites")
    for suite in suites:
        if suite not in CIPHER_SUITES and suite not in TLS13_SUITES:
            raise _Refused("tls_server_config.cipher_suites", f"{suite!r} is not a cipher suite name Go's crypto/tls "
                           "offers (e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256).")
    if [s for s in suites if s in TLS13_SUITES]:
        log.warning("The TLS 1.3 cipher suites in cipher_suites are ignored: as in Go, TLS 1.3 always offers all "
                    "three.")
    if chosen := [CIPHER_SUITES[s] for s in suites if s in CIPHER_SUITES]:
        try:
            context.set_ciphers(":".join(chosen))
        except ssl.SSLError:
            raise _Refused("tls_server_config.cipher_suites", "none of these suites is available in this "
                           "OpenSSL.") from None
    if not isinstance(tls.get("prefer_server_cipher_suites", True), bool):
        raise _Refused("tls_server_config.prefer_server_cipher_suites", "must be true or false.")
    if tls.get("prefer_server_cipher_suites", True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    curves = _strings(tls.get("curve_preferences"), "tls_server_config.curve_preferences")
    if unknown := [c for c in curves if c not in CURVES]:
        raise _Refused("tls_server_config.curve_preferences", f"{unknown[0]!r} is none of {', '.join(CURVES)}.")
    if curves:
        log.warning("curve_preferences is ignored: tether offers OpenSSL's default curves.")
    return context, client_auth
