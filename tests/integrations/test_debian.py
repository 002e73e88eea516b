"""The Debian package: built from this checkout with dpkg-buildpackage, installed with apt-get, used, purged.

This changes the machine it runs on (it installs and purges the package `tether`), so it runs as root,
as in CI (.ci/run), and refuses to touch a machine where `tether` is installed already."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import controller
from tests import support

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_PYTHON = "/usr/lib/python3/dist-packages"


def run(*command: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """A command with Debian's tools and Python only: a clean environment, no virtualenv, no pyenv."""
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd or Path("/"), timeout=timeout)


def installed() -> bool:
    return run("dpkg-query", "-W", "-f=${Status}", "tether").stdout == "install ok installed"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The .deb built from this checkout, installed with apt-get; purged afterwards."""
    assert os.geteuid() == 0, "this test installs a Debian package: run it as root (CI does)"
    for tool in ("dpkg-buildpackage", "apt-get", "dh_python3"):
        assert shutil.which(tool, path=SYSTEM_PATH), (
            f"{tool} is missing: apt-get install debhelper dh-python pybuild-plugin-pyproject python3-all "
            "python3-setuptools build-essential (.ci/run does)")
    assert not installed(), "the package tether is installed on this machine already; purge it first"
    assert not os.path.exists("/etc/tether/manifests"), "/etc/tether/manifests exists: this is not a test machine"
    out = tmp_path_factory.mktemp("deb")
    built = run(str(support.REPO / "packaging" / "build-deb"), str(out))
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [deb] = out.glob("tether_*_all.deb")
    try:
        yield deb
    finally:
        run("apt-get", "purge", "-y", "tether")


@pytest.fixture(scope="module")
def install(package: Path) -> Path:
    if not any(Path("/var/lib/apt/lists").glob("*_Packages*")):  # a fresh container: apt knows no package yet
        assert run("apt-get", "update", "-qq").returncode == 0
    done = run("apt-get", "install", "-y", "--no-install-recommends", str(package))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert installed()
    return package


def test_the_package_holds_the_command_unit_directories_schemas_and_defaults(package: Path) -> None:
    listing = run("dpkg-deb", "--contents", str(package)).stdout
    entries = {line.split()[-1].removeprefix("."): line.split()[:2] for line in listing.splitlines()}

    assert entries["/usr/bin/tether"] == ["-rwxr-xr-x", "root/root"]
    for unit in ("tether.service", "tether-gitops.service", "tether-gitops.timer"):
        assert entries[f"/lib/systemd/system/{unit}"] == ["-rw-r--r--", "root/root"]
    assert entries["/etc/tether/manifests/"] == ["drwxr-xr-x", "root/root"]
    assert entries["/etc/tether/secrets/"] == ["drwx------", "root/root"]
    for schema in ("application.json", "kind.json"):
        assert f"{DEBIAN_PYTHON}/controller/schemas/{schema}" in entries
    fields = run("dpkg-deb", "--field", str(package), "Depends").stdout
    for dependency in ("python3-yaml", "python3-jsonschema", "python3-watchdog", "python3-tenacity",
                       "python3-prometheus-client", "python3-bcrypt"):
        assert dependency in fields
    assert run("dpkg-deb", "--info", str(package), "conffiles").stdout.split() == ["/etc/default/tether"]


def test_the_installed_command_runs_on_debians_python_and_libraries(install: Path) -> None:
    first_line = Path("/usr/bin/tether").read_text().splitlines()[0]
    modules = run("/usr/bin/python3", "-I", "-c", "import controller, yaml, jsonschema, watchdog, tenacity, "
                  "prometheus_client, bcrypt\nfor m in (controller, yaml, jsonschema, watchdog, tenacity, "
                  "prometheus_client, bcrypt): print(m.__file__)")
    # Debian's bcrypt checks the $2y$ hashes htpasswd makes, as the metrics endpoint's basic auth does.
    checked = run("/usr/bin/python3", "-I", "-c", "import base64, bcrypt\nfrom controller.daemon import web_config, "
                  "web_server\nh = bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).replace(b'$2b$', b'$2y$', 1)\n"
                  "c = web_config.WebConfig(path='x', users={'u': h})\nauth = web_server.BasicAuth()\n"
                  "print([auth.check(c, 'Basic ' + base64.b64encode(p).decode()) for p in (b'u:pw', b'u:no')])")

    assert first_line == "#!/usr/bin/python3"
    assert modules.returncode == 0, modules.stderr
    assert all(path.startswith(DEBIAN_PYTHON + "/") for path in modules.stdout.split()), modules.stdout
    assert checked.stdout.strip() == "[True, False]", checked.stderr
    assert run("/usr/bin/tether", "--version").stdout.strip() == f"tether {controller.__version__}"
    assert run("/usr/bin/tether", "schema", "application").stdout.startswith("{")


def test_the_installed_command_validates_the_examples_and_refuses_a_broken_manifest(
        install: Path, tmp_path: Path) -> None:
    valid = run("/usr/bin/tether", "validate", str(support.REPO / "examples" / "manifests"))
    (tmp_path / "broken.yaml").write_text("apiVersion: tether/v1\nkind: Application\nmetadata: {name: Bad!}\n")
    invalid = run("/usr/bin/tether", "validate", str(tmp_path / "broken.yaml"))

    assert (valid.returncode, valid.stdout.strip()) == (0, "3 applications and 1 kind are valid.")
    assert invalid.returncode == 2 and "broken.yaml" in invalid.stdout


def test_the_system_python_runs_the_demo_and_the_installed_command_finds_it_converged(
        install: Path, tmp_path: Path) -> None:
    # The demo deploys every example (a kind with hooks, .mtree persistent data, a secret header)
    # with `python -m controller`; with /usr/bin/python3 that is the installed package.
    demo = run("/usr/bin/python3", "-I", str(support.REPO / "examples" / "demo.py"), "--sandbox", str(tmp_path),
               cwd=tmp_path)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "from /usr/bin/python3" in demo.stdout

    where = ("--manifests", str(tmp_path / "manifests"), "--state-dir", str(tmp_path / "state"))
    again = run("/usr/bin/tether", "reconcile", *where, cwd=tmp_path)
    plan = run("/usr/bin/tether", "plan", *where, cwd=tmp_path)

    assert again.returncode == 0, again.stderr
    assert plan.stdout.split("\n") == ["acme: nothing to do", "shop: nothing to do", "site: nothing to do", ""]
    for name in ("site", "shop", "acme"):
        assert os.readlink(tmp_path / "apps" / name / "current") == str(tmp_path / "apps" / name / "v2")


def test_the_installed_unit_is_packaging_systemd_tether_service_and_systemd_analyze_verify_accepts_it(
        install: Path) -> None:
    checked = run("systemd-analyze", "verify", "/lib/systemd/system/tether.service")

    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    shipped = support.REPO / "packaging" / "systemd" / "tether.service"
    assert Path("/lib/systemd/system/tether.service").read_text() == shipped.read_text()
    assert os.path.islink("/etc/systemd/system/multi-user.target.wants/tether.service")  # enabled on install
    assert not os.path.lexists("/etc/systemd/system/timers.target.wants/tether-gitops.timer")  # not before a clone


def test_purging_removes_the_package_its_unit_and_its_state_but_not_the_manifests(
        install: Path, tmp_path: Path) -> None:
    manifest = Path("/etc/tether/manifests/kept.yaml")
    manifest.write_text("# an operator's manifest\n")
    Path("/var/lib/tether").mkdir(exist_ok=True)
    try:
        purged = run("apt-get", "purge", "-y", "tether")

        assert purged.returncode == 0, purged.stderr
        assert not installed()
        for gone in ("/usr/bin/tether", "/lib/systemd/system/tether.service", "/var/lib/tether",
                     "/etc/default/tether", "/etc/systemd/system/multi-user.target.wants/tether.service"):
            assert not os.path.lexists(gone), gone
        assert manifest.read_text() == "# an operator's manifest\n"
    finally:
        manifest.unlink()
        for directory in ("/etc/tether/manifests", "/etc/tether"):
            os.rmdir(directory)
