"""Lifecycle hooks (design section 4): who they run as, with which environment, in which order,
how a timeout ends every process of a hook, bounded output, what a failure does, and counts.

Every hook is a real process; the controller is the real command line, except for the
timeout tests, which drive `hooks.Runner` in-process to choose a short grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import grp
import json
import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.engine import hooks
from controller.manifests import loading, model
from tests import support

HOOK_USER, EXTRA_GROUP = "tether-hook-test", "tether-hook-extra"
PHASES = ("beforeDeploy", "afterDeploy", "beforeActivate", "afterActivate")
SECRET = "s3cret-token-that-hooks-must-never-see"


# ---------------------------------------------------------------- fixtures and helpers


def _hook_user_or_skip_reason(undo: list[list[str]]) -> pwd.struct_passwd | str:
    """The hook user (created with a supplementary group when we are root), or why it cannot be used.
    Each change made here puts the command that reverses it at the front of `undo`."""
    if os.geteuid() != 0:
        try:
            user = pwd.getpwnam(HOOK_USER)
        except KeyError:
            return f"hooks run as another user only when tether runs as root, and there is no user {HOOK_USER}"
        if user.pw_uid != os.geteuid():
            return f"tether is not root and not {HOOK_USER}, so it cannot run hooks as {HOOK_USER}"
        return user
    home = Path("/var/lib") / HOOK_USER
    steps: list[tuple[list[str], list[str]]] = []  # (command, its reverse)
    try:
        pwd.getpwnam(HOOK_USER)
    except KeyError:
        if home.exists() or home.is_symlink():
            return f"running as root, but {home} exists without the user {HOOK_USER}; remove it"
        steps.append((["useradd", "--system", "--user-group", "--create-home", "--home-dir", str(home), HOOK_USER],
                      ["userdel", "--remove", HOOK_USER]))
    try:
        members = grp.getgrnam(EXTRA_GROUP).gr_mem
    except KeyError:
        steps.append((["groupadd", "--system", EXTRA_GROUP], ["groupdel", EXTRA_GROUP]))
        members = []
    if HOOK_USER not in members:
        steps.append((["usermod", "-aG", EXTRA_GROUP, HOOK_USER], ["gpasswd", "--delete", HOOK_USER, EXTRA_GROUP]))
    for command, reverse in steps:
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            return f"running as root, but {' '.join(command)!r} failed: {getattr(exc, 'stderr', '') or exc}"
        undo.insert(0, reverse)
    return pwd.getpwnam(HOOK_USER)


def _undo(undo: list[list[str]]) -> None:
    """Reverse what the fixture created, newest first. A user that is gone takes its membership along."""
    failed = []
    for command in undo:
        if command[0] == "gpasswd" and any(c[0] == "userdel" for c in undo):
            continue
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        if run.returncode not in (0, 12):  # userdel --remove: 12 = the home or mail spool could not be removed
            failed.append(f"{' '.join(command)!r}: {run.stderr.strip()}")
    home = Path("/var/lib") / HOOK_USER
    if any(c[0] == "userdel" for c in undo) and home.exists():
        shutil.rmtree(home)
    assert not failed, "could not remove what the hook tests created: " + "; ".join(failed)


@pytest.fixture(scope="session")
def hook_user() -> Iterator[pwd.struct_passwd]:
    """The hook user; what this fixture created (user, group, membership, home) is removed after the tests,
    whether they passed or not, and nothing that was there before."""
    undo: list[list[str]] = []
    try:
        found = _hook_user_or_skip_reason(undo)
        if isinstance(found, str):
            pytest.skip(found)
        yield found
    finally:
        _undo(undo)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse, for applications whose hooks run as another user
    (pytest's own temporary directory is private to the user running the tests)."""
    path = Path(tempfile.mkdtemp(prefix="tether-hooks-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _status(node: support.Node, name: str) -> dict[str, Any]:
    document = json.loads((node.state / "status" / f"{name}.json").read_text())
    assert isinstance(document, dict)
    return document


def _record(app: Path, deployment: str) -> dict[str, Any]:
    document = json.loads((app / ".tether" / "deployments" / f"{deployment}.json").read_text())
    assert isinstance(document, dict)
    return document


def _deploy_manifest(node: support.Node, http: support.HttpServer, name: str, app: Path, deployment: str,
                     **spec: Any) -> None:
    for version in ("v1", "v2"):
        if f"/{version}.tar.gz" not in http.routes:
            http.serve(f"/{version}.tar.gz", support.tar_bytes(support.site(version)))
    support.write_manifest(node.manifests, support.application(
        name, app, deployment=deployment, source={"url": http.url("/{deployment}.tar.gz")}, **spec))


def _parsed(tmp_path: Path, hook: str, timeout: float) -> model.Application:
    """An application whose beforeActivate hook is `hook`, with its deployment directory v1 made."""
    document = support.application("slow", tmp_path / "app", hookTimeoutSeconds=timeout,
                                    hooks={"beforeActivate": hook})
    manifest = support.write_manifest(tmp_path / "manifests", document)
    app = loading.parse(str(manifest), manifest.read_text())
    assert isinstance(app, model.Application)
    (tmp_path / "app" / "v1").mkdir(parents=True)
    return app


def _run_failing(app: model.Application, grace: float) -> tuple[hooks.HookRun, float, str]:
    """Run the beforeActivate hooks of `app`, which must fail: (the run, seconds taken, the error)."""
    runs: list[hooks.HookRun] = []
    started = time.monotonic()
    with pytest.raises(hooks.HookFailed) as raised:
        hooks.Runner(grace_seconds=grace).run_phase("beforeActivate", app, None, "v1", None, runs.append)
    elapsed = time.monotonic() - started
    assert len(runs) == 1 and raised.value.run == runs[0]
    return runs[0], elapsed, str(raised.value)


PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def adopting_orphans() -> Iterator[None]:
    """Make this process the reaper of orphaned descendants, so a test can wait for them."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        pytest.fail(f"prctl(PR_SET_CHILD_SUBREAPER) failed: {os.strerror(ctypes.get_errno())}")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _ends_within(pid: int, seconds: float) -> bool:
    """Wait (on a pidfd, not a sleep) until the process `pid` has exited; reap it if it is ours."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], seconds)
    finally:
        os.close(fd)
    if not ready:
        return False
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


# ---------------------------------------------------------------- identity and environment

DUMP = """#!/usr/bin/env python3
import json, os
fds = {}
for fd in os.listdir("/proc/self/fd"):
    try:
        fds[fd] = os.readlink("/proc/self/fd/" + fd)
    except FileNotFoundError:  # the descriptor that listed the directory
        pass
with open(os.path.join(OUT, os.environ["DEPLOYMENT_NAME"] + ".json"), "w") as handle:
    json.dump({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
               "groups": os.getgroups(), "cwd": os.getcwd(), "pid": os.getpid(), "sid": os.getsid(0),
               "environ": dict(os.environ), "fds": fds}, handle)
"""


def test_hooks_run_as_the_manifest_user_with_its_own_groups_and_exactly_the_documented_environment(
        node: support.Node, http: support.HttpServer, hook_user: pwd.struct_passwd, open_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [k for k in os.environ if k == "LANG" or k.startswith("LC_")]:
        monkeypatch.delenv(variable)
    out = open_dir / "out"
    out.mkdir()
    out.chmod(0o1777)
    app = open_dir / "identity"
    group = grp.getgrgid(hook_user.pw_gid).gr_name
    spec: dict[str, Any] = dict(
        application="acme", environment="staging", user=HOOK_USER, group=group,
        userMapping={"app": HOOK_USER, "www.data": HOOK_USER}, groupMapping={"app": EXTRA_GROUP},
        hooks={"beforeActivate": DUMP.replace("OUT", repr(str(out)))})
    controller_env = {"LANG": "C.UTF-8", "LC_TIME": "C", "TETHER_SECRET": SECRET, "NOTIFY_SOCKET": "/tmp/x",
                      "PATH": "/opt/controller-only/bin:" + os.environ["PATH"]}

    for deployment in ("v1", "v2"):
        _deploy_manifest(node, http, "identity", app, deployment, **spec)
        run = node.tether("reconcile", env=controller_env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert os.readlink(app / "current") == str(app / deployment)

    first, second = (json.loads((out / f"{d}.json").read_text()) for d in ("v1", "v2"))
    own_groups = {hook_user.pw_gid} | {g.gr_gid for g in grp.getgrall() if HOOK_USER in g.gr_mem}
    assert grp.getgrnam(EXTRA_GROUP).gr_gid in own_groups
    for seen, deployment in ((first, "v1"), (second, "v2")):
        assert (seen["uid"], seen["euid"]) == (hook_user.pw_uid, hook_user.pw_uid)
        assert (seen["gid"], seen["egid"]) == (hook_user.pw_gid, hook_user.pw_gid)
        assert set(seen["groups"]) == own_groups, "the hook must have the user's groups, not the controller's"
        assert seen["cwd"] == os.path.realpath(app / deployment)
        assert seen["sid"] == seen["pid"], "a hook runs in a new session of its own"
        assert sorted(seen["fds"]) == ["0", "1", "2"], f"the hook inherited descriptors: {seen['fds']}"
        assert seen["fds"]["0"] == "/dev/null" and seen["fds"]["1"] == seen["fds"]["2"]
        assert seen["fds"]["1"].startswith("pipe:")
        environ = seen["environ"]
        assert set(environ) == {
            "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_TIME",
            "APPLICATION_NAME", "APPLICATION_PATH", "ENVIRONMENT", "DEPLOYMENT_NAME", "DEPLOYMENT_PATH",
            "PREVIOUS_DEPLOYMENT_NAME", "HOOK_NAME",
            "USER_MAPPING_app", "USER_MAPPING_www_data", "GROUP_MAPPING_app",
        }
        assert "TETHER_SECRET" not in environ and "NOTIFY_SOCKET" not in environ
        assert not any(SECRET in value for value in environ.values())
        assert "/opt/controller-only/bin" not in environ["PATH"] and "/usr/bin" in environ["PATH"].split(":")
        assert (environ["LANG"], environ["LC_TIME"]) == ("C.UTF-8", "C")
        assert (environ["HOME"], environ["USER"], environ["LOGNAME"], environ["SHELL"]) == (
            hook_user.pw_dir, HOOK_USER, HOOK_USER, hook_user.pw_shell or "/bin/sh")
        assert (environ["APPLICATION_NAME"], environ["APPLICATION_PATH"], environ["ENVIRONMENT"]) == (
            "acme", str(app), "staging")
        assert (environ["DEPLOYMENT_NAME"], environ["DEPLOYMENT_PATH"]) == (deployment, str(app / deployment))
        assert environ["HOOK_NAME"] == "beforeActivate"
        assert (environ["USER_MAPPING_app"], environ["USER_MAPPING_www_data"], environ["GROUP_MAPPING_app"]) == (
            HOOK_USER, HOOK_USER, EXTRA_GROUP)
    assert first["environ"]["PREVIOUS_DEPLOYMENT_NAME"] == ""
    assert second["environ"]["PREVIOUS_DEPLOYMENT_NAME"] == "v1"


# ---------------------------------------------------------------- order and kinds


def _line(source: str, extra: str = "") -> str:
    return f'echo "{source} $HOOK_NAME $DEPLOYMENT_NAME cwd=$(pwd){extra}" >> LOG\n'


LISTING = " entries=[$(ls -A | tr '\\n' ,)]"


def test_the_kinds_hook_runs_before_the_applications_own_in_every_phase(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    log_file = tmp_path / "hook-order.txt"
    executable = tmp_path / "bin" / "after-activate"
    executable.parent.mkdir()
    executable.write_text("#!/bin/sh\n" + _line("application-path").replace("LOG", str(log_file)))
    executable.chmod(0o755)

    def inline(source: str, phase: str) -> str:
        extra = LISTING if phase == "beforeDeploy" else ""
        shebang = "" if source == "kind" and phase == "beforeDeploy" else "#!/bin/sh\n"
        return shebang + _line(source, extra).replace("LOG", str(log_file))

    kind = {"apiVersion": "tether/v1", "kind": "ApplicationKind", "metadata": {"name": "ordered"},
            "spec": {"hooks": {phase: inline("kind", phase) for phase in PHASES}}}
    support.write_manifest(node.manifests, kind)
    app = node.apps / "ordered-app"
    own: dict[str, Any] = {phase: inline("application", phase) for phase in PHASES[:3]}
    own["afterActivate"] = {"path": str(executable)}
    _deploy_manifest(node, http, "ordered-app", app, "v1", kind="ordered", hooks=own)

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stdout + run.stderr
    deployment = os.path.realpath(app / "v1")
    assert log_file.read_text().splitlines() == [
        f"kind beforeDeploy v1 cwd={deployment} entries=[]",
        f"application beforeDeploy v1 cwd={deployment} entries=[]",
        f"kind afterDeploy v1 cwd={deployment}",
        f"application afterDeploy v1 cwd={deployment}",
        f"kind beforeActivate v1 cwd={deployment}",
        f"application beforeActivate v1 cwd={deployment}",
        f"kind afterActivate v1 cwd={deployment}",
        f"application-path afterActivate v1 cwd={deployment}",
    ]
    runs = _status(node, "ordered-app")["lastHookRuns"]
    assert [(r["phase"], r["source"], r["outcome"]) for r in runs] == [
        (phase, source, "success") for phase in PHASES for source in ("kind/ordered", "application")]
    both = (app / ".tether" / "logs" / "v1" / "beforeDeploy.log").read_text()
    assert "== beforeDeploy hook of kind/ordered for v1 ==" in both
    assert "== beforeDeploy hook of application for v1 ==" in both


def test_an_inline_hook_without_a_shebang_runs_under_bin_sh(tmp_path: Path) -> None:
    seen = tmp_path / "interpreter.txt"
    app = _parsed(tmp_path, f'readlink /proc/$$/exe > {seen}\necho "$0" >> {seen}\n', timeout=30)
    runs: list[hooks.HookRun] = []

    hooks.Runner().run_phase("beforeActivate", app, None, "v1", None, runs.append)

    interpreter, script = seen.read_text().splitlines()
    assert interpreter == os.path.realpath("/bin/sh")
    assert not os.path.exists(script), "the script file tether wrote is removed after the run"
    assert [(r.outcome, r.exit_code) for r in runs] == [("success", 0)]


# ---------------------------------------------------------------- timeouts


def test_a_hook_that_sleeps_forever_ends_at_the_timeout(tmp_path: Path) -> None:
    app = _parsed(tmp_path, "echo started\nsleep 1000\necho never\n", timeout=1)

    run, elapsed, message = _run_failing(app, grace=1)

    assert (run.outcome, run.exit_code) == ("timeout", None)
    assert 1 <= elapsed < 1 + 1 + 5
    assert run.duration_seconds >= 1
    assert "timed out" in message
    log_text = Path(run.log).read_text()
    assert "started" in log_text and "never" not in log_text


def test_a_hook_whose_background_child_holds_its_output_ends_at_the_timeout_with_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    app = _parsed(tmp_path, f"sleep 1000 &\necho $! > {pid_file}\nexit 0\n", timeout=1)

    with adopting_orphans():
        run, elapsed, _ = _run_failing(app, grace=1)
        child = int(pid_file.read_text())
        ended = _ends_within(child, 5)
        if not ended:  # do not leave it behind for the next tests
            os.kill(child, signal.SIGKILL)
            _ends_within(child, 5)

    assert run.outcome == "timeout"
    assert 1 <= elapsed < 1 + 1 + 5
    assert ended, f"the hook's background child {child} is still running after the hook ended"
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_a_hook_that_ignores_term_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    script = ("trap 'echo TERM received, carrying on' TERM\n"
              "echo ready\n"
              "while :; do sleep 1000 & wait $!; done\n")
    app = _parsed(tmp_path, script, timeout=1)

    run, elapsed, _ = _run_failing(app, grace=1)

    assert run.outcome == "timeout"
    assert 1 + 1 <= elapsed < 1 + 1 + 5, "TERM first, then KILL once the grace period is over"
    assert "TERM received, carrying on" in Path(run.log).read_text()


def test_a_timeout_through_the_command_line_fails_the_pass_and_is_counted(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "slow"
    _deploy_manifest(node, http, "slow", app, "v1", hookTimeoutSeconds=2,
                     hooks={"beforeActivate": "echo migrating\nexec sleep 1000\n"})

    started = time.monotonic()
    run = node.tether("reconcile")
    elapsed = time.monotonic() - started

    assert run.returncode == 1, run.stdout + run.stderr
    assert 2 <= elapsed < 2 + 5, "sleep dies at TERM, so tether need not wait out its 10 s grace period"
    assert not os.path.lexists(app / "current")
    status = _status(node, "slow")
    last = status["lastHookRuns"][-1]
    assert (last["phase"], last["outcome"], last["exitCode"]) == ("beforeActivate", "timeout", None)
    assert "migrating" in last["outputTail"]
    assert "timed out" in status["lastError"]
    assert status["hookRunCounts"] == {"beforeActivate/timeout": 1}


# ---------------------------------------------------------------- output


def _reconcile_with_peak_rss(node: support.Node) -> tuple[int, int, str]:
    """Run `tether reconcile` as a subprocess: (exit code, its peak RSS in bytes, its output)."""
    peak = node.root / "controller-peak-rss"
    command = [sys.executable, "-c", support.PEAK_LAUNCHER, str(peak), sys.executable, "-m", "controller", "reconcile",
               "--manifests", str(node.manifests), "--state-dir", str(node.state)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=node.root,
                                   start_new_session=True)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        output.seek(0)
        return process.returncode, int(peak.read_text()) * 1024, output.read().decode(errors="replace")


def test_a_hook_printing_100_mb_succeeds_with_a_bounded_log_and_bounded_controller_memory(
        node: support.Node, http: support.HttpServer) -> None:
    size = 12 * 8_333_334  # 100 MB of whole "middle line\n" lines
    app = node.apps / "chatty"
    _deploy_manifest(node, http, "chatty", app, "v1", hooks={
        "afterDeploy": f"echo first line\nyes 'middle line' | head -c {size}\necho last line\n"})

    code, peak, output = _reconcile_with_peak_rss(node)

    assert code == 0, output
    assert os.readlink(app / "current") == str(app / "v1")
    log_path = app / ".tether" / "logs" / "v1" / "afterDeploy.log"
    data = log_path.read_bytes()
    assert len(data) < 1.1 * 1024 * 1024
    header = b"== afterDeploy hook of application for v1 ==\n"
    assert data.startswith(header + b"first line\nmiddle line\n")
    assert data.endswith(b"middle line\nlast line\n")
    marker = re.search(rb"\n\[\.\.\. tether dropped (\d+) bytes of output here \.\.\.\]\n", data)
    assert marker is not None
    printed = len(header) + len(b"first line\n") + size + len(b"last line\n")
    assert len(data) - len(marker.group(0)) + int(marker.group(1)) == printed, "kept + dropped == printed"
    last = _status(node, "chatty")["lastHookRuns"][-1]
    assert (last["phase"], last["outcome"]) == ("afterDeploy", "success")
    assert last["outputTail"].endswith("last line\n") and len(last["outputTail"]) <= 4096
    assert peak < 100 * 1024 * 1024, f"the controller peaked at {peak / 2**20:.0f} MiB; it must not buffer output"


# ---------------------------------------------------------------- failures


def test_a_failing_before_activate_hook_leaves_current_alone_and_status_names_the_hook(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    app = node.apps / "site"
    _deploy_manifest(node, http, "site", app, "v1")
    assert node.tether("reconcile").returncode == 0
    never = tmp_path / "application-hook-ran"
    support.write_manifest(node.manifests, {
        "apiVersion": "tether/v1", "kind": "ApplicationKind", "metadata": {"name": "rails"},
        "spec": {"hooks": {"beforeActivate": "echo running migrations\necho 'no database at db:5432' >&2\nexit 3\n"}}})
    _deploy_manifest(node, http, "site", app, "v2", kind="rails",
                     hooks={"beforeActivate": f"touch {never}\n"})

    run = node.tether("reconcile")

    assert run.returncode == 1, run.stdout + run.stderr
    assert os.readlink(app / "current") == str(app / "v1")
    assert _record(app, "v2")["state"] == "complete", "the deployment itself succeeded"
    assert not never.exists(), "after the kind's hook failed, the application's own must not run"
    status = _status(node, "site")
    failed = status["lastHookRuns"][-1]
    assert (failed["phase"], failed["source"], failed["deployment"], failed["outcome"], failed["exitCode"]) == (
        "beforeActivate", "kind/rails", "v2", "failure", 3)
    assert failed["outputTail"] == "running migrations\nno database at db:5432\n"
    assert failed["log"] == str(app / ".tether" / "logs" / "v2" / "beforeActivate.log")
    assert "beforeActivate hook of kind/rails exited with status 3" in status["lastError"]
    assert "no database at db:5432" in status["lastError"]
    assert status["current"] == "v1"


def test_a_failing_before_deploy_hook_leaves_no_deployment_and_no_record(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    _deploy_manifest(node, http, "site", app, "v1", hooks={"beforeDeploy": "echo disk check failed\nexit 1\n"})

    run = node.tether("reconcile")

    assert run.returncode == 1, run.stdout + run.stderr
    assert not (app / "v1").exists()
    assert not (app / ".tether" / "deployments" / "v1.json").exists()
    assert not os.path.lexists(app / "current")
    assert http.requests == [], "the artifact is fetched only after beforeDeploy succeeded"
    status = _status(node, "site")
    assert status["deployments"] == []
    failed = status["lastHookRuns"][-1]
    assert (failed["phase"], failed["source"], failed["outcome"], failed["exitCode"]) == (
        "beforeDeploy", "application", "failure", 1)
    assert "disk check failed" in (app / ".tether" / "logs" / "v1" / "beforeDeploy.log").read_text()


def test_a_failing_after_deploy_hook_leaves_the_deployment_incomplete_and_the_next_pass_deploys_it_again(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    ready, activated, deploys = tmp_path / "ready", tmp_path / "activated", tmp_path / "deploys.txt"
    app = node.apps / "site"
    _deploy_manifest(node, http, "site", app, "v1", hooks={
        "beforeDeploy": f"echo $DEPLOYMENT_NAME >> {deploys}\n",
        "afterDeploy": f"test -e {ready} || {{ echo 'assets not compiled'; exit 4; }}\n",
        "beforeActivate": f"touch {activated}\n"})

    first = node.tether("reconcile")

    assert first.returncode == 1, first.stdout + first.stderr
    assert _record(app, "v1")["state"] == "incomplete"
    assert "afterDeploy hook of application exited with status 4" in _record(app, "v1")["error"]
    assert not os.path.lexists(app / "current") and not activated.exists()
    assert _status(node, "site")["lastHookRuns"][-1]["outputTail"] == "assets not compiled\n"
    steps = json.loads(node.tether("plan", "--json").stdout)[0]["steps"]
    assert [(s["action"], s["deployment"]) for s in steps][:2] == [("clean", "v1"), ("deploy", "v1")]

    ready.touch()
    second = node.tether("reconcile")

    assert second.returncode == 0, second.stdout + second.stderr
    assert os.readlink(app / "current") == str(app / "v1") and activated.exists()
    assert _record(app, "v1")["state"] == "complete"
    assert deploys.read_text() == "v1\nv1\n", "the incomplete deployment is cleaned and deployed afresh"
    counts = _status(node, "site")["hookRunCounts"]
    assert (counts["afterDeploy/failure"], counts["afterDeploy/success"], counts["beforeDeploy/success"]) == (1, 1, 2)


# ---------------------------------------------------------------- counts


def test_hook_run_counts_accumulate_from_pass_to_pass(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    spec = {"hooks": {"beforeActivate": "true\n", "afterActivate": "true\n"}}
    _deploy_manifest(node, http, "site", app, "v1", **spec)
    assert node.tether("reconcile").returncode == 0
    assert _status(node, "site")["hookRunCounts"] == {"beforeActivate/success": 1, "afterActivate/success": 1}

    _deploy_manifest(node, http, "site", app, "v2", **spec)
    assert node.tether("reconcile").returncode == 0
    assert node.tether("reconcile").returncode == 0  # nothing to do: no hook runs, counts are kept

    status = _status(node, "site")
    assert status["hookRunCounts"] == {"beforeActivate/success": 2, "afterActivate/success": 2}
    assert {(r["phase"], r["deployment"]) for r in status["lastHookRuns"]} == {
        ("beforeActivate", "v2"), ("afterActivate", "v2")}



def test_inline_hooks_started_from_many_threads_at_once_all_run(tmp_path: Path) -> None:
    """A script written while another thread forks is briefly open for writing in that child: exec must not fail
    with 'Text file busy' (ETXTBSY) then."""
    app = _parsed(tmp_path, "#!/bin/sh\nexit 0\n", timeout=30)
    runs: list[hooks.HookRun] = []

    def many() -> None:
        for _ in range(30):
            hooks.Runner().run_phase("beforeActivate", app, None, "v1", None, runs.append)

    threads = [threading.Thread(target=many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [r.outcome for r in runs if r.outcome != "success"] == []
    assert len(runs) == 240
