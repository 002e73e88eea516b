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

import datetime
import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.artifacts import fetching
from controller.daemon import loop, queueing
from controller.engine import reconciling
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


# ---------------------------------------------------------------- items 1 and 2: who may write `path`


NOBODY = pwd.getpwnam("nobody")


def _site(node: support.Node, http: support.HttpServer, app: Path, **spec: Any) -> None:
    """The manifest of `site` at `app`, deploying v1 of a small static site."""
    if "/v1.tar.gz" not in http.routes:
        http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}, **spec))


def _refused(node: support.Node, run: subprocess.CompletedProcess[str], *words: str) -> str:
    """The pass failed with a one-line refusal holding `words`, which the status also shows."""
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "Traceback" not in output
    for word in words:
        assert word in output, (word, output)
    status = json.loads(node.tether("status", "site", "--json").stdout)
    assert "tether refuses to manage" in status["lastError"], status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"
    return output


def _tree(root: Path) -> dict[str, tuple[str, str, int]]:
    """Every path below `root` with its snapshot and owner."""
    found = support.snapshot(root)
    return {rel: (*what, os.lstat(root / rel).st_uid) for rel, what in found.items()}


def test_a_tether_symlink_planted_before_the_first_pass_is_refused_and_its_target_kept(
        node: support.Node, http: support.HttpServer) -> None:
    app, elsewhere = node.apps / "site", node.root / "elsewhere"
    (elsewhere / "staging").mkdir(parents=True)
    (elsewhere / "staging" / "keepme").write_text("precious\n")
    app.mkdir()
    (app / ".tether").symlink_to(elsewhere)
    before = _tree(elsewhere)
    _site(node, http, app)

    output = _refused(node, node.tether("reconcile"), f"{app}/.tether", "is a symlink", "remove the symlink")

    assert _tree(elsewhere) == before, output
    assert (elsewhere / "staging" / "keepme").read_text() == "precious\n"
    assert sorted(os.listdir(app)) == [".tether"] and not http.requests


def test_a_tether_symlink_is_not_read_as_tethers_own_records(node: support.Node, http: support.HttpServer) -> None:
    app, elsewhere = node.apps / "site", node.root / "elsewhere"
    (elsewhere / "deployments").mkdir(parents=True)
    (elsewhere / "deployments" / "v0.json").write_text(json.dumps({"name": "v0", "state": "complete"}))
    app.mkdir()
    (app / "v0").mkdir()
    (app / ".tether").symlink_to(elsewhere)
    _site(node, http, app)

    _refused(node, node.tether("reconcile"), "is a symlink")

    assert "v0" not in node.tether("list", "site").stdout.replace("v0: ", "")  # not tether's deployment
    assert (app / "v0").is_dir()


@pytest.mark.parametrize("sub", [".tether", ".tether/staging", ".tether/deployments", ".tether/logs"])
def test_a_tether_directory_owned_by_another_user_is_refused_naming_its_owner_and_mode(
        node: support.Node, http: support.HttpServer, sub: str) -> None:
    app = node.apps / "site"
    (app / sub).mkdir(parents=True)
    (app / ".tether" / "staging").mkdir(exist_ok=True)
    (app / ".tether" / "staging" / "leftover").write_text("not tether's\n")
    os.chown(app / sub, NOBODY.pw_uid, NOBODY.pw_gid)
    _site(node, http, app)
    before = _tree(app)

    _refused(node, node.tether("reconcile"), f"{app / sub} (tether's bookkeeping directory) is a directory owned by "
             f"nobody (uid {NOBODY.pw_uid}) with mode 0755", f"chown root:root {app / sub}")

    assert _tree(app) == before and not http.requests


def test_a_tether_symlink_made_by_another_user_in_a_subdirectory_is_refused(
        node: support.Node, http: support.HttpServer) -> None:
    app, elsewhere = node.apps / "site", node.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keepme").write_text("precious\n")
    (app / ".tether").mkdir(parents=True)
    (app / ".tether" / "staging").symlink_to(elsewhere)
    _site(node, http, app)

    _refused(node, node.tether("reconcile"), f"{app}/.tether/staging", "is a symlink")

    assert os.listdir(elsewhere) == ["keepme"]


