#!/usr/bin/env python3
"""A guided tour of tether on one machine, as a normal user, in a sandbox directory.

The demo builds artifacts from examples/artifacts, serves them from a real HTTP
server on loopback, copies examples/manifests into the sandbox changing only the
lines the sandbox needs (sandbox_manifests.py), and runs the real `tether`
command line: deploy v1, upgrade to v2 (the deployment line alone), show the
result, and print the commands to go on. examples/demo_daemon.py keeps the
daemon going instead (make demo-daemon).

    .venv/bin/python examples/demo.py --sandbox /tmp/tether-demo    (or: make demo)

Sandbox layout: artifacts/ (what the HTTP server serves), manifests/, secrets/,
state/ (tether's --state-dir) and apps/<name>/ (each application's path).
Only the standard library and PyYAML are used; tether itself runs as
`python -m controller` with the interpreter that runs this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import grp
import gzip
import hmac
import http.server
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import yaml
except ImportError:
    sys.exit("The demo needs PyYAML; run it with tether's virtualenv: make demo, or .venv/bin/python examples/demo.py")

EXAMPLES = Path(__file__).resolve().parent
sys.path.insert(0, str(EXAMPLES))
import sandbox_manifests  # noqa: E402  (examples/sandbox_manifests.py, beside this file)

VERSIONS = ("v1", "v2")
MARKER = ".tether-demo-sandbox"  # only a directory holding this file is wiped
FIXED_MTIME = 1_700_000_000  # every archive member gets this mtime, so builds are reproducible


class DemoError(Exception):
    """A step failed; the message says which and why."""


def say(text: str = "") -> None:
    print(text, flush=True)


def indented(text: str) -> None:
    for line in text.rstrip("\n").splitlines():
        say("    " + line)


# ---------------------------------------------------------------- sandbox and artifacts


def prepare_sandbox(root: Path) -> None:
    """Empty the sandbox (only if an earlier run made it) and create its directories."""
    try:
        _prepare_sandbox(root)
    except OSError as exc:
        raise DemoError(f"cannot prepare the sandbox {root}: {exc}; if another user made it, remove it "
                        "or choose another --sandbox") from exc


def _prepare_sandbox(root: Path) -> None:
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise DemoError(f"{root} exists and is not a directory; choose another --sandbox")
    if root.exists():
        entries = list(root.iterdir())
        if entries and not (root / MARKER).is_file():
            raise DemoError(f"{root} is not empty and was not made by this demo; the demo only wipes its own "
                            "sandbox, so choose an empty or new --sandbox directory")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("Made by tether's examples/demo.py; the next run wipes this directory.\n")
    for name in ("artifacts", "manifests", "state", "apps"):
        (root / name).mkdir(mode=0o755)
        (root / name).chmod(0o755)  # tether refuses a manifests directory writable by group or others
    (root / "secrets").mkdir(mode=0o700)
    (root / "secrets").chmod(0o700)


def build_artifact(source: Path, target: Path, top: str) -> int:
    """Write a reproducible tar.gz of `source` below the single directory `top`; return its size."""
    paths = sorted(p.relative_to(source).as_posix() for p in source.rglob("*"))
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative in ["", *paths]:
            path = source / relative
            info = tarfile.TarInfo(f"{top}/{relative}".rstrip("/"))
            info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "root", "root"
            if path.is_symlink():
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
                tar.addfile(info)
            elif path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = path.stat().st_size
                info.mode = 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644
                with path.open("rb") as data:
                    tar.addfile(info, data)
    return target.stat().st_size


# ---------------------------------------------------------------- the artifact server


class ArtifactServer:
    """A real HTTP server on 127.0.0.1, port 0, serving a directory from a background thread.

    `required` maps an application name to the headers (name -> value) that its
    artifacts require, like a package registry's token; without them: HTTP 401.
    """

    def __init__(self, root: Path, required: dict[str, dict[str, str]]) -> None:
        self.served: list[tuple[str, int]] = []
        served = self.served

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                wanted = required.get(self.path.lstrip("/").split("/", 1)[0], {})
                for header, value in wanted.items():
                    if not hmac.compare_digest(self.headers.get(header, "").encode(), value.encode()):
                        self.send_error(401, f"a valid {header} header is required")
                        return
                super().do_GET()

            def log_request(self, code: Any = "-", size: Any = "-") -> None:
                served.append((self.path, int(code)))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def take_log(self) -> list[tuple[str, int]]:
        taken = list(self.served)
        del self.served[: len(taken)]
        return taken

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- manifests


def example_manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for file in sorted((EXAMPLES / "manifests").glob("*.yaml")):
        document = yaml.safe_load(file.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or document.get("kind") not in ("Application", "ApplicationKind"):
            raise DemoError(f"{file} is not an Application or ApplicationKind manifest")
        found.append((file, document))
    if not found:
        raise DemoError(f"no manifests found in {EXAMPLES / 'manifests'}")
    return found


def write_manifest(directory: Path, name: str, text: str) -> Path:
    """Write atomically (a dotfile that tether ignores, then rename), mode 0644."""
    target = directory / name
    temporary = directory / f".{name}.tmp"
    temporary.write_text(text, encoding="utf-8")
    temporary.chmod(0o644)
    os.replace(temporary, target)
    return target


def sandbox_text(origin: Path, root: Path, base_url: str, version: str) -> str:
    """The example file for the sandbox, its comments and formatting kept (sandbox_manifests.adapt)."""
    header = f"# Copied by examples/demo.py from examples/manifests/{origin.name}; only the lines the sandbox needs differ.\n"
    try:
        return header + sandbox_manifests.adapt(origin.read_text(encoding="utf-8"), root, base_url, version)
    except sandbox_manifests.AdaptError as exc:
        raise DemoError(f"cannot adapt {origin} to the sandbox: {exc}") from exc


def set_deployment(target: Path, version: str) -> None:
    """Change the deployment line of a sandbox manifest, and nothing else."""
    try:
        text = sandbox_manifests.with_deployment(target.read_text(encoding="utf-8"), version)
    except sandbox_manifests.AdaptError as exc:
        raise DemoError(f"cannot change the deployment of {target}: {exc}") from exc
    write_manifest(target.parent, target.name, text)


def secret_headers(document: dict[str, Any]) -> dict[str, str]:
    """Header name -> the name of the secret file it reads, for one manifest."""
    headers = document["spec"]["source"].get("headers", {})
    return {k: Path(v["fromFile"]).name for k, v in headers.items() if isinstance(v, dict) and "fromFile" in v}


# ---------------------------------------------------------------- running tether


class Tether:
    """Runs the real command line with this interpreter, against the sandbox."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.outputs: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if args[0] != "validate":  # validate reads the paths it is given, and no state
            command += ["--manifests", str(self.root / "manifests"), "--state-dir", str(self.root / "state")]
        say("$ tether " + " ".join(command))
        run = subprocess.run([sys.executable, "-m", "controller", *command], capture_output=True, text=True,
                             env=self.env, cwd=self.root, timeout=600, check=False)
        self.outputs += [run.stdout, run.stderr]
        indented(run.stderr)
        indented(run.stdout)
        if run.returncode != 0:
            raise DemoError(f"`tether {args[0]}` failed with exit code {run.returncode} (see its output above)")
        return run


