"""Hostile hooks and manifests (issue 9, items 10 and 14): a hook never outlives the controller that
started it, nor runs twice beside a survivor; a manifest string that no file, log or scrape can carry
(a NUL, a lone surrogate, a control character where it makes no sense) is refused by validation with
file:line and pointer, and nothing odd in a file name or a status breaks `/metrics` or the textfile."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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
    ("a NUL in a label key", "    team: web", '    "te\\0am": web', "/metadata/labels/te\\x00am", 6),
    ("an unknown key with a NUL", "spec:", '"spe\\0c": 1\nspec:', "/spe\\x00c", 7),
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


# ================================================================ item 10: hooks die with tether


def reconcile_in_background(node: support.Node) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "controller", "reconcile", "--manifests", str(node.manifests),
               "--state-dir", str(node.state), "-v"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=node.root)


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") else None


def exchange(tmp_path: Path) -> Path:
    """A directory every user may write, where hooks leave their pids."""
    directory = tmp_path / "pids"
    directory.mkdir(mode=0o777)
    directory.chmod(0o1777)
    return directory


# A hook that, while `block` exists, leaves its pid and its background child's, then sleeps.
BLOCKING_HOOK = """\
if [ -e {pids}/block ]; then
  sleep 300 &
  echo $! > {pids}/child.tmp && mv {pids}/child.tmp {pids}/child.pid
  {escape}
  echo $$ > {pids}/hook.tmp && mv {pids}/hook.tmp {pids}/hook.pid
  sleep 300
fi
"""
ESCAPE = "setsid sh -c 'echo $$ > {pids}/escaped.tmp && mv {pids}/escaped.tmp {pids}/escaped.pid; exec sleep 300' &"


def blocking_site(node: support.Node, tmp_path: Path, phase: str = "beforeActivate", escape: bool = False,
                  under: Path | None = None, **spec: object) -> Path:
    """The application `site` at <apps>/site (or <under>/site) with a BLOCKING_HOOK; the hook's pid directory."""
    pids = exchange(under or tmp_path)
    (pids / "block").touch()
    script = BLOCKING_HOOK.format(pids=pids, escape=ESCAPE.format(pids=pids) if escape else "")
    support.write_manifest(node.manifests, support.application(
        "site", (under or node.apps) / "site", deployment="v1", source={"url": artifact(tmp_path)},
        hooks={phase: script}, **spec))
    return pids


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's temporary directory is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="tether-h10-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def gone(*pids: int) -> bool:
    return not any(alive(pid) for pid in pids)


