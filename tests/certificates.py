"""Certificates made with the real `openssl` for the TLS tests: a CA, a server certificate for 127.0.0.1
(with the SAN Go and Python check), client certificates with SANs, and a second CA nobody trusts."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

REQUEST = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = test\n"
EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclasses.dataclass(frozen=True)
class Files:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path
    neighbour_cert: Path  # a client certificate from the same CA with another SAN
    neighbour_key: Path
    other_key: Path  # a key that matches no certificate here


def _openssl(directory: Path, *args: str) -> None:
    assert shutil.which("openssl"), "this test needs openssl: apt-get install openssl"
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> None:
    _openssl(directory, "req", "-x509", "-config", "request.cnf", *EC, "-keyout", f"{name}.key", "-out",
             f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _signed(directory: Path, name: str, ca: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(directory, "req", "-new", "-config", "request.cnf", *EC, "-keyout", f"{name}.key", "-out",
             f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")


def make(directory: Path) -> Files:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "request.cnf").write_text(REQUEST)
    _ca(directory, "ca")
    _ca(directory, "stranger-ca")
    _signed(directory, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _signed(directory, "client", "ca", "subjectAltName=DNS:prometheus.example.com\nextendedKeyUsage=clientAuth\n")
    _signed(directory, "neighbour", "ca", "subjectAltName=DNS:neighbour.example.com,IP:192.0.2.7\n"
            "extendedKeyUsage=clientAuth\n")
    _signed(directory, "stranger", "stranger-ca", "extendedKeyUsage=clientAuth\n")
    _openssl(directory, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "other.key")
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Files(directory, directory / "ca.crt", directory / "server.crt", directory / "server.key",
                 directory / "client.crt", directory / "client.key", directory / "stranger.crt",
                 directory / "stranger.key", directory / "neighbour.crt", directory / "neighbour.key",
                 directory / "other.key")