def preflight() -> None:
    run = subprocess.run([sys.executable, "-m", "controller", "--version"], capture_output=True, text=True,
                         cwd=os.sep, check=False)
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["no output"])[-1]
        raise DemoError(f"{sys.executable} cannot run tether (python -m controller): {last}; "
                        "install it first (make venv) and run the demo with .venv/bin/python")
    say(f"Using {run.stdout.strip()} from {sys.executable}.")


def check_current(root: Path, names: Sequence[str], version: str) -> None:
    for name in names:
        link = root / "apps" / name / "current"
        target = os.readlink(link) if link.is_symlink() else None
        if target != str(root / "apps" / name / version):
            raise DemoError(f"{link} should point to {root / 'apps' / name / version}, but points to {target}")
    say(f"Checked: current of {' and '.join(names)} points to {version}.")


def report_downloads(server: ArtifactServer) -> None:
    served = server.take_log()
    if not served:
        say("tether downloaded nothing this time.")
    for path, code in served:
        say(f"The artifact server answered GET {path} with HTTP {code}.")


def long_listing(directory: Path) -> str:
    """`ls -l` of a directory (without dotfiles)."""
    lines = []
    for entry in sorted(p for p in directory.iterdir() if not p.name.startswith(".")):
        st = entry.lstat()
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        when = time.strftime("%b %d %H:%M", time.localtime(st.st_mtime))
        name = entry.name + (f" -> {os.readlink(entry)}" if entry.is_symlink() else "")
        lines.append(f"{stat.filemode(st.st_mode)} {st.st_nlink:2} {owner} {group} {st.st_size:5} {when} {name}")
    return "\n".join(lines)


