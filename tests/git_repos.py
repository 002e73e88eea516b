"""Test helpers for git sources: real repositories made with git, and `git http-backend` behind a loopback
CGI server that can demand an Authorization header."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "Dev",
           "GIT_AUTHOR_EMAIL": "dev@example.com", "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.com",
           "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z", "LC_ALL": "C"}


def git(repo: Path, *args: str, env: dict[str, str] | None = None, input: bytes | None = None) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False, input=input,
                          env={"PATH": os.environ["PATH"], "HOME": str(repo), **GIT_ENV, **(env or {})})
    assert done.returncode == 0, (args, done.stderr.decode())
    return done.stdout.decode().strip()


class Repo:
    """A working repository in `path` whose commits, tags and branches a test makes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        git(path, "init", "--quiet", "--initial-branch=main")

    @property
    def url(self) -> str:
        return f"file://{self.path}"

    def commit(self, files: dict[str, str | bytes], message: str = "change", remove: tuple[str, ...] = ()) -> str:
        for name, content in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        for name in remove:
            git(self.path, "rm", "-q", name)
        git(self.path, "add", "-A")
        git(self.path, "commit", "--quiet", "--allow-empty", "-m", message)
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        return git(self.path, "rev-parse", f"{ref}^{{commit}}")

    def tag(self, name: str, annotated: bool = False, sign_key: Path | None = None) -> None:
        if sign_key is not None:
            git(self.path, "-c", "gpg.format=ssh", "-c", f"user.signingkey={sign_key}", "tag", "-s", "-m", name, name)
        elif annotated:
            git(self.path, "tag", "-a", "-m", f"release {name}", name)
        else:
            git(self.path, "tag", name)


def ssh_key(directory: Path, name: str) -> tuple[Path, str]:
    """A new ed25519 key pair: (private key file, public key line)."""
    key = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True)
    return key, (directory / f"{name}.pub").read_text().strip()


def allowed_signers(path: Path, *public_keys: str) -> Path:
    path.write_text("".join(f"dev@example.com namespaces=\"git\" {key}\n" for key in public_keys))
    return path


class GitHttpServer:
    """`git http-backend` for the repositories below `root`, on 127.0.0.1 port 0. With `secret`, every request
    must carry `Authorization: <secret>`; every request's headers are kept."""

    def __init__(self, root: Path, secret: str | None = None) -> None:
        self.root = root
        self.secret = secret
        self.requests: list[dict[str, str]] = []
        self.paths: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.cgi(b"")

            def do_POST(self) -> None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.cgi(body)

            def cgi(self, body: bytes) -> None:
                server.requests.append(dict(self.headers.items()))
                server.paths.append(self.path)
                if server.secret is not None and self.headers.get("Authorization") != server.secret:
                    self.send_response(403)
                    self.send_header("Content-Length", "9")
                    self.end_headers()
                    self.wfile.write(b"forbidden")
                    return
                path, _, query = self.path.partition("?")
                env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(server.root), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": self.command,
                       "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
                       "REMOTE_ADDR": "127.0.0.1", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(server.root)}
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                done = subprocess.run(["git", "http-backend"], input=body, capture_output=True, env=env, check=False)
                head, _, payload = done.stdout.partition(b"\r\n\r\n")
                status, headers = 200, []
                for line in head.decode("latin-1").split("\r\n"):
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()