@pytest.mark.parametrize(("owner", "mode", "problem"), [
    (NOBODY.pw_uid, 0o755, "is not root's"), (0, 0o777, "writable by its group or by others"),
    (0, 0o775, "writable by its group"), (0, 0o1777, "writable by its group or by others"),
])
def test_an_application_path_that_someone_else_can_write_is_refused_with_what_to_do(
        node: support.Node, http: support.HttpServer, owner: int, mode: int, problem: str) -> None:
    app = node.apps / "site"
    app.mkdir()
    os.chown(app, owner, -1)
    app.chmod(mode)
    _site(node, http, app)

    _refused(node, node.tether("reconcile"), f"tether refuses to manage {app}: {app} (the application path)",
             f"mode {mode:04o}", problem, f"chown root:root {app} && chmod go-w {app}")

    assert os.listdir(app) == [] and not http.requests


@pytest.mark.parametrize(("owner", "mode"), [(0, 0o775), (0, 0o757), (NOBODY.pw_uid, 0o755)])
def test_an_ancestor_that_someone_else_can_write_is_refused(
        node: support.Node, http: support.HttpServer, owner: int, mode: int) -> None:
    group = node.apps / "team"
    group.mkdir()
    os.chown(group, owner, -1)
    group.chmod(mode)
    app = group / "site"
    _site(node, http, app)

    _refused(node, node.tether("reconcile"), f"{group} (an ancestor of the application path)", f"mode {mode:04o}")

    assert not app.exists() and not http.requests


def test_a_symlinked_ancestor_whose_directories_are_safe_is_accepted(node: support.Node, http: support.HttpServer) -> None:
    (node.root / "data" / "srv").mkdir(parents=True)
    (node.apps / "srv").symlink_to(node.root / "data" / "srv")
    app = node.apps / "srv" / "site"
    _site(node, http, app)

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stdout + run.stderr
    assert (node.root / "data" / "srv" / "site" / "current" / "index.html").read_text() == "<h1>version 1</h1>\n"


def test_a_symlinked_ancestor_leading_through_a_writable_directory_is_refused(
        node: support.Node, http: support.HttpServer) -> None:
    shared = node.root / "shared"
    (shared / "srv").mkdir(parents=True)
    shared.chmod(0o777)  # anyone could swap shared/srv for a link to /etc
    (node.apps / "srv").symlink_to(shared / "srv")
    app = node.apps / "srv" / "site"
    _site(node, http, app)

    _refused(node, node.tether("reconcile"), f"{shared} (an ancestor of the application path)", "mode 0777")

    assert os.listdir(shared / "srv") == []


def test_a_symlinked_ancestor_owned_by_another_user_in_a_sticky_directory_is_refused(
        node: support.Node, http: support.HttpServer) -> None:
    sticky, real = node.root / "sticky", node.root / "real"
    sticky.mkdir()
    sticky.chmod(0o1777)
    real.mkdir()
    (sticky / "apps").symlink_to(real)
    os.chown(sticky / "apps", NOBODY.pw_uid, NOBODY.pw_gid, follow_symlinks=False)  # nobody may repoint it
    app = sticky / "apps" / "site"
    _site(node, http, app)

    _refused(node, node.tether("reconcile"), f"{sticky / 'apps'} (an ancestor of the application path) is a symlink "
             "owned by nobody")

    assert os.listdir(real) == []


def test_a_root_owned_directory_in_a_root_owned_sticky_directory_is_accepted(
        node: support.Node, http: support.HttpServer) -> None:
    sticky = node.root / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    app = sticky / "apps" / "site"
    _site(node, http, app)

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stdout + run.stderr
    assert os.readlink(app / "current") == str(app / "v1")


def test_an_application_path_that_is_a_symlink_is_refused(node: support.Node, http: support.HttpServer) -> None:
    real = node.root / "real"
    real.mkdir()
    app = node.apps / "site"
    app.symlink_to(real)
    _site(node, http, app)

    _refused(node, node.tether("reconcile"), f"{app} (the application path) is a symlink",
             "set spec.path to the directory it points to")

    assert os.listdir(real) == []


