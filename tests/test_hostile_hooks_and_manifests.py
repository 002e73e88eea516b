"""Hostile hooks and manifests (issue 9, items 10 and 14): a hook never outlives the controller that
started it, nor runs twice beside a survivor; a manifest string that no file, log or scrape can carry
(a NUL, a lone surrogate, a control character where it makes no sense) is refused by validation with
file:line and pointer, and nothing odd in a file name or a status breaks `/metrics` or the textfile."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests import support
from tests.test_daemon import Daemon

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 20, message: str = "") -> T:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {message or predicate}")
        time.sleep(0.02)
    return value


def alive(pid: int) -> bool:
    """True while `pid` is a process that has not ended (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[19])


def artifact(tmp_path: Path) -> str:
    path = tmp_path / "site.tar.gz"
    path.write_bytes(support.tiny_artifact())
    return f"file://{path}"


# ================================================================ item 14: strings no manifest may hold

BASE = """\
apiVersion: tether/v1
kind: Application
metadata:
  name: site
  labels:
    team: web
spec:
  path: {path}
  application: shop
  environment: production
  deployment: v1
  user: root
  driftIgnore: [logs]
  source:
    url: "{url}"
    headers:
      X-Token: abc
      X-Secret: {{fromFile: /etc/tether/token}}
  hooks:
    afterDeploy: "echo deployed"
"""

# (what, the line to change, its replacement, the pointer named, the line named)
BAD_STRINGS = [
    ("a lone surrogate in a label value", "    team: web", '    team: "\\udcff"', "/metadata/labels/team", 6),
    ("a lone surrogate in a label key", "    team: web", '    "t\\ud800": web', "/metadata/labels/t\\ud800", 6),
    ("a NUL in a label value", "    team: web", '    team: "w\\0eb"', "/metadata/labels/team", 6),
    ("a NUL in the path", "  path: {path}", '  path: "{path}\\0x"', "/spec/path", 8),
    ("a line feed in the path", "  path: {path}", '  path: "{path}\\nx"', "/spec/path", 8),
    ("an escape character in the application", "  application: shop", '  application: "sh\\eop"',
     "/spec/application", 9),
    ("a tab in the environment", "  environment: production", '  environment: "prod\\tuction"',
     "/spec/environment", 10),
    ("a C1 control (NEL) in the user", "  user: root", '  user: "ro\\Not"', "/spec/user", 12),
    ("a line separator in a driftIgnore entry", "  driftIgnore: [logs]", '  driftIgnore: ["lo\\Lgs"]',
     "/spec/driftIgnore/0", 13),
    ("a NUL in the url", '    url: "{url}"', '    url: "{url}\\0"', "/spec/source/url", 15),
    ("CR LF in a header value (header injection)", "      X-Token: abc", '      X-Token: "abc\\r\\nX-Admin: 1"',
     "/spec/source/headers/X-Token", 17),
    ("a DEL in a header value", "      X-Token: abc", '      X-Token: "a\\x7fbc"', "/spec/source/headers/X-Token", 17),
    ("a header value HTTP cannot send", "      X-Token: abc", '      X-Token: "\\u20ac"',
     "/spec/source/headers/X-Token", 17),
    ("a NUL in a fromFile path", "      X-Secret: {{fromFile: /etc/tether/token}}",
     '      X-Secret: {{fromFile: "/etc/tether/\\0token"}}', "/spec/source/headers/X-Secret/fromFile", 18),
    ("a NUL in an inline hook script", '    afterDeploy: "echo deployed"', '    afterDeploy: "echo \\0deployed"',
     "/spec/hooks/afterDeploy", 20),
    ("a lone surrogate in an inline hook script", '    afterDeploy: "echo deployed"',
     '    afterDeploy: "echo \\udcff"', "/spec/hooks/afterDeploy", 20),
    ("a lone surrogate in a hook path", '    afterDeploy: "echo deployed"',
     '    afterDeploy: {{path: "/usr/bin/\\udcfftrue"}}', "/spec/hooks/afterDeploy/path", 20),
    ("a NUL in a top-level key", "spec:", '"spe\\0c":', "/spe\\x00c", 7),
]


def manifest_text(tmp_path: Path, line: str = "", replacement: str = "") -> str:
    text = BASE.replace(line, replacement) if line else BASE
    assert not line or text != BASE
    return text.format(path=tmp_path / "apps" / "site", url=artifact(tmp_path))


@pytest.mark.parametrize(("what", "line", "replacement", "pointer", "number"), BAD_STRINGS,
                         ids=[case[0] for case in BAD_STRINGS])
def test_validate_refuses_a_string_that_holds_a_character_it_may_not_with_file_line_and_pointer(
        node: support.Node, tmp_path: Path, what: str, line: str, replacement: str, pointer: str,
        number: int) -> None:
    file = support.write_manifest(node.manifests, manifest_text(tmp_path, line, replacement), "site.yaml")
    done = node.tether("validate", str(node.manifests))
    said = done.stdout + done.stderr
    assert done.returncode == 2, (what, said)
    assert "Traceback" not in said
    assert f"{file}:{number}: " in said, said
    assert f"(at {pointer})" in said, said
    assert said.replace("\n", "").isprintable(), repr(said)


def test_a_string_refused_by_validate_never_reaches_a_pass_and_leaves_the_node_as_it_was(
        node: support.Node, tmp_path: Path) -> None:
    support.write_manifest(node.manifests, manifest_text(tmp_path, "  path: {path}", '  path: "{path}\\0x"'),
                           "site.yaml")
    done = node.tether("reconcile")
    assert "Traceback" not in done.stderr, done.stderr
    assert "NUL character" in done.stdout + done.stderr
    assert not (tmp_path / "apps" / "site").exists()