def watchdogs_of(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"tether-hook-watchdog" in argv and argv[-2:-1] == [str(pgid).encode()]:
            found.append(int(entry))
    return found


@pytest.mark.parametrize("phase", ["beforeActivate", "afterDeploy"])
def test_a_hook_and_its_children_die_promptly_when_tether_reconcile_is_killed(
        node: support.Node, tmp_path: Path, phase: str) -> None:
    pids = blocking_site(node, tmp_path, phase)
    tether = reconcile_in_background(node)
    try:
        hook = wait_until(lambda: read_pid(pids / "hook.pid"), 60, "the hook never started")
        child = wait_until(lambda: read_pid(pids / "child.pid"), 10)
        assert alive(hook) and alive(child)
        # tether records the hook just after starting it, so the hook may write its pid first
        wait_until((node.apps / "site" / ".tether" / "running-hook.json").exists, 10, "the hook is not recorded")
        tether.kill()
        tether.wait(10)
        wait_until(lambda: gone(hook, child), 10, "the hook or its child outlived tether")
        wait_until(lambda: not watchdogs_of(hook), 10, "the watchdog stays")
    finally:
        tether.kill()
        tether.wait()
    (pids / "block").unlink()
    done = node.tether("reconcile")
    assert done.returncode == 0, done.stderr
    assert os.readlink(node.apps / "site" / "current").endswith("/v1")
    assert not (node.apps / "site" / ".tether" / "running-hook.json").exists()


def test_a_hook_of_another_user_dies_with_tether_and_the_next_pass_kills_its_group_even_without_the_watchdog(
        node: support.Node, tmp_path: Path, open_dir: Path) -> None:
    """The watchdog is killed first: the hook (running as nobody) still dies of PR_SET_PDEATHSIG, and its
    background child, which PDEATHSIG does not reach, is killed by the next pass from the record."""
    pids = blocking_site(node, tmp_path, under=open_dir, user="nobody", group="nogroup")
    tether = reconcile_in_background(node)
    try:
        hook = wait_until(lambda: read_pid(pids / "hook.pid"), 60, "the hook never started")
        child = wait_until(lambda: read_pid(pids / "child.pid"), 10)
        for watchdog in wait_until(lambda: watchdogs_of(hook), 10, "no watchdog"):
            os.kill(watchdog, signal.SIGKILL)
        tether.kill()
        tether.wait(10)
        wait_until(lambda: not alive(hook), 10, "the hook outlived tether: PDEATHSIG is not armed")
        assert alive(child)
    finally:
        tether.kill()
        tether.wait()
    (pids / "block").unlink()
    done = node.tether("reconcile")
    assert done.returncode == 0, done.stderr
    assert gone(child), "the next pass left the hook's child running"
    assert "outlived the tether that started it" in done.stderr
    assert os.readlink(open_dir / "site" / "current").endswith("/v1")


def test_a_hook_child_that_escapes_into_a_new_session_is_not_tethers_but_the_hook_group_dies(
        node: support.Node, tmp_path: Path) -> None:
    """What tether promises is the hook's process group (design section 4): a process that left it with setsid is out
    of reach; the group dies with tether and the next pass runs as usual."""
    pids = blocking_site(node, tmp_path, escape=True)
    tether = reconcile_in_background(node)
    escaped = None
    try:
        hook = wait_until(lambda: read_pid(pids / "hook.pid"), 60, "the hook never started")
        child = wait_until(lambda: read_pid(pids / "child.pid"), 10)
        escaped = wait_until(lambda: read_pid(pids / "escaped.pid"), 10)
        tether.kill()
        tether.wait(10)
        wait_until(lambda: gone(hook, child), 10, "the hook's group outlived tether")
        (pids / "block").unlink()
        done = node.tether("reconcile")
        assert done.returncode == 0, done.stderr
        assert os.readlink(node.apps / "site" / "current").endswith("/v1")
        assert not (node.apps / "site" / ".tether" / "running-hook.json").exists()
    finally:
        tether.kill()
        tether.wait()
        if escaped is not None and alive(escaped):
            os.kill(escaped, signal.SIGKILL)


# ---------------------------------------------------------------- a survivor recorded by a tether that died


def survivor() -> tuple[int, int]:
    """A process group in a session of its own (a leader and a child), reaped by init: (leader, child)."""
    script = "setsid sh -c 'sleep 300 >/dev/null 2>&1 & echo $$ $!; exec sleep 300 >/dev/null 2>&1' &"
    out = subprocess.run(["sh", "-c", script],
                         capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    leader, child = map(int, out.stdout.split())
    wait_until(lambda: alive(leader) and Path(f"/proc/{leader}/cmdline").read_bytes().startswith(b"sleep"))
    return leader, child


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


# The hook reports whether the recorded processes still lived when it ran.
PROBE = """\
for pid in {pids}; do
  state=$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)
  if [ -n "$state" ] && [ "$state" != Z ]; then echo "$pid alive"; else echo "$pid dead"; fi
done > {out}
"""


def probing_site(node: support.Node, tmp_path: Path, record: dict[str, object] | str, *watched: int) -> Path:
    out = tmp_path / "probe.txt"
    meta = node.apps / "site" / ".tether"
    meta.mkdir(parents=True, mode=0o755)
    (meta / "running-hook.json").write_text(record if isinstance(record, str) else json.dumps(record))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": artifact(tmp_path)},
        hooks={"afterDeploy": PROBE.format(pids=" ".join(map(str, watched)), out=out)}))
    return out