def check_no_leak(root: Path, token: str, outputs: Sequence[str]) -> None:
    """The design promises that secrets never reach logs or status files: look for the token."""
    leaks = ["the output of tether"] if any(token in text for text in outputs) else []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and (root / "secrets") not in path.parents \
                and token.encode() in path.read_bytes():
            leaks.append(str(path))
    if leaks:
        raise DemoError("a secret token appears in " + ", ".join(leaks))
    say("Checked: the secret token appears in no status file, record, log line or output of tether.")


# ---------------------------------------------------------------- the tour


@dataclasses.dataclass
class Sandbox:
    """What set_up made: the example files, the application names, their tokens, the running server."""

    root: Path
    examples: list[tuple[Path, dict[str, Any]]]
    names: list[str]
    required: dict[str, dict[str, str]]
    server: ArtifactServer


def set_up(root: Path) -> Sandbox:
    """Prepare the sandbox, build the artifacts and secrets, start the artifact server (close it!)."""
    preflight()
    prepare_sandbox(root)
    say(f"Prepared the sandbox {root}.")

    examples = example_manifests()
    names = [document["metadata"]["name"] for _, document in examples if document["kind"] == "Application"]
    for name in names:
        for version in VERSIONS:
            target = root / "artifacts" / name / f"{version}.tar.gz"
            size = build_artifact(EXAMPLES / "artifacts" / name / version, target, f"{name}-{version}")
            say(f"Built the artifact {target.relative_to(root)} ({size} bytes) from examples/artifacts/{name}/{version}.")

    required: dict[str, dict[str, str]] = {}
    for _, document in examples:
        name = document["metadata"]["name"]
        for header, file in secret_headers(document).items() if document["kind"] == "Application" else ():
            token = secrets.token_urlsafe(24)
            required.setdefault(name, {})[header] = token
            path = root / "secrets" / file
            path.write_text(token + "\n")
            path.chmod(0o600)
            say(f"Wrote a random {header} for {name} to {path} (mode 0600); tether reads it at download time.")

    server = ArtifactServer(root / "artifacts", required)
    guarded = "".join(f"; {name}'s artifacts require the {', '.join(headers)} header"
                      for name, headers in sorted(required.items()))
    say(f"Started an artifact server at {server.url}, serving {root / 'artifacts'}{guarded}.")
    return Sandbox(root, examples, names, required, server)


def write_manifests(sandbox: Sandbox, version: str) -> None:
    """Step 1 copies the example files in; later steps change each application's deployment line only."""
    directory = sandbox.root / "manifests"
    for origin, document in sandbox.examples:
        target = directory / origin.name
        if not target.exists():
            write_manifest(directory, origin.name, sandbox_text(origin, sandbox.root, sandbox.server.url, version))
            what = f"deployment {version}" if document["kind"] == "Application" else "a kind: its hooks, unchanged"
            say(f"Copied examples/manifests/{origin.name} to {target} ({what}).")
        elif document["kind"] == "Application":
            set_deployment(target, version)
            say(f"Changed the deployment line of {target} to {version}.")


