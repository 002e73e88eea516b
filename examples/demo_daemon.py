#!/usr/bin/env python3
"""The demo's sandbox with the daemon: an artifact server and `tether run` in the foreground, Ctrl-C stops both.

    .venv/bin/python examples/demo_daemon.py --sandbox /tmp/tether-demo    (or: make demo-daemon)

It sets up the same sandbox as examples/demo.py (artifacts v1 and v2, the example manifests
at v1), starts `tether run` with its metrics on a free loopback port, waits until every
application is deployed, prints a line starting with "Ready:" and what to try, then passes
the daemon's log through until Ctrl-C (SIGINT) or SIGTERM, which stop the daemon and the
artifact server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo  # examples/demo.py, beside this file

STARTUP_SECONDS = 120  # the first pass downloads and extracts three small artifacts
STOP_SECONDS = 30
RESYNC_SECONDS = 5  # a full pass this often, so that drift is put right soon (tether's default: 60 s)


class Stop(Exception):
    """SIGINT or SIGTERM arrived: stop the daemon and the server."""


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_daemon(root: Path, port: int) -> subprocess.Popen[bytes]:
    """`tether run` in its own session, so that Ctrl-C reaches this script, which stops it in order."""
    command = [sys.executable, "-m", "controller", "run", "--manifests", str(root / "manifests"),
               "--state-dir", str(root / "state"), "--metrics-address", f"127.0.0.1:{port}",
               "--resync-interval", str(RESYNC_SECONDS), "-v"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    demo.say("$ tether " + " ".join(command[3:]))
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env, cwd=root, start_new_session=True)


def scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text: str = reply.read().decode()
            return text
    except OSError:
        return None


def deployed(root: Path, names: list[str], version: str) -> bool:
    """Every application Ready on `version`, as `tether status --json` tells."""
    run = subprocess.run([sys.executable, "-m", "controller", "status", "--json", "--manifests", str(root / "manifests"),
                          "--state-dir", str(root / "state")], capture_output=True, text=True, cwd=root, check=False)
    try:
        documents = json.loads(run.stdout)
    except ValueError:
        return False
    ready = {document.get("application"): [c for c in document.get("conditions", []) if c.get("type") == "Ready"]
             for document in documents if isinstance(document, dict)}
    return all(name in ready and ready[name] and ready[name][0].get("status") == "True"
               and (root / "apps" / name / "current").resolve() == root / "apps" / name / version for name in names)


def wait_ready(process: subprocess.Popen[bytes], root: Path, names: list[str], port: int) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not (deployed(root, names, "v1") and scrape(port) is not None):
        if process.poll() is not None:
            raise demo.DemoError(f"`tether run` exited with code {process.returncode} before it was ready "
                                 "(see its log above)")
        if time.monotonic() > deadline:
            raise demo.DemoError(f"`tether run` did not deploy v1 of {', '.join(names)} and answer on port {port} "
                                 f"within {STARTUP_SECONDS} s (see its log above)")
        time.sleep(0.5)


def what_to_try(root: Path, port: int) -> list[str]:
    manifests, site = root / "manifests", root / "apps" / "site"
    command = demo.tether_command()
    return [
        "Try, in another terminal:",
        f"  - deploy v2: edit spec.deployment in {manifests / 'site.yaml'} (v1 -> v2), or",
        f"      sed -i 's/^  deployment: v1$/  deployment: v2/' {manifests / 'site.yaml'}",
        "    and watch the log below; then",
        f"      {command} status --manifests {manifests} --state-dir {root / 'state'}",
        f"  - the metrics: curl http://127.0.0.1:{port}/metrics",
        f"  - drift: rm {site / 'current'}",
        f"    and within {RESYNC_SECONDS} s tether puts the link back (ls -l {site}); the log says so.",
        "Ctrl-C stops tether run and the artifact server.",
    ]


def stop_daemon(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            demo.say(f"`tether run` did not stop within {STOP_SECONDS} s of SIGTERM; killing it.")
            process.kill()
            process.wait()
    return process.returncode


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def run(root: Path) -> int:
    sandbox = demo.set_up(root)
    process: subprocess.Popen[bytes] | None = None
    try:
        demo.write_manifests(sandbox, "v1")
        port = free_loopback_port()
        process = start_daemon(root, port)
        wait_ready(process, root, sandbox.names, port)
        demo.say()
        demo.say(f"Ready: tether run (pid {process.pid}) deployed v1 of {', '.join(sandbox.names)}; "
                 f"metrics at http://127.0.0.1:{port}/metrics; artifacts at {sandbox.server.url}.")
        for line in what_to_try(root, port):
            demo.say(line)
        demo.say()
        code = process.wait()
        raise demo.DemoError(f"`tether run` exited by itself with code {code} (see its log above)")
    except Stop as stop:
        demo.say()
        demo.say(f"{stop} received: stopping tether run and the artifact server.")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave the daemon behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if process is not None:
            code = stop_daemon(process)
            demo.say(f"tether run (pid {process.pid}) stopped with exit code {code}.")
        sandbox.server.close()
        demo.say(f"The artifact server stopped. The sandbox stays in {root}.")


def main(argv: list[str] | None = None) -> int:
    arguments = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    arguments.add_argument("--sandbox", default="/tmp/tether-demo",
                           help="directory for everything the demo makes; wiped first (default: %(default)s)")
    args = arguments.parse_args(argv)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        return run(Path(os.path.abspath(os.path.expanduser(args.sandbox))))
    except Stop as stop:
        print(f"\n{stop} received before the daemon started; stopped.", file=sys.stderr)
        return 0
    except (demo.DemoError, OSError) as exc:
        print(f"\nThe demo failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