def record_of(leader: int, **changes: object) -> dict[str, object]:
    return {"pid": leader, "pgid": leader, "startTime": start_time(leader), "bootId": boot_id(),
            "phase": "afterDeploy", "source": "application", "deployment": "v1", **changes}


def test_the_next_pass_kills_a_recorded_survivor_group_before_it_runs_any_hook(
        node: support.Node, tmp_path: Path) -> None:
    leader, child = survivor()
    try:
        out = probing_site(node, tmp_path, record_of(leader), leader, child)
        done = node.tether("reconcile")
        assert done.returncode == 0, done.stderr
        assert out.read_text() == f"{leader} dead\n{child} dead\n"
        assert "outlived the tether that started it" in done.stderr and f"process group {leader}" in done.stderr
        assert not (node.apps / "site" / ".tether" / "running-hook.json").exists()
    finally:
        for pid in (leader, child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_survivor_that_ignores_sigterm_is_killed_after_the_grace(node: support.Node, tmp_path: Path) -> None:
    script = "setsid sh -c 'trap \"\" TERM; echo $$; exec >/dev/null 2>&1; while :; do sleep 1; done' &"
    out = subprocess.run(["sh", "-c", script],
                         capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    leader = int(out.stdout)
    try:
        probe = probing_site(node, tmp_path, record_of(leader), leader)
        done = node.tether("reconcile")
        assert done.returncode == 0, done.stderr
        assert probe.read_text() == f"{leader} dead\n"
    finally:
        if alive(leader):
            os.killpg(leader, signal.SIGKILL)


@pytest.mark.parametrize("change", ["another start time", "another boot"])
def test_a_record_whose_process_is_not_the_one_started_is_never_signalled(
        node: support.Node, tmp_path: Path, change: str) -> None:
    leader, child = survivor()
    try:
        record = record_of(leader, **({"startTime": start_time(leader) - 1} if change == "another start time"
                                      else {"bootId": "00000000-0000-0000-0000-000000000000"}))
        out = probing_site(node, tmp_path, record, leader, child)
        done = node.tether("reconcile")
        assert done.returncode == 0, done.stderr
        assert out.read_text() == f"{leader} alive\n{child} alive\n"
        assert alive(leader) and alive(child)
        assert "outlived" not in done.stderr
        assert not (node.apps / "site" / ".tether" / "running-hook.json").exists()
    finally:
        for pid in (leader, child):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("record", ["{not json", '{"pid": 1, "pgid": 1, "startTime": 1}', '[]',
                                    '{"pid": 4194303, "pgid": 4194303, "startTime": 5, "bootId": "%s"}'])
def test_a_record_that_is_garbage_or_names_no_process_is_dropped_and_the_pass_goes_on(
        node: support.Node, tmp_path: Path, record: str) -> None:
    probing_site(node, tmp_path, record.replace("%s", boot_id()))
    done = node.tether("reconcile")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert os.readlink(node.apps / "site" / "current").endswith("/v1")
    assert not (node.apps / "site" / ".tether" / "running-hook.json").exists()


def test_a_hook_run_by_a_daemon_worker_lives_while_its_pass_runs_and_dies_when_the_daemon_is_killed(
        node: support.Node, tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    """PDEATHSIG fires when the forking thread ends: a worker thread lives until its hook has ended, so the
    hook is not killed early; SIGKILL of `tether run` kills the hook and its child."""
    pids = blocking_site(node, tmp_path)
    daemon = daemons()
    hook = wait_until(lambda: read_pid(pids / "hook.pid"), 60, "the hook never started")
    child = wait_until(lambda: read_pid(pids / "child.pid"), 10)
    started = time.monotonic()
    wait_until(lambda: time.monotonic() - started > 2 and daemon.scrape(), 10)  # the daemon works meanwhile
    assert alive(hook) and alive(child), "the hook was killed while its pass ran"
    daemon.signal(signal.SIGKILL)
    daemon.process.wait(10)
    wait_until(lambda: gone(hook, child), 10, "the hook or its child outlived the daemon")