def test_a_missing_path_and_its_bookkeeping_are_created_root_owned_0755_whatever_the_umask(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "team" / "site"
    _site(node, http, app)
    old = os.umask(0o002)
    try:
        run = node.tether("reconcile")
    finally:
        os.umask(old)

    assert run.returncode == 0, run.stdout + run.stderr
    for directory in (app.parent, app, app / ".tether", *(app / ".tether" / d for d in ("deployments", "staging",
                                                                                       "logs", "digests"))):
        st = os.lstat(directory)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), directory
    assert node.tether("reconcile").returncode == 0


def test_a_refused_path_is_refused_by_every_command_that_writes_below_it(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    _site(node, http, app, retention={"keep": 1})
    assert node.tether("reconcile").returncode == 0
    elsewhere = node.root / "elsewhere"
    os.rename(app / ".tether", elsewhere)
    (app / ".tether").symlink_to(elsewhere)
    before = _tree(elsewhere)

    for command in (("reconcile",), ("deploy", "site", "--deployment", "v2", "--wait"), ("activate", "site", "v1"),
                    ("rollback", "site"), ("remove", "site", "v0"), ("prune", "site"), ("retry", "site"),
                    ("repair", "site")):
        run = node.tether(*command)
        assert run.returncode != 0, command
        assert "Traceback" not in run.stdout + run.stderr, command
        assert "tether refuses to manage" in run.stdout + run.stderr, command

    assert _tree(elsewhere) == before


# ---------------------------------------------------------------- item 2: a hook running as the application's user


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's own is private to root), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="tether-hostile-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def _hooked(node: support.Node, http: support.HttpServer, app: Path, script: str) -> None:
    _site(node, http, app, user="nobody", group="nogroup", hooks={"beforeDeploy": "#!/bin/sh\n" + script})


def _outside(open_dir: Path) -> Path:
    """A directory outside the application that root would write to if it followed a hook's link."""
    outside = open_dir / "outside"
    (outside / "staging").mkdir(parents=True)
    (outside / "deployments").mkdir()
    return outside


def test_a_path_owned_by_the_application_user_is_refused_so_a_hook_cannot_swap_the_deployment_directory(
        node: support.Node, http: support.HttpServer, open_dir: Path) -> None:
    app, outside = open_dir / "site", _outside(open_dir)
    app.mkdir()
    os.chown(app, NOBODY.pw_uid, NOBODY.pw_gid)  # Capistrano style: the deploy user owns path
    _hooked(node, http, app, 'mv "$DEPLOYMENT_PATH" "$APPLICATION_PATH/moved" && '
                             f'ln -s {outside} "$DEPLOYMENT_PATH"\n')
    before = _tree(outside)

    _refused(node, node.tether("reconcile"), f"{app} (the application path) is a directory owned by nobody",
             f"chown root:root {app}")

    assert _tree(outside) == before
    assert os.listdir(app) == []


def test_a_path_owned_by_the_application_user_is_refused_so_a_hook_cannot_swap_tethers_directory(
        node: support.Node, http: support.HttpServer, open_dir: Path) -> None:
    app, outside = open_dir / "site", _outside(open_dir)
    app.mkdir()
    os.chown(app, NOBODY.pw_uid, NOBODY.pw_gid)
    _hooked(node, http, app, 'mv "$APPLICATION_PATH/.tether" "$APPLICATION_PATH/.old" && '
                             f'ln -s {outside} "$APPLICATION_PATH/.tether"\n')
    before = _tree(outside)

    _refused(node, node.tether("reconcile"), "owned by nobody")

    assert _tree(outside) == before


def test_a_hook_of_a_root_owned_path_cannot_swap_the_deployment_or_staging_directory(
        node: support.Node, http: support.HttpServer, open_dir: Path) -> None:
    app, outside = open_dir / "site", _outside(open_dir)
    tries = open_dir / "tries"
    tries.mkdir()
    tries.chmod(0o777)
    _hooked(node, http, app, "\n".join([
        f'mv "$DEPLOYMENT_PATH" "$APPLICATION_PATH/moved" 2>> {tries}/log || echo deployment >> {tries}/refused',
        f'rm -rf "$APPLICATION_PATH/.tether/staging" 2>> {tries}/log || echo staging >> {tries}/refused',
        f'ln -s {outside} "$APPLICATION_PATH/.tether/staging" 2>> {tries}/log || echo link >> {tries}/refused',
        f'mv "$APPLICATION_PATH/.tether" "$APPLICATION_PATH/.old" 2>> {tries}/log || echo tether >> {tries}/refused',
        "exit 0", ""]))
    before = _tree(outside)

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stdout + run.stderr
    assert (tries / "refused").read_text().split() == ["deployment", "staging", "link", "tether"]
    assert "Permission denied" in (tries / "log").read_text()
    assert _tree(outside) == before
    assert (app / "current" / "index.html").read_text() == "<h1>version 1</h1>\n"
    assert not (app / ".tether" / "staging").is_symlink() and not (app / "moved").exists()


def test_links_a_hook_plants_in_the_new_deployment_for_what_the_artifact_ships_are_refused_and_not_followed(
        node: support.Node, http: support.HttpServer, open_dir: Path) -> None:
    app, outside = open_dir / "site", _outside(open_dir)
    (outside / "index.html").write_text("outside\n")
    _hooked(node, http, app, f'ln -s {outside} "$DEPLOYMENT_PATH/css" && '
                             f'ln -s {outside}/index.html "$DEPLOYMENT_PATH/index.html"\n')
    before = _tree(outside)

    run = node.tether("reconcile")

    output = run.stdout + run.stderr
    assert run.returncode == 1 and "Traceback" not in output, output
    assert "already exists (made by a beforeDeploy hook?) and the artifact ships it too" in output
    assert _tree(outside) == before
    assert not (app / "current").exists() and not (app / "v1").exists()


def test_links_a_hook_plants_in_the_new_deployment_beside_the_artifact_are_never_followed_by_root(
        node: support.Node, http: support.HttpServer, open_dir: Path) -> None:
    app, outside = open_dir / "site", _outside(open_dir)
    (outside / "data").write_text("outside\n")
    _hooked(node, http, app, f'ln -s {outside} "$DEPLOYMENT_PATH/extra" && '
                             f'ln -s {outside}/data "$DEPLOYMENT_PATH/data"\n')
    before = _tree(outside)

    run = node.tether("reconcile")

    assert run.returncode == 0, run.stdout + run.stderr
    assert _tree(outside) == before
    assert os.readlink(app / "v1" / "extra") == str(outside)
    assert os.lstat(app / "v1").st_uid == NOBODY.pw_uid and os.lstat(app).st_uid == 0


# ---------------------------------------------------------------- item 18: clocks


def _deploy_versions(node: support.Node, http: support.HttpServer, app: Path, versions: list[str], keep: int) -> None:
    for version in versions:
        http.serve(f"/{version}.tar.gz", support.tar_bytes(support.site(version)))
        support.write_manifest(node.manifests, support.application(
            "site", app, deployment=version, retention={"keep": keep}, source={"url": http.url("/{deployment}.tar.gz")}))
        run = node.tether("reconcile")
        assert run.returncode == 0, run.stdout + run.stderr


def _deployments(app: Path) -> list[str]:
    return sorted(p.name for p in app.iterdir() if not p.name.startswith(".") and p.name != "current")


def _set_record(app: Path, deployment: str, **fields: Any) -> None:
    record = app / ".tether" / "deployments" / f"{deployment}.json"
    document = json.loads(record.read_text())
    document.update(fields)
    record.write_text(json.dumps({k: v for k, v in document.items() if v is not None}))


TEN_YEARS = 10 * 365 * 86400.0


def test_retention_keeps_the_newest_deployments_by_deploy_order_after_a_clock_that_ran_ahead_is_corrected(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    _deploy_versions(node, http, app, ["v1", "v2"], keep=3)
    for version in ("v1", "v2"):  # completed while the clock ran ten years ahead
        _set_record(app, version, completedAt=time.time() + TEN_YEARS)

    _deploy_versions(node, http, app, ["v3", "v4", "v5"], keep=3)

    assert _deployments(app) == ["v3", "v4", "v5"]
    assert os.readlink(app / "current") == str(app / "v5")


def test_records_of_an_older_version_without_a_sequence_are_kept_working_and_count_as_older_than_any_new_one(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    (app / ".tether" / "deployments").mkdir(parents=True)
    future = time.time() + TEN_YEARS  # the old version ran with a clock ten years ahead
    for name, completed in (("old1", future + 100), ("old2", future + 50)):
        (app / name).mkdir()
        (app / name / "index.html").write_text(f"{name}\n")
        (app / ".tether" / "deployments" / f"{name}.json").write_text(json.dumps(
            {"name": name, "state": "complete", "createdAt": completed - 10, "completedAt": completed}))
    listed = node.tether("list", "site")

    _deploy_versions(node, http, app, ["v1", "v2", "v3"], keep=4)

    assert _deployments(app) == ["old1", "v1", "v2", "v3"], listed.stdout  # old2 completed before old1
    sequences = {v: json.loads((app / ".tether" / "deployments" / f"{v}.json").read_text()).get("sequence")
                 for v in ("old1", "v1", "v2", "v3")}
    assert sequences == {"old1": None, "v1": 1, "v2": 2, "v3": 3}
    run = node.tether("activate", "site", "old1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (app / "current" / "index.html").read_text() == "old1\n"


def test_a_deploy_sequence_keeps_growing_when_the_newest_record_is_removed_with_its_deployment(
        node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    _deploy_versions(node, http, app, ["v1", "v2", "v3"], keep=5)
    assert node.tether("activate", "site", "v1").returncode == 0
    assert node.tether("remove", "site", "v3").returncode == 0

    _deploy_versions(node, http, app, ["v4"], keep=5)

    record = json.loads((app / ".tether" / "deployments" / "v4.json").read_text())
    assert record["sequence"] > json.loads((app / ".tether" / "deployments" / "v2.json").read_text())["sequence"]


class _Clocks:
    """A wall clock and a monotonic clock that a test moves by hand."""

    def __init__(self) -> None:
        self.wall, self.monotonic = time.time(), 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.monotonic += seconds


def test_a_wall_clock_stepping_back_does_not_keep_a_failed_application_waiting(
        node: support.Node, http: support.HttpServer) -> None:
    http.serve("/v1.tar.gz", support.Reply(503, b"try later"))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}))
    clocks = _Clocks()
    engine = reconciling.Engine(str(node.state), fetcher=fetching.Fetcher(attempts=1))
    runner = loop.Daemon(loop.Config(str(node.manifests), str(node.state)), engine,
                           clock=lambda: clocks.wall, monotonic=lambda: clocks.monotonic)
    runner.scan(everything=True)
    runner.process("site")
    assert len(http.requests) == 1
    first = json.loads((node.state / "status" / "site.json").read_text())
    waits = _parse(first["nextAttemptAt"]) - clocks.wall
    assert 0 < waits <= runner.backoff.cap_seconds

    clocks.wall -= 2 * 86400  # NTP steps the wall clock back two days
    clocks.monotonic += waits + 1
    runner.process("site")

    assert len(http.requests) == 2, "the retry waited for the wall clock to catch up"
    second = json.loads((node.state / "status" / "site.json").read_text())
    assert 0 < _parse(second["nextAttemptAt"]) - clocks.wall <= runner.backoff.cap_seconds


def test_a_failed_application_is_not_retried_before_its_back_off_on_the_monotonic_clock_ends(
        node: support.Node, http: support.HttpServer) -> None:
    http.serve("/v1.tar.gz", support.Reply(503, b"try later"))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": http.url("/{deployment}.tar.gz")}))
    clocks = _Clocks()
    engine = reconciling.Engine(str(node.state), fetcher=fetching.Fetcher(attempts=1))
    runner = loop.Daemon(loop.Config(str(node.manifests), str(node.state)), engine,
                           clock=lambda: clocks.wall, monotonic=lambda: clocks.monotonic)
    runner.scan(everything=True)
    runner.process("site")

    clocks.wall += 30 * 86400  # the wall clock jumps ahead a month; no time passed
    runner.process("site")

    assert len(http.requests) == 1, "a wall-clock jump ended the back-off early"
    assert queueing.wall_time(runner.backoff.pending()["site"], lambda: clocks.monotonic,
                              lambda: clocks.wall) > clocks.wall


def _parse(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
