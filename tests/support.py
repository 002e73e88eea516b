"""Test helpers: a real HTTP server on loopback, archive builders, manifests, tree snapshots."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import io
import os
import re
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- HTTP server


@dataclasses.dataclass
class Reply:
    """One canned HTTP answer. `cut_after` sends that many body bytes then resets the connection."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    cut_after: int | None = None


class HttpServer:
    """A real HTTP/1.1 server on 127.0.0.1, port 0. Routes map a path to a list of Replies,
    served in order (the last one repeats). Every request is recorded with its headers."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, {k: v for k, v in self.headers.items()}))
                replies = server.routes.get(self.path.split("?")[0]) or [Reply(404, b"not found")]
                reply = replies.pop(0) if len(replies) > 1 else replies[0]
                self.send_response(reply.status)
                headers = {"Content-Length": str(len(reply.body)), **reply.headers}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                if reply.cut_after is not None:
                    self.wfile.write(reply.body[: reply.cut_after])
                    self.wfile.flush()
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                self.wfile.write(reply.body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def serve(self, path: str, *replies: Reply | bytes) -> str:
        self.routes[path] = [r if isinstance(r, Reply) else Reply(body=r) for r in replies]
        return self.url(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- archives


@dataclasses.dataclass
class Member:
    name: str
    data: bytes = b""
    type: str = "file"  # file | dir | symlink | hardlink | chr | fifo
    target: str = ""
    mode: int | None = None


def tar_bytes(members: Sequence[Member], compression: str = "gz") -> bytes:
    """A tar archive (compression: '', gz, bz2, xz) holding exactly `members`, in order."""
    buffer = io.BytesIO()
    mode = f"w:{compression}" if compression else "w"
    with tarfile.open(fileobj=buffer, mode=mode) as tar:  # type: ignore[call-overload]
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.mtime = 1_700_000_000
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[member.type]
            info.mode = member.mode if member.mode is not None else (0o755 if member.type == "dir" else 0o644)
            info.linkname = member.target
            if member.type == "file":
                info.size = len(member.data)
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def zip_bytes(members: Sequence[Member]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for member in members:
            info = zipfile.ZipInfo(member.name, (2024, 1, 1, 0, 0, 0))
            info.create_system = 3
            mode = member.mode if member.mode is not None else 0o644
            if member.type == "symlink":
                info.external_attr = (0o120777 << 16)
                archive.writestr(info, member.target)
            elif member.type == "dir":
                info.external_attr = ((0o040000 | (member.mode or 0o755)) << 16) | 0x10
                archive.writestr(info, b"")
            else:
                info.external_attr = (0o100000 | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, member.data)
    return buffer.getvalue()


def site(version: str = "1", top: str = "site") -> list[Member]:
    """A small, valid static site below one top-level directory."""
    return [
        Member(f"{top}/", type="dir"),
        Member(f"{top}/index.html", f"<h1>version {version}</h1>\n".encode()),
        Member(f"{top}/css/", type="dir"),
        Member(f"{top}/css/site.css", b"body { color: black }\n"),
        Member(f"{top}/home.html", type="symlink", target="index.html"),
    ]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_artifact() -> bytes:
    """The smallest valid artifact: site/index.html."""
    return tar_bytes([Member("site/index.html", b"<h1>hello</h1>\n")])


# ---------------------------------------------------------------- a daemon's log


class LogLines:
    """The lines of a stream (a daemon's stderr), each with the time it arrived, read by a thread."""

    END = "<end of log>"

    def __init__(self, stream: Iterable[str]) -> None:
        self.lines: list[tuple[float, str]] = []  # (time.time() of arrival, line)
        self._changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream: Iterable[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append((time.time(), line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self.lines.append((time.time(), self.END))
            self._changed.notify_all()

    def mark(self) -> int:
        """A position in the log: later waits can look only at what comes after it."""
        with self._changed:
            return len(self.lines)

    def text(self, start: int = 0) -> str:
        with self._changed:
            return "\n".join(line for _, line in self.lines[start:])

    def wait_for(self, pattern: str, start: int = 0, timeout: float = 20) -> tuple[int, float, str]:
        """Wait for a line matching the regular expression; (index, arrival time, line)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            index = start
            while True:
                while index < len(self.lines):
                    arrived, line = self.lines[index]
                    if regex.search(line):
                        return index, arrived, line
                    index += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1][1] == self.END):
                    break
                self._changed.wait(left)
        raise AssertionError(f"no log line matches {pattern!r} after {timeout} s; the log:\n{self.text(start)}")


@contextlib.contextmanager
def notify_socket(address: Path | str, timeout: float = 20) -> Iterator[socket.socket]:
    """A datagram socket bound at `address`, where systemd would listen for sd_notify messages."""
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)) as sock:
        sock.bind(str(address))
        sock.settimeout(timeout)
        yield sock


# ---------------------------------------------------------------- manifests and trees


def application(name: str, path: Path | str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "tether/v1", "kind": "Application", "metadata": {"name": name},
            "spec": {"path": str(path), **spec}}


def write_manifest(directory: Path, document: dict[str, Any] | str, file: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(document, dict):
        file = file or f"{document['metadata']['name']}.yaml"
        text = yaml.safe_dump(document, sort_keys=False)
    else:
        text = document
    assert file is not None
    target = directory / file
    target.write_text(text)
    target.chmod(0o644)
    return target


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every path below `root` with its type and content digest or link target."""
    found: dict[str, tuple[str, str]] = {}
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if full.is_symlink():
                found[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                found[rel] = ("dir", oct(full.stat().st_mode))
            else:
                found[rel] = ("file", sha256(full.read_bytes()) + oct(full.stat().st_mode))
    return found


@dataclasses.dataclass
class Node:
    """A sandbox: manifests dir, state dir, and where applications live."""

    root: Path

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def apps(self) -> Path:
        return self.root / "apps"

    def tether(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run the real `tether` command line in a subprocess."""
        command = [sys.executable, "-m", "controller", *args]
        if args and args[0] not in ("schema",):
            command += ["--manifests", str(self.manifests), "--state-dir", str(self.state)]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        full_env.update(env or {})
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=self.root,
                              input=input)


def make_node(tmp_path: Path) -> Node:
    node = Node(tmp_path)
    for directory in (node.manifests, node.state, node.apps):
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
    tmp_path.chmod(0o755)
    return node


def walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            yield Path(dirpath) / name


Check = Callable[[], bool]


def sandbox(prefix: str, parent: str | None = None) -> tuple[Path, Path, Path, Path]:
    """A fresh tree for a benchmark's daemon: (root, manifests, state, apps), each 0755."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    root.chmod(0o755)
    directories = root / "manifests", root / "state", root / "apps"
    for directory in directories:
        directory.mkdir(mode=0o755)
    return root, *directories


# A process forked from this test run starts out with the run's memory, and its ru_maxrss counts the image it had
# before exec (pytest's, over 100 MiB late in the suite). So a small launcher, freshly executed, forks the
# controller and reports the controller's own peak.
PEAK_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""
