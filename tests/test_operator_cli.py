"""What an on-call operator sees: the daemon's default log, `tether status` during a retried download and with
invalid manifests, the one error of a missing manifests directory, YAML and permission errors that say what to
do, `tether retry`'s answer, condition reasons, help texts and the progress line on a terminal.

Everything goes through the real `tether` command (and `tether run`) in subprocesses, against real HTTP servers.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import http.server
import io
import json
import os
import pty
import re
import select
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import __version__
from controller.cli import main as cli_main
from tests import support
from tests.test_daemon import condition, read_status, wait_converged, wait_until

CAMEL_CASE = re.compile(r"[A-Z][a-z]+(?:[A-Z][a-z]*)*")


def site(node: support.Node, http: support.HttpServer, deployment: str = "v1", **spec: Any) -> Path:
    """Manifest of `site` at <apps>/site with its artifacts served as /site/<deployment>.tar.gz."""
    for version in ("v1", "v2"):
        http.serve(f"/site/{version}.tar.gz", support.tar_bytes(support.site(f"site {version}")))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment=deployment, source={"url": http.url("/site/{deployment}.tar.gz")},
        **spec))
    return node.apps / "site"


class Daemon:
    """`tether run` with exactly the options given (no -v added): its stderr is collected line by line."""

    def __init__(self, node: support.Node, *options: str) -> None:
        command = [sys.executable, "-m", "controller", "run", "--manifests", str(node.manifests), "--state-dir",
                   str(node.state), "--metrics-address", "127.0.0.1:0", "--resync-interval", "3600", *options]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "NOTIFY_", "WATCHDOG_"))}
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, env=env, cwd=node.root)
        assert self.process.stderr is not None
        self.log = support.LogLines(self.process.stderr)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.log.reader.join(10)
        return self.log.text()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


# ---------------------------------------------------------------- 6. the daemon's log


def test_tether_run_logs_its_start_and_every_action_at_info_without_any_option(
        node: support.Node, http: support.HttpServer, daemons: list[Daemon]) -> None:
    site(node, http)
    daemon = Daemon(node)
    daemons.append(daemon)

    _, _, start = daemon.log.wait_for(r"tether is running")
    wait_converged(node, "site", "v1")
    daemon.log.wait_for(r"site: the pass is done")
    log = daemon.stop()

    assert f"tether is running (version {__version__})" in start
    assert str(node.manifests) in start and str(node.state) in start
    assert "1 applications" in start and re.search(r"metrics on 127\.0\.0\.1:\d+", start), start
    for action in (r"INFO .*site: deploy v1", r"INFO .*site: deployment v1 is complete",
                   r"INFO .*site: current now points to v1", r"INFO .*site: the pass is done in [\d.]+ s"):
        assert re.search(action, log), (action, log)
    assert " DEBUG " not in log


@pytest.mark.parametrize(("options", "shown", "hidden"), [
    (("-q",), ["WARNING", "ERROR"], ["INFO", "DEBUG"]),
    (("-qq",), ["ERROR"], ["WARNING", "INFO", "DEBUG"]),
    (("-v",), ["INFO", "DEBUG"], []),
])
def test_quiet_and_verbose_options_move_the_daemons_log_level(
        node: support.Node, http: support.HttpServer, daemons: list[Daemon], options: tuple[str, ...],
        shown: list[str], hidden: list[str]) -> None:
    # `site` converges (INFO) and then drifts, which spec.drift: report only reports (WARNING); the artifact of
    # `gone` is missing (ERROR); a scrape of the metrics is logged at DEBUG.
    app = site(node, http, drift="report")
    assert node.tether("reconcile").returncode == 0
    (app / "current").unlink()
    support.write_manifest(node.manifests, support.application(
        "gone", node.apps / "gone", deployment="v1", source={"url": http.url("/gone/{deployment}.tar.gz")}))
    daemon = Daemon(node, *options)
    daemons.append(daemon)
    wait_until(lambda: "node" in (read_status(node, "gone") or {}) and "node" in (read_status(node, "site") or {}))
    if "DEBUG" in shown:
        port = int(daemon.log.wait_for(r"Serving metrics on \S+ port \d+")[2].rsplit(" ", 1)[1].rstrip("."))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            while sock.recv(65536):
                pass
        daemon.log.wait_for(r" DEBUG ")
    log = daemon.stop()

    levels = {m.group(1) for m in re.finditer(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR) ", log, re.M)}
    assert set(shown) <= levels, (options, log)
    assert not levels & set(hidden), (options, log)


def test_one_shot_commands_keep_logging_warnings_only_by_default(node: support.Node, http: support.HttpServer) -> None:
    site(node, http)

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stderr
    assert run.stdout == "site: converged\n"
    assert " INFO " not in run.stderr and run.stderr == "", run.stderr


# ---------------------------------------------------------------- 8. status while a download is retried


@contextlib.contextmanager
def refusing_then_serving(body: bytes) -> Iterator[tuple[int, threading.Event]]:
    """A loopback port that refuses connections (bound, not listening) until the event is set, then serves
    `body` to every GET."""
    held = socket.socket()
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    open_now = threading.Event()
    servers: list[http.server.ThreadingHTTPServer] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def serve() -> None:
        open_now.wait()
        held.close()
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        servers.append(server)
        server.serve_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port, open_now
    finally:
        open_now.set()
        wait_until(lambda: servers, 10)
        servers[0].shutdown()
        servers[0].server_close()


def test_status_shows_the_new_desired_deployment_and_the_retry_while_a_download_is_retried(
        node: support.Node, http: support.HttpServer, daemons: list[Daemon]) -> None:
    site(node, http)
    daemon = Daemon(node)
    daemons.append(daemon)
    wait_converged(node, "site", "v1")

    with refusing_then_serving(support.tar_bytes(support.site("site v2"))) as (port, open_now):
        url = f"http://127.0.0.1:{port}/site/v2.tar.gz"
        deploy = node.tether("deploy", "site", "--deployment", "v2", "--url", url)
        assert deploy.returncode == 0, deploy.stderr

        def retrying_row() -> str | None:
            table = node.tether("status").stdout
            row = next((line for line in table.splitlines() if line.startswith("site ")), "")
            return row if "retrying: attempt 2 of 5" in row else None

        row = wait_until(retrying_row, 30, message=lambda: node.tether("status").stdout)
        whole = node.tether("status", "site")
        document = json.loads(node.tether("status", "site", "--json").stdout)
        open_now.set()
        wait_converged(node, "site", "v2", timeout=60)

    assert row.split()[1:3] == ["v2", "v1"], row  # DESIRED is the new deployment, CURRENT still the old one
    assert re.search(r"retrying: attempt 2 of 5, next at \d\d:\d\d:\d\d UTC \(", row), row
    assert len(row.split("  ")[-1].strip()) <= 100 and row.endswith("…"), row  # the message is cut, and says so
    assert whole.returncode == 0
    message = next(line for line in whole.stdout.splitlines() if line.startswith("Message:"))
    assert f"cannot download {url}" in message and message.endswith(")"), whole.stdout  # the whole message
    assert document["desired"] == "v2" and document["current"] == "v1"
    assert document["retrying"]["failedAttempt"] >= 1 and document["retrying"]["attempts"] == 5
    assert condition(document, "Reconciling")["reason"] == "Retrying"
    due = datetime.datetime.fromisoformat(document["nextAttemptAt"].replace("Z", "+00:00")).strftime("%H:%M:%S")
    assert f"next at {due} UTC" in condition(document, "Reconciling")["message"]
    done = json.loads(node.tether("status", "site", "--json").stdout)
    assert "retrying" not in done and condition(done, "Reconciling")["status"] == "False"


def test_a_short_message_is_not_cut_and_a_long_one_ends_with_an_ellipsis(node: support.Node,
                                                                            http: support.HttpServer) -> None:
    site(node, http, deployment="v2")
    http.serve("/site/v2.tar.gz", support.Reply(404, b"no such artifact " + b"x" * 300))
    assert node.tether("reconcile").returncode == 1
    error = json.loads(node.tether("status", "site", "--json").stdout)["lastError"]

    table = node.tether("status").stdout
    whole = node.tether("status", "site").stdout

    assert len(error) > 100
    row = next(line for line in table.splitlines() if line.startswith("site "))
    assert row.endswith("…") and error[:50] in row and error not in row, row
    assert error in whole


# ---------------------------------------------------------------- 9. a manifests directory that is not there


COMMANDS: list[tuple[str, ...]] = [
    ("status",), ("status", "site"), ("plan",), ("list", "site"), ("reconcile",), ("validate",), ("node",),
    ("deploy", "site"), ("deploy", "site", "--wait"), ("activate", "site", "v1"), ("rollback", "site"),
    ("remove", "site", "v0"), ("prune", "site"), ("suspend", "site"), ("resume", "site"), ("retry", "site"),
    ("verify", "site"), ("repair", "site"), ("run",),
]


@pytest.mark.parametrize("case", ["missing", "a file", "a symlink loop"])
def test_every_command_says_the_same_error_for_a_manifests_directory_it_cannot_list(
        node: support.Node, case: str) -> None:
    node.manifests.rmdir()
    if case == "a file":
        node.manifests.write_text("not a directory\n")
    elif case == "a symlink loop":
        node.manifests.symlink_to(node.manifests)
    before = support.snapshot(node.root)

    errors = set()
    for command in COMMANDS if case == "missing" else [("status",), ("reconcile",), ("validate",), ("run",)]:
        run = node.tether(*command, timeout=30)
        assert run.returncode == 2, (command, run.stdout, run.stderr)
        assert "Traceback" not in run.stderr, (command, run.stderr)
        errors.add(run.stderr)

    assert len(errors) == 1, errors
    (error,) = errors
    assert error.startswith(f"tether: the manifests directory {node.manifests} ") and "--manifests" in error, error
    assert error.count("\n") == 1
    assert support.snapshot(node.root) == before


# ---------------------------------------------------------------- 10. invalid manifests in status


def test_status_lists_invalid_manifests_with_their_file_and_error(node: support.Node, http: support.HttpServer) -> None:
    site(node, http)
    assert node.tether("reconcile").returncode == 0
    broken = support.write_manifest(node.manifests, "apiVersion: tether/v1\nkind: Application\nmetadata: [\n",
                                    "broken.yaml")
    never = support.write_manifest(node.manifests, support.application("never", node.apps / "never",
                                                                       deployment="v1", keep="lots"))

    table = node.tether("status")
    listed = node.tether("status", "--json")
    one = node.tether("status", "never", "--json")

    assert table.returncode == 0 and listed.returncode == 0 and one.returncode == 0
    rows = table.stdout.splitlines()
    assert any(r.startswith("site ") for r in rows)
    assert any(r.startswith("- ") and "InvalidManifest" in r and str(broken) in r for r in rows), table.stdout
    assert any(r.startswith("never ") and "InvalidManifest" in r and str(never) in r for r in rows), table.stdout
    documents = json.loads(listed.stdout)
    invalid = {d["invalidManifest"]["file"]: d for d in documents if "invalidManifest" in d}
    assert set(invalid) == {str(broken), str(never)}
    assert invalid[str(broken)]["name"] is None and invalid[str(broken)]["invalidManifest"]["line"] == 3
    assert invalid[str(never)]["name"] == "never" and "/spec" in invalid[str(never)]["invalidManifest"]["pointer"]
    assert json.loads(one.stdout)["invalidManifest"]["file"] == str(never)


def test_an_application_whose_manifest_broke_shows_its_last_state_and_the_error(
        node: support.Node, http: support.HttpServer) -> None:
    site(node, http)
    assert node.tether("reconcile").returncode == 0
    support.write_manifest(node.manifests, (node.manifests / "site.yaml").read_text().replace("deployment: v1",
                                                                                             "deployment: [v1"),
                           "site.yaml")

    documents = json.loads(node.tether("status", "--json").stdout)

    (document,) = documents
    assert document["name"] == "site" and document["current"] == "v1"
    assert document["invalidManifest"]["file"] == str(node.manifests / "site.yaml")


# ---------------------------------------------------------------- 11. validate with no path


def test_validate_without_a_path_validates_the_manifests_directory(node: support.Node,
                                                                   http: support.HttpServer) -> None:
    site(node, http)
    good = node.tether("validate")
    support.write_manifest(node.manifests, "kind: Application\n", "bad.yaml")
    bad = node.tether("validate")
    named = node.tether("validate", str(node.manifests))

    assert good.returncode == 0 and good.stdout == "1 application and 0 kinds are valid.\n", good.stdout
    assert bad.returncode == 2 and str(node.manifests / "bad.yaml") in bad.stdout
    assert (bad.returncode, bad.stdout) == (named.returncode, named.stdout)


# ---------------------------------------------------------------- 12. YAML syntax errors


BROKEN_YAML = {
    "an unterminated double quote": 'apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: "site\nspec:\n'
                                    "  path: /srv/site\n  deployment: v1\n",
    "an unterminated single quote": "apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: 'site\n",
    "an unclosed flow sequence": "apiVersion: tether/v1\nkind: Application\nspec:\n  hooks: [a, b\n  path: /x\n",
    "an unclosed flow mapping": "apiVersion: tether/v1\nkind: Application\nmetadata: {name: site\n",
    "a key indented too little": "apiVersion: tether/v1\nkind: Application\nmetadata:\n    name: site\n  x: 1\n",
    "a tab in the indentation": "apiVersion: tether/v1\nkind: Application\nmetadata:\n\tname: site\n",
    "a missing colon": "apiVersion: tether/v1\nkind Application\nmetadata:\n  name: site\n",
}


@pytest.mark.parametrize("case", sorted(BROKEN_YAML))
def test_a_yaml_syntax_error_keeps_both_places_pyyaml_names_and_says_what_to_do(node: support.Node,
                                                                               case: str) -> None:
    text = BROKEN_YAML[case]
    file = support.write_manifest(node.manifests, text, "site.yaml")
    with pytest.raises(yaml.MarkedYAMLError) as parsed:  # PyYAML's own account is the reference
        yaml.safe_load(text)
    marks = [m for m in (parsed.value.context_mark, parsed.value.problem_mark) if m is not None]

    run = node.tether("validate", str(file))

    assert run.returncode == 2, run.stdout
    assert run.stdout.count("\n") == 1, run.stdout
    line = int(re.match(re.escape(str(file)) + r":(\d+): ", run.stdout).group(1))  # type: ignore[union-attr]
    assert 1 <= line <= text.count("\n"), run.stdout  # a line of the file, never one past its end
    for mark in marks:
        assert f"line {mark.line + 1}, column {mark.column + 1}" in run.stdout, (case, run.stdout)
    assert "fix the syntax" in run.stdout and "tether validate" in run.stdout


def test_an_unterminated_quote_is_reported_where_the_string_starts(node: support.Node) -> None:
    file = support.write_manifest(node.manifests, BROKEN_YAML["an unterminated double quote"], "site.yaml")

    run = node.tether("validate", str(file), "--json")

    (problem,) = json.loads(run.stdout)["problems"]
    assert problem["line"] == 4 and "line 4, column 9" in problem["message"]


# ---------------------------------------------------------------- 13. permissions


@pytest.mark.parametrize("what", ["a manifest", "the manifests directory", "the node file"])
def test_a_permission_refusal_names_the_development_escape(node: support.Node, http: support.HttpServer,
                                                           what: str) -> None:
    site(node, http)
    node_file = node.root / "node.yaml"
    node_file.write_text("apiVersion: tether/v1\nkind: Node\nmetadata:\n  name: web-07\n")
    node_file.chmod(0o644)
    target = {"a manifest": node.manifests / "site.yaml", "the manifests directory": node.manifests,
              "the node file": node_file}[what]
    target.chmod(0o777 if target.is_dir() else 0o666)

    command = ("node",) if what == "the node file" else ("plan",)
    run = node.tether(*command, "--node-config", str(node_file))
    insecure = node.tether(*command, "--node-config", str(node_file), "--insecure-manifests")

    assert run.returncode == 2, run.stdout + run.stderr
    assert f"refused: {target} is writable by group or others" in run.stderr, run.stderr
    assert "--insecure-manifests" in run.stderr and "chmod go-w" in run.stderr
    assert insecure.returncode == 0, insecure.stderr


# ---------------------------------------------------------------- 14. tether retry


def test_retry_after_a_failed_download_says_the_back_off_is_reset_and_the_daemon_tries_now(
        node: support.Node, http: support.HttpServer, daemons: list[Daemon]) -> None:
    site(node, http, deployment="v3")  # /site/v3.tar.gz answers 404: a permanent failure, then back-off
    daemon = Daemon(node)
    daemons.append(daemon)
    failed = wait_until(lambda: (d := read_status(node, "site")) and d.get("nextAttemptAt") and d, 20)
    due = datetime.datetime.fromisoformat(failed["nextAttemptAt"].replace("Z", "+00:00")).timestamp()
    asked = len(http.requests)

    retry = node.tether("retry", "site")
    wait_until(lambda: len(http.requests) > asked, 20, message="the daemon made no new attempt")
    attempted = time.time()

    assert retry.returncode == 0, retry.stderr
    assert retry.stdout == (f"site: the back-off is reset (the next attempt was due at {failed['nextAttemptAt']}); "
                            "the next attempt is now: the running daemon makes it\n")
    assert attempted < due, "the attempt waited for the back-off"


def test_retry_without_a_daemon_says_how_to_make_the_attempt_now(node: support.Node, http: support.HttpServer) -> None:
    site(node, http, deployment="v3")
    assert node.tether("reconcile").returncode == 1

    retry = node.tether("retry", "site")

    assert retry.returncode == 0
    assert retry.stdout == ("site: the back-off is reset; no daemon is running: `tether reconcile site` makes the "
                            "next attempt now\n")


# ---------------------------------------------------------------- 15. conditions


def conditions_of(node: support.Node) -> list[dict[str, Any]]:
    found = []
    for document in json.loads(node.tether("status", "--json").stdout):
        found += document.get("conditions", [])
    return found


def test_every_condition_has_a_camel_case_reason_and_a_message_in_every_state(
        node: support.Node, http: support.HttpServer) -> None:
    app = site(node, http)
    seen: list[dict[str, Any]] = []
    node.tether("reconcile")
    seen += conditions_of(node)  # converged
    node.tether("deploy", "site", "--deployment", "v3", "--wait")  # a permanent failure (404)
    seen += conditions_of(node)
    site(node, http, suspend=True)
    node.tether("reconcile")
    seen += conditions_of(node)  # suspended
    support.write_manifest(node.manifests, (node.manifests / "site.yaml").read_text() + "bogus: 1\n", "site.yaml")
    node.tether("reconcile")
    seen += conditions_of(node)  # an invalid manifest
    site(node, http)
    node.tether("resume", "site")
    node.tether("deploy", "site", "--deployment", "v1", "--wait")
    (app / "current" / "index.html").write_text("changed\n")
    node.tether("verify", "site")
    seen += conditions_of(node)

    assert {c["type"] for c in seen} >= {"Ready", "Reconciling", "Stalled", "Drifted", "Healthy"}
    assert {(c["type"], c["status"]) for c in seen} >= {("Ready", "True"), ("Ready", "False"), ("Stalled", "True"),
                                                         ("Stalled", "False")}
    for c in seen:
        assert isinstance(c["reason"], str) and CAMEL_CASE.fullmatch(c["reason"]) and c["reason"] != "None", c
        assert isinstance(c["message"], str) and c["message"].strip(), c


# ---------------------------------------------------------------- 16. help


def every_parser() -> Iterator[tuple[str, Any]]:
    import argparse

    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")

    yield from walk(cli_main.parser(), "tether")


def test_every_option_and_argument_of_every_command_has_a_help_text() -> None:
    import argparse

    missing = [(path, action.dest) for path, parser in every_parser() for action in parser._actions
               if not action.help and not isinstance(action, (argparse._HelpAction, argparse._VersionAction,
                                                                 argparse._SubParsersAction))]

    assert missing == []


def test_the_help_of_every_command_shows_the_defaults(node: support.Node) -> None:
    for path, _ in every_parser():
        run = subprocess.run([sys.executable, "-m", "controller", *path.split()[1:], "--help"], capture_output=True,
                             text=True, timeout=30, env={k: v for k, v in os.environ.items()
                                                         if not k.startswith("TETHER_")})
        assert run.returncode == 0, (path, run.stderr)
        if "--manifests" in run.stdout:
            assert "(default: /etc/tether/manifests)" in " ".join(run.stdout.split()), path
        assert "(default: None)" not in run.stdout and "(default: False)" not in run.stdout, path
    run_help = " ".join(node.tether("run", "--help").stdout.split())
    for option, text in (("--workers", "(default: 4)"), ("--log-format", "(default: text)"),
                         ("--resync-interval", "(default: 60.0)"), ("--metrics-address", "(default: 127.0.0.1:9731)")):
        assert option in run_help and text in run_help, (option, run_help)


# ---------------------------------------------------------------- 17. progress on a terminal


def big_artifact(files: int = 200, size: int = 8192) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for number in range(files):
            data = os.urandom(size)
            info = tarfile.TarInfo(f"site/file-{number}.bin")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@contextlib.contextmanager
def slow_server(body: bytes, seconds: float, break_first: bool = False) -> Iterator[int]:
    """Serves `body` to every GET in 32 pieces over about `seconds` (a slow link); with `break_first`, the first
    answer ends after half of them (the connection closes early)."""
    answers = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            piece = len(body) // 32 + 1
            answers.append(self.path)
            end = len(body) // 2 if break_first and len(answers) == 1 else len(body)
            for start in range(0, end, piece):
                self.wfile.write(body[start:min(end, start + piece)])
                self.wfile.flush()
                time.sleep(seconds / 32)  # the pace of a slow link, not a synchronisation

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def on_terminal(node: support.Node, *args: str) -> tuple[int, str, bytes, float]:
    """Run the real CLI with stderr on a pseudo-terminal: (exit code, stdout, what the terminal got, seconds)."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "controller", *args, "--manifests", str(node.manifests),
                                "--state-dir", str(node.state)], stdout=subprocess.PIPE, stderr=follower,
                               stdin=subprocess.DEVNULL, env=env, cwd=node.root)
    os.close(follower)
    terminal = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, "the command wrote nothing for 60 s"
        try:
            chunk = os.read(leader, 65536)
        except OSError as exc:
            if exc.errno != errno.EIO:  # EIO: the command closed the terminal (it exited)
                raise
            break
        if not chunk:
            break
        terminal += chunk
    assert process.stdout is not None
    stdout = process.stdout.read().decode()
    code = process.wait(30)
    os.close(leader)
    return code, stdout, terminal, time.monotonic() - started