def test_an_inline_script_may_hold_tabs_escapes_and_carriage_returns_and_a_header_latin_1(
        node: support.Node, tmp_path: Path) -> None:
    text = manifest_text(tmp_path).replace('afterDeploy: "echo deployed"',
                                           'afterDeploy: "printf \'\\t\\e[1m\\r\\n\'"').replace("X-Token: abc",
                                                                                               'X-Token: "caf\\xe9"')
    support.write_manifest(node.manifests, text, "site.yaml")
    done = node.tether("validate", str(node.manifests))
    assert done.returncode == 0, done.stderr


def test_a_kind_whose_hook_script_holds_a_lone_surrogate_is_refused(node: support.Node) -> None:
    text = ('apiVersion: tether/v1\nkind: ApplicationKind\nmetadata:\n  name: web\nspec:\n  hooks:\n'
            '    beforeDeploy: "echo \\udcff"\n')
    file = support.write_manifest(node.manifests, text, "web.yaml")
    done = node.tether("validate", str(node.manifests))
    assert done.returncode == 2
    said = done.stdout + done.stderr
    assert f"{file}:7: " in said and "(at /spec/hooks/beforeDeploy)" in said, said


# ---------------------------------------------------------------- the exposition survives what got through


def promtool() -> str:
    import shutil
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: install the `prometheus` Debian package")
    return found


def check_metrics(text: str) -> None:
    done = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def daemons(node: support.Node) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def run(*args: str) -> Daemon:
        daemon = Daemon(node, args, None)
        started.append(daemon)
        daemon.wait_for_log(r"tether is running")
        return daemon

    yield run
    for daemon in started:
        daemon.stop()


def put_bad_name_manifest(node: support.Node) -> bytes:
    """An invalid manifest whose file name is not UTF-8; returns that name."""
    name = os.fsencode(node.manifests) + b"/bad\xff.yaml"
    with open(name, "wb") as handle:
        handle.write(b"apiVersion: tether/v1\nkind: Application\nmetadata: {name: bad}\nspec: {path: relative}\n")
    os.chmod(name, 0o644)
    return name


def test_metrics_answer_200_and_pass_promtool_with_an_invalid_manifest_whose_file_name_is_not_utf_8(
        node: support.Node, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source={"url": artifact(tmp_path)}))
    put_bad_name_manifest(node)
    daemon = daemons()
    wait_until(lambda: "tether_application_ready{name=\"site\"} 1.0" in daemon.scrape())
    body = daemon.scrape()
    assert 'tether_manifest_errors{file="' in body and 'bad\\\\xff.yaml"} 1.0' in body, body
    check_metrics(body)
    assert daemon.process.poll() is None


def test_the_textfile_writer_keeps_the_daemon_running_with_a_file_name_that_is_not_utf_8(
        node: support.Node, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source={"url": artifact(tmp_path)}))
    put_bad_name_manifest(node)
    textfile = tmp_path / "tether.prom"
    daemon = daemons("--metrics-textfile", str(textfile))
    wait_until(lambda: textfile.exists() and "bad\\\\xff.yaml" in textfile.read_text(), message=daemon.log())
    wait_until(lambda: 'tether_application_ready{name="site"} 1.0' in textfile.read_text(), message=daemon.log())
    check_metrics(textfile.read_text())
    assert daemon.process.poll() is None, daemon.log()
    assert "Traceback" not in daemon.log()


def test_a_textfile_that_cannot_be_written_is_logged_and_the_daemon_goes_on(
        node: support.Node, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source={"url": artifact(tmp_path)}))
    textfile = tmp_path / "missing-directory" / "tether.prom"
    daemon = daemons("--metrics-textfile", str(textfile))
    daemon.wait_for_log(r"could not write the metrics textfile")
    wait_until(lambda: 'tether_application_ready{name="site"} 1.0' in daemon.scrape())
    assert daemon.process.poll() is None, daemon.log()


def test_a_current_link_to_a_deployment_whose_name_is_not_utf_8_does_not_break_the_exposition(
        node: support.Node, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    """A status that got its odd text from the tree (not from a manifest) is shown escaped."""
    app = node.apps / "site"
    odd = os.fsencode(app) + b"/v\xff\x1b"
    os.makedirs(odd)
    os.symlink(odd, os.fsencode(app) + b"/current")
    support.write_manifest(node.manifests, support.application("site", app, deployment="v1", suspend=True,
                                                               source={"url": artifact(tmp_path)}))
    daemon = daemons()
    body = wait_until(lambda: next((text for text in [daemon.scrape()] if "tether_application_info{" in text), ""))
    assert 'deployment="v\\\\xff\\\\x1b"' in body or 'deployment="v\\\\udcff\\\\x1b"' in body, body
    check_metrics(body)


def test_deploy_refuses_a_url_with_control_characters(node: support.Node, tmp_path: Path) -> None:
    support.write_manifest(node.manifests, support.application("site", node.apps / "site", deployment="v1",
                                                               source={"url": artifact(tmp_path)}))
    done = node.tether("deploy", "site", "--deployment", "v2", "--url", artifact(tmp_path) + "\r\nX-Admin: 1")
    assert done.returncode == 2, done.stderr
    assert "control character or line break U+000D" in done.stderr, done.stderr
    assert not (node.state / "overrides" / "site.json").exists() or "X-Admin" not in (
        node.state / "overrides" / "site.json").read_text()
