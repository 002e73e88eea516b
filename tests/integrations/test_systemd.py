"""packaging/systemd/tether.service: systemd's own checker accepts it, and its command lines drive a real daemon."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import support

UNIT = support.REPO / "packaging" / "systemd" / "tether.service"
VENV_TETHER = str(Path(sys.executable).with_name("tether"))


@pytest.fixture
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "this test needs systemd-analyze: apt-get install systemd (.ci/run does)"
    return found


def service_section(text: str) -> dict[str, str]:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    return dict(unit["Service"])


def verify(systemd_analyze: str, directory: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` of `text` as tether.service, run by this checkout's tether.

    systemd reports most mistakes (an unknown key, a bad value) as warnings and still exits 0,
    so a unit is good only when the checker says nothing at all."""
    unit = directory / "tether.service"
    unit.write_text(text.replace("/usr/bin/tether", VENV_TETHER))
    return subprocess.run([systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_systemd_analyze_verify_finds_nothing_to_say_about_the_unit(systemd_analyze: str, tmp_path: Path) -> None:
    checked = verify(systemd_analyze, tmp_path, UNIT.read_text())

    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


@pytest.mark.parametrize(("mistake", "fix"), [
    ("Type=notify", "Type=notfy"),
    ("WatchdogSec=60s", "WatchdogSecs=60s"),
    ("ExecStart=/usr/bin/tether run", "ExecStart=/usr/bin/tether-missing run"),
])
def test_the_verify_check_catches_a_broken_unit(systemd_analyze: str, tmp_path: Path, mistake: str, fix: str) -> None:
    text = UNIT.read_text()
    assert mistake in text

    checked = verify(systemd_analyze, tmp_path, text.replace(mistake, fix))

    assert checked.stdout + checked.stderr != ""


def test_the_unit_promises_what_tether_keeps(tmp_path: Path) -> None:
    service = service_section(UNIT.read_text())

    assert service["Type"] == "notify"
    assert service["StateDirectory"] == "tether"
    assert service["Restart"] == "on-failure"
    assert int(service["WatchdogSec"].removesuffix("s")) >= 10
    assert service["KillMode"] == "mixed"  # SIGTERM to tether alone, so a running hook may finish
    assert int(service["TimeoutStopSec"].removesuffix("s")) > 30  # longer than the default --shutdown-grace
    assert service["ProtectSystem"] == "strict" and "ReadWritePaths" in service


def test_the_units_start_reload_and_stop_commands_drive_a_real_daemon_the_way_systemd_would(
        node: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    service = service_section(UNIT.read_text())
    http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}))
    watchdog_usec = int(service["WatchdogSec"].removesuffix("s")) * 1_000_000
    address = str(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(NOTIFY_SOCKET=address, WATCHDOG_USEC=str(watchdog_usec), TETHER_MANIFESTS=str(node.manifests),
               TETHER_STATE_DIR=str(node.state), TETHER_METRICS_ADDRESS="127.0.0.1:0")
    with support.notify_socket(address, timeout=30) as sock:
        start = shlex.split(service["ExecStart"].replace("/usr/bin/tether", VENV_TETHER))
        log = tmp_path / "daemon.log"
        daemon = subprocess.Popen(start, env=env, stderr=log.open("w"))
        try:
            assert sock.recv(4096).decode().splitlines()[0] == "READY=1"
            while "STATUS=1 of 1 applications ready, 0 not ready" not in sock.recv(4096).decode().splitlines():
                pass
            assert os.readlink(node.apps / "site" / "current") == str(node.apps / "site" / "v1")

            reload = shlex.split(service["ExecReload"].replace("$MAINPID", str(daemon.pid)))
            assert subprocess.run(reload, timeout=10).returncode == 0
            stop_timeout = int(service["TimeoutStopSec"].removesuffix("s"))
            os.kill(daemon.pid, 15)  # KillMode=mixed: SIGTERM to the main process only
            messages = []
            while not messages or messages[-1][0] != "STOPPING=1":
                messages.append(sock.recv(4096).decode().splitlines())
            assert daemon.wait(stop_timeout) == 0
        finally:
            daemon.kill()
            daemon.wait()
    assert "SIGHUP: reading every manifest again." in log.read_text()


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "ops", "GIT_AUTHOR_EMAIL": "ops@example.com",
           "GIT_COMMITTER_NAME": "ops", "GIT_COMMITTER_EMAIL": "ops@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def test_the_gitops_units_verify_and_their_pull_fast_forwards_the_manifests_and_refuses_a_rewritten_history(
        systemd_analyze: str, node: support.Node, tmp_path: Path) -> None:
    units = support.REPO / "packaging" / "systemd"
    checked = subprocess.run([systemd_analyze, "verify", str(units / "tether-gitops.service"),
                              str(units / "tether-gitops.timer")], capture_output=True, text=True, timeout=60)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    pull = shlex.split(service_section((units / "tether-gitops.service").read_text())["ExecStart"]
                       .replace("/etc/tether/manifests", str(tmp_path / "checkout")))
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=upstream)
    support.write_manifest(upstream, support.application("site", node.apps / "site", deployment="v1",
                                                         source={"url": "https://example.com/{deployment}.tgz"}))
    git("add", ".", cwd=upstream)
    git("commit", "--quiet", "-m", "site v1", cwd=upstream)
    git("clone", "--quiet", str(upstream), str(tmp_path / "checkout"), cwd=tmp_path)
    support.write_manifest(upstream, support.application("site", node.apps / "site", deployment="v2",
                                                         source={"url": "https://example.com/{deployment}.tgz"}))
    git("commit", "--quiet", "-am", "site v2", cwd=upstream)

    pulled = subprocess.run(pull, capture_output=True, text=True, timeout=60)
    git("commit", "--quiet", "--amend", "-m", "site v2, history rewritten", cwd=upstream)
    refused = subprocess.run(pull, capture_output=True, text=True, timeout=60)

    assert pulled.returncode == 0, pulled.stderr
    checkout = tmp_path / "checkout"
    validated = subprocess.run([VENV_TETHER, "validate", str(checkout)], capture_output=True, text=True)
    assert validated.returncode == 0, validated.stdout
    assert "deployment: v2" in (checkout / "site.yaml").read_text()
    assert refused.returncode != 0 and "Not possible to fast-forward" in refused.stderr
    assert git("log", "-1", "--format=%s", cwd=checkout).strip() == "site v2"