PROGRESS = re.compile(rb"\r\x1b\[K(site v\d): ([\d.]+ \w?i?B) downloaded \(([\d.]+ \w?i?B)/s\), ([\d,]+) files, "
                      rb"([\d.]+ \w?i?B) written")


@pytest.mark.parametrize("command", [("reconcile",), ("deploy", "site", "--wait")])
def test_a_terminal_gets_one_progress_line_rewritten_at_most_ten_times_a_second_and_cleared(
        node: support.Node, command: tuple[str, ...]) -> None:
    with slow_server(big_artifact(), 1.5) as port:
        support.write_manifest(node.manifests, support.application(
            "site", node.apps / "site", deployment="v1",
            source={"url": f"http://127.0.0.1:{port}/{{deployment}}.tar.gz"}))
        code, stdout, terminal, seconds = on_terminal(node, *command)

    assert code == 0, terminal
    assert stdout == "site: converged\n"
    updates = PROGRESS.findall(terminal)
    assert len(updates) >= 2, terminal
    assert len(updates) <= 10 * seconds + 2, (len(updates), seconds)
    assert {u[0] for u in updates} == {b"site v1"}
    files = [int(u[3].replace(b",", b"")) for u in updates]
    assert files == sorted(files) and files[-1] > 0
    assert b"\n" not in terminal.replace(b"\r\n", b"\n").split(b"\r\x1b[K", 1)[1], terminal  # one line
    assert terminal.endswith(b"\r\x1b[K"), terminal[-80:]  # cleared at the end