def tether_command() -> str:
    """How a person runs the same tether as this demo: the virtualenv's script, or python -m controller."""
    script = Path(sys.executable).parent / "tether"
    shown = script if script.is_file() else None
    if shown is None:
        return f"{sys.executable} -m controller"
    relative = os.path.relpath(shown)
    return relative if not relative.startswith("..") else str(shown)


def how_to_continue(root: Path) -> list[str]:
    """The exact commands that keep using the sandbox."""
    manifests, state = root / "manifests", root / "state"
    command = tether_command()
    return [
        "To keep using the sandbox, give tether its manifests and state directories:",
        f"    {command} status --manifests {manifests} --state-dir {state}",
        "or set them once in the environment of your shell:",
        f"    export TETHER_MANIFESTS={manifests} TETHER_STATE_DIR={state}",
        f"    {command} status",
        f"    {command} list site",
        f"Edit spec.deployment in {manifests / 'site.yaml'} (v1 or v2), then:",
        f"    {command} plan && {command} reconcile",
        "The artifact server has stopped with the demo; `make demo-daemon` keeps one and `tether run` going.",
    ]


def run_demo(root: Path) -> None:
    sandbox = set_up(root)
    names, required, server = sandbox.names, sandbox.required, sandbox.server
    try:
        tether = Tether(root)
        for step, version in enumerate(VERSIONS, start=1):
            say()
            say(f"Step {step}: the manifests now ask for {version}.")
            write_manifests(sandbox, version)
            if step == 1:
                say("tether validates the manifests without touching anything:")
                tether("validate", str(root / "manifests"))
            else:
                say("tether plans what a pass would do, before doing it:")
                tether("plan")
            say("tether reconciles once: it downloads, extracts, and switches `current`:")
            tether("reconcile", "-v")
            report_downloads(server)
            check_current(root, names, version)
        say()
        say("A second pass finds nothing to do and downloads nothing:")
        tether("reconcile")
        report_downloads(server)
    finally:
        server.close()

    say()
    say("The state of the applications:")
    tether("status")
    for name in names:
        say()
        tether("list", name)
    say()
    say(f"The deployment tree of site (ls -l {root / 'apps' / 'site'}):")
    indented(long_listing(root / "apps" / "site"))
    acme = root / "apps" / "acme"
    say(f"acme's release links its data into persistent-data (ls -l {acme / 'current' / 'db'}):")
    indented(long_listing(acme / "current" / "db"))
    say("The database, written by the rails kind's migration hook of each release, survived both:")
    indented((acme / "persistent-data" / "db" / "production.sqlite3").read_text(encoding="utf-8"))
    say(f"The hooks' output is kept in {acme / '.tether' / 'logs' / 'v2'}:")
    indented((acme / ".tether" / "logs" / "v2" / "afterActivate.log").read_text(encoding="utf-8"))
    index = (root / "apps" / "site" / "current" / "index.html").read_text(encoding="utf-8")
    heading = re.search(r"<h1>(.*?)</h1>", index)
    say(f"The site's current/index.html now says: {heading.group(1) if heading else index[:60]!r}.")
    shop = root / "apps" / "shop" / "current" / "bin" / "shop"
    if shop.exists():
        run = subprocess.run(["/bin/sh", str(shop)], capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise DemoError(f"{shop} failed with exit code {run.returncode}: {run.stderr.strip()}")
        say(f"Running {shop} prints:")
        indented(run.stdout)
    for headers in required.values():
        for token in headers.values():
            check_no_leak(root, token, tether.outputs)
    say()
    say(f"Done. Everything is in {root}; run the demo again to start over.")
    say()
    for line in how_to_continue(root):
        say(line)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    arguments.add_argument("--sandbox", default="/tmp/tether-demo",
                           help="directory for everything the demo makes; wiped first (default: %(default)s)")
    args = arguments.parse_args(argv)
    root = Path(os.path.abspath(os.path.expanduser(args.sandbox)))
    try:
        run_demo(root)
    except DemoError as exc:
        print(f"\nThe demo failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"\nThe demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
