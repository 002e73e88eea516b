"""Hostile application paths (issue 9, items 1, 2, 17, 18).

Who may write `path`: tether refuses to manage a `path` that anyone but root (or
its own user) can write, a `.tether` that is a symlink or someone else's, and an
ancestor that someone else can change; a hook running as the application's user
cannot make root write outside `path`. Where `path` may be: below application
roots, never in the system hierarchy. Clocks: back-off follows the monotonic
clock, retention follows a per-application deploy sequence, not wall-clock times.

Everything runs through the real command line as root, on a real filesystem,
with real users (`nobody`) and a real HTTP server on loopback.
"""

from __future__ import annotations

import subprocess

import pytest

from tests import support

INVALID = 2


# ---------------------------------------------------------------- item 17: where an application may live


def _validate_path(node: support.Node, path: str) -> subprocess.CompletedProcess[str]:
    support.write_manifest(node.manifests, support.application(
        "site", path, deployment="v1", source={"url": "https://example.com/{deployment}.tar.gz"}))
    return node.tether("validate", str(node.manifests))


def _assert_refused(run: subprocess.CompletedProcess[str], node: support.Node, *words: str) -> None:
    assert run.returncode == INVALID, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    line = next(entry for entry in run.stdout.splitlines() if str(node.manifests / "site.yaml") in entry)
    assert "(at /spec/path)" in line, line
    for word in words:
        assert word in line, (word, line)


@pytest.mark.parametrize("path", ["/opt/acme", "/opt/acme/web", "/srv/site", "/srv/www/site", "/var/www/html",
                                  "/var/www/shop/front"])
def test_a_path_below_opt_srv_or_var_www_is_valid(node: support.Node, path: str) -> None:
    run = _validate_path(node, path)

    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("path", ["/home/deploy/acme", "/home/deploy/apps/acme"])
def test_a_path_below_a_home_directory_is_valid(node: support.Node, path: str) -> None:
    assert _validate_path(node, path).returncode == 0


@pytest.mark.parametrize("path", ["/home", "/home/deploy"])
def test_home_or_a_home_directory_itself_is_refused(node: support.Node, path: str) -> None:
    _assert_refused(_validate_path(node, path), node, f"path {path!r}", "home directory", "/home/USER/APP")


@pytest.mark.parametrize("path", ["/home/deploy/.ssh", "/home/deploy/.config/systemd", "/home/deploy/.local/bin"])
def test_a_hidden_directory_of_a_home_directory_is_refused(node: support.Node, path: str) -> None:
    _assert_refused(_validate_path(node, path), node, f"path {path!r}", "hidden directory of a home directory")


@pytest.mark.parametrize("path", ["/usr/local/acme", "/usr/local/acme/web", "/var/lib/acme", "/var/opt/acme"])
def test_an_application_directory_of_its_own_in_usr_local_var_lib_or_var_opt_is_valid(
        node: support.Node, path: str) -> None:
    assert _validate_path(node, path).returncode == 0


@pytest.mark.parametrize(("path", "system"), [
    ("/usr/local/bin", "/usr/local/bin"), ("/usr/local/sbin/tool", "/usr/local/sbin"),
    ("/usr/local/share/acme", "/usr/local/share"), ("/usr/local/lib", "/usr/local/lib"),
    ("/usr/local/etc", "/usr/local/etc"), ("/usr/local/include", "/usr/local/include"),
    ("/usr/local/libexec/acme", "/usr/local/libexec"), ("/usr/local/src", "/usr/local/src"),
    ("/var/lib/dpkg", "/var/lib/dpkg"), ("/var/lib/dpkg/info", "/var/lib/dpkg"),
    ("/var/lib/systemd", "/var/lib/systemd"), ("/var/lib/apt/lists", "/var/lib/apt"),
    ("/var/lib/ucf", "/var/lib/ucf"), ("/var/lib/pam", "/var/lib/pam"), ("/var/lib/postgresql", "/var/lib/postgresql"),
    ("/var/opt/dpkg", "/var/opt/dpkg"),
])
def test_a_standard_system_directory_in_usr_local_var_lib_or_var_opt_is_refused_naming_the_rule(
        node: support.Node, path: str, system: str) -> None:
    root = system.rsplit("/", 1)[0]
    _assert_refused(_validate_path(node, path), node, f"path {path!r}", f"system directory {system}",
                    f"below {root} an application needs a directory whose name the system does not use",
                    f"{root}/APP")


@pytest.mark.parametrize("path", ["/opt", "/srv", "/var/www", "/usr/local", "/var/lib", "/var/opt", "/tmp",
                                  "/var/tmp"])
def test_an_application_root_itself_is_refused_with_a_directory_below_it_as_advice(
        node: support.Node, path: str) -> None:
    _assert_refused(_validate_path(node, path), node, f"path {path!r} is a system directory", f"{path}/APP")


@pytest.mark.parametrize(("path", "system"), [
    ("/root/.ssh", "/root"), ("/root/acme", "/root"), ("/etc/acme", "/etc"), ("/etc/profile.d", "/etc"),
    ("/usr/include/acme", "/usr/include"), ("/usr/libexec/acme", "/usr/libexec"), ("/usr/share/acme", "/usr/share"),
    ("/usr/lib/acme", "/usr/lib"), ("/usr/bin/acme", "/usr/bin"), ("/var/spool/cron", "/var/spool"),
    ("/var/log/acme", "/var/log"), ("/var/cache/acme", "/var/cache"), ("/var/mail/acme", "/var/mail"),
    ("/boot/acme", "/boot"), ("/dev/shm/acme", "/dev"), ("/proc/acme", "/proc"), ("/sys/acme", "/sys"),
    ("/run/acme", "/run"), ("/bin/acme", "/bin"), ("/sbin/acme", "/sbin"), ("/lib/acme", "/lib"),
    ("/mnt/acme", "/mnt"), ("/snap/acme", "/snap"),
])
def test_a_path_inside_the_system_hierarchy_is_refused_naming_the_system_directory_and_the_rule(
        node: support.Node, path: str, system: str) -> None:
    _assert_refused(_validate_path(node, path), node, f"path {path!r} is inside the system directory {system}",
                    "must be below /opt, /srv, /var/www, /home/USER, /usr/local/APP")


@pytest.mark.parametrize("path", ["/etc", "/root", "/usr/include", "/usr/libexec", "/usr/bin", "/var/spool",
                                  "/var/log", "/boot", "/run", "/usr", "/var"])
def test_a_system_directory_itself_is_refused(node: support.Node, path: str) -> None:
    _assert_refused(_validate_path(node, path), node, f"path {path!r} is a system directory", "/opt")


@pytest.mark.parametrize("path", ["/tmp/tether-demo/apps/site", "/tmp/acme", "/var/tmp/acme/site"])
def test_a_directory_below_tmp_or_var_tmp_is_valid_as_a_temporary_directory_is_not_a_system_one(
        node: support.Node, path: str) -> None:
    assert _validate_path(node, path).returncode == 0


@pytest.mark.parametrize("path", ["/data/apps/acme", "/app", "/web/acme"])
def test_a_path_outside_the_system_hierarchy_is_valid(node: support.Node, path: str) -> None:
    assert _validate_path(node, path).returncode == 0