def test_a_pipe_and_json_get_no_progress(node: support.Node) -> None:
    with slow_server(big_artifact(50), 0.5) as port:
        support.write_manifest(node.manifests, support.application(
            "site", node.apps / "site", deployment="v1",
            source={"url": f"http://127.0.0.1:{port}/{{deployment}}.tar.gz"}))
        piped = node.tether("reconcile")
        support.write_manifest(node.manifests, (node.manifests / "site.yaml").read_text().replace("deployment: v1", "deployment: v2"),
                               "site.yaml")
        code, stdout, terminal, _ = on_terminal(node, "reconcile", "--json")

    assert piped.returncode == 0 and piped.stderr == "", piped.stderr
    assert code == 0 and json.loads(stdout)[0]["converged"] is True
    assert terminal == b"", terminal


def test_a_log_line_during_the_progress_line_starts_on_a_line_of_its_own(node: support.Node) -> None:
    with slow_server(big_artifact(), 1.0, break_first=True) as port:
        support.write_manifest(node.manifests, support.application(
            "site", node.apps / "site", deployment="v1",
            source={"url": f"http://127.0.0.1:{port}/{{deployment}}.tar.gz"}))
        code, stdout, terminal, _ = on_terminal(node, "reconcile")

    assert code == 0 and stdout == "site: converged\n", terminal
    before, _, _ = terminal.partition(b"Attempt 1 failed")
    assert PROGRESS.search(before), terminal  # the line was shown before the warning
    segments = re.split(rb"\r\x1b\[K|\r?\n", terminal)
    warning = next(s for s in segments if b"Attempt 1 failed" in s)
    assert re.match(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING ", warning), warning
    assert terminal.endswith(b"\r\x1b[K")