DEFAULTS = support.REPO / "packaging" / "debian" / "tether.default"


def test_the_web_config_file_from_the_environment_file_reaches_the_daemon_the_unit_starts(
        node: support.Node, tmp_path: Path) -> None:
    import base64
    import re
    import urllib.error
    import urllib.request

    import bcrypt

    documented = re.search(r"^#TETHER_WEB_CONFIG_FILE=(\S+)$", DEFAULTS.read_text(), re.MULTILINE)
    assert documented and documented[1] == "/etc/tether/web-config.yml"
    assert "TETHER_WEB_CONFIG_FILE" in UNIT.read_text().split("[Unit]")[0]
    service = service_section(UNIT.read_text())
    assert service["EnvironmentFile"].lstrip("-") == "/etc/default/tether"
    config = tmp_path / "web-config.yml"
    config.write_text("basic_auth_users:\n  prometheus: '" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode() + "'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "NOTIFY_", "WATCHDOG_"))}
    env.update(TETHER_MANIFESTS=str(node.manifests), TETHER_STATE_DIR=str(node.state),
               TETHER_METRICS_ADDRESS="127.0.0.1:0", TETHER_WEB_CONFIG_FILE=str(config))
    daemon = subprocess.Popen(shlex.split(service["ExecStart"].replace("/usr/bin/tether", VENV_TETHER)), env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert daemon.stderr is not None
        log = support.LogLines(daemon.stderr)
        port = int(log.wait_for(r"Serving metrics on \S+ port \d+")[2].rsplit(" ", 1)[1].rstrip("."))
        url = f"http://127.0.0.1:{port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        authorized = urllib.request.Request(url, headers={
            "Authorization": "Basic " + base64.b64encode(b"prometheus:s3cret").decode()})
        with urllib.request.urlopen(authorized, timeout=10) as response:
            assert response.status == 200
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
