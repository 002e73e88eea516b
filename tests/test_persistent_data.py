"""Persistent data from a deployment's `.mtree` (design section 5), end to end through the real command line.

Ownership comes from real local users and groups, created once per module when
missing: the `.mtree` names `deploy` and `user`, the manifest maps them to
`tether-pd-deploy` and `tether-pd-user`.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import support

DEPLOY = "tether-pd-deploy"
USER = "tether-pd-user"
MAPPING = {"deploy": DEPLOY, "user": USER}

# The example of design section 5, copied exactly.
EXAMPLE = """\
/set type=dir uname=deploy gname=deploy mode=0755
.
\tdb uname=user
\t\tproduction.sqlite3 type=file uname=user mode=0640
\t\t..
\t..
\tconfig
\t\tdatabase.yml type=file gname=user mode=0640
\t\t..
\t..
\tlog
\t\tproduction.log type=file gname=user mode=0660
\t\t..
\t..
\ttmp uname=user gname=user
\t..
..
"""

SHIPPED_DATABASE_YML = b"production:\n  adapter: sqlite3\n  database: db/production.sqlite3\n"
SHIPPED_LOG = b"I, [2024-01-01] shipped with d1\n"
LEAVES = ("db/production.sqlite3", "config/database.yml", "log/production.log", "tmp")

Entry = tuple[str, str, str, bytes | str]


# ---------------------------------------------------------------- fixtures and helpers


def _exists(database: Callable[[str], Any], name: str) -> bool:
    try:
        database(name)
    except KeyError:
        return False
    return True


def _create(command: list[str]) -> None:
    run = subprocess.run(command, capture_output=True, text=True)
    # 9: the name was taken meanwhile (another test run created it): that is what we want.
    assert run.returncode in (0, 9), f"{' '.join(command)} failed: {run.stderr}"


@pytest.fixture(scope="module")
def accounts() -> None:
    """The local users and groups the mapping points to (left in place: another run may use them)."""
    if os.geteuid() != 0:
        pytest.skip("persistent-data ownership needs root: tether gives files to the mapped users")
    for name in (DEPLOY, USER):
        if not _exists(grp.getgrnam, name):
            _create(["groupadd", "--system", name])
        if not _exists(pwd.getpwnam, name):
            _create(["useradd", "--system", "--no-create-home", "--no-user-group", "--gid", name,
                     "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name])


def owner_of(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


def describe(path: Path) -> Entry:
    """(type, owner:group, mode, content or link target) of one path, never following a link."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return ("link", owner_of(st), "", os.readlink(path))
    if stat.S_ISDIR(st.st_mode):
        return ("dir", owner_of(st), oct(stat.S_IMODE(st.st_mode)), "")
    return ("file", owner_of(st), oct(stat.S_IMODE(st.st_mode)), path.read_bytes())


def tree(root: Path, skip: tuple[Path, ...] = ()) -> dict[str, Entry]:
    """Every path below `root` (and root itself as '.'), described; `skip` prunes whole subtrees."""
    if not os.path.lexists(root):
        return {}
    found = {".": describe(root)}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath) / d not in skip]
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            found[str(full.relative_to(root))] = describe(full)
    return found


def identities(root: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every path below `root`: equal means nothing was rewritten or touched."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            found[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def artifact(version: str, spec: str | None = EXAMPLE, *extra: support.Member) -> bytes:
    """An application release; d1 ships the files that seed persistent data, later ones ship other copies."""
    members = [support.Member("index.html", f"<h1>{version}</h1>\n".encode()),
               support.Member("config/", type="dir"),
               support.Member("config/application.rb", b"# the application's own configuration\n")]
    if spec is not None:
        members.insert(0, support.Member(".mtree", spec.encode()))
    if version == "d1":
        members += [support.Member("config/database.yml", SHIPPED_DATABASE_YML),
                    support.Member("db/", type="dir"),
                    support.Member("db/schema.rb", b"ActiveRecord::Schema.define {}\n"),
                    support.Member("log/", type="dir"),
                    support.Member("log/production.log", SHIPPED_LOG),
                    support.Member("tmp/", type="dir"),
                    support.Member("tmp/.keep", b"")]
    else:
        members += [support.Member("config/database.yml", f"production:\n  adapter: postgresql # {version}\n".encode()),
                    support.Member("log/", type="dir"),
                    support.Member("log/production.log", f"shipped with {version}\n".encode())]
    return support.tar_bytes([*members, *extra])


class Acme:
    """One application `acme` in the sandbox, deployed from the HTTP fixture."""

    def __init__(self, node: support.Node, http: support.HttpServer) -> None:
        self.node, self.http = node, http
        self.path = node.apps / "acme"
        self.data = self.path / "persistent-data"

    def serve(self, deployment: str, spec: str | None = EXAMPLE, *extra: support.Member) -> None:
        self.http.serve(f"/acme/{deployment}.tar.gz", artifact(deployment, spec, *extra))

    def want(self, deployment: str, **spec: Any) -> None:
        document = support.application(
            "acme", self.path, deployment=deployment, user=DEPLOY, group=DEPLOY, userMapping=MAPPING,
            groupMapping=MAPPING, source={"url": self.http.url("/acme/{deployment}.tar.gz")}, **spec)
        support.write_manifest(self.node.manifests, document)

    def reconcile(self) -> subprocess.CompletedProcess[str]:
        return self.node.tether("reconcile")

    def deploy(self, deployment: str, spec: str | None = EXAMPLE, *extra: support.Member, **manifest: Any) -> None:
        self.serve(deployment, spec, *extra)
        self.want(deployment, **manifest)
        run = self.reconcile()
        assert run.returncode == 0, run.stdout + run.stderr
        assert os.readlink(self.path / "current") == str(self.path / deployment)

    def outside(self) -> dict[str, Entry]:
        """The sandbox outside the application's path and the state dir."""
        return tree(self.node.root, skip=(self.path, self.node.state))

    def use(self) -> None:
        """What the running application does: write its data through the links of `current`."""
        with (self.path / "current" / "log" / "production.log").open("ab") as handle:
            handle.write(b"I, [2024-01-02] written while d1 ran\n")
        (self.path / "current" / "db" / "production.sqlite3").write_bytes(b"SQLite format 3\x00rows of d1")
        session = self.path / "current" / "tmp" / "session-1"
        session.write_bytes(b"a session of d1")
        session.chmod(0o600)


@pytest.fixture
def acme(node: support.Node, http: support.HttpServer, accounts: None) -> Acme:
    return Acme(node, http)


def expected_data() -> dict[str, Entry]:
    """The persistent-data tree of the design section 5 example after d1 ran and wrote its data."""
    deploy, user = f"{DEPLOY}:{DEPLOY}", f"{USER}:{USER}"
    return {
        ".": ("dir", deploy, "0o755", ""),
        "db": ("dir", f"{USER}:{DEPLOY}", "0o755", ""),
        "db/production.sqlite3": ("file", f"{USER}:{DEPLOY}", "0o640", b"SQLite format 3\x00rows of d1"),
        "config": ("dir", deploy, "0o755", ""),
        "config/database.yml": ("file", f"{DEPLOY}:{USER}", "0o640", SHIPPED_DATABASE_YML),
        "log": ("dir", deploy, "0o755", ""),
        "log/production.log": ("file", f"{DEPLOY}:{USER}", "0o660",
                               SHIPPED_LOG + b"I, [2024-01-02] written while d1 ran\n"),
        "tmp": ("dir", user, "0o755", ""),
        "tmp/.keep": ("file", user, "0o644", b""),
        "tmp/session-1": ("file", "root:root", "0o600", b"a session of d1"),
    }


def refused(acme: Acme, spec: str = EXAMPLE, tamper: Callable[[], None] = lambda: None) -> str:
    """Deploy d1 and use it, tamper, then deploy d2 with `spec`: it must fail and change nothing.

    Returns what the command printed, for the caller to check the message."""
    acme.deploy("d1")
    acme.use()
    tamper()
    data = tree(acme.data)
    acme.serve("d2", spec)
    acme.want("d2")
    outside = acme.outside()

    run = acme.reconcile()

    assert run.returncode == 1, run.stdout + run.stderr
    assert os.readlink(acme.path / "current") == str(acme.path / "d1")
    assert not (acme.path / "d2").exists()
    assert tree(acme.data) == data, "persistent data changed although the deployment was refused"
    assert acme.outside() == outside, "something outside the application's path and the state dir changed"
    return run.stdout + run.stderr


# ---------------------------------------------------------------- the example of design section 5


def test_the_design_example_links_every_leaf_and_keeps_data_across_deployments(acme: Acme) -> None:
    acme.deploy("d1")
    acme.use()
    written = identities(acme.data)
    acme.deploy("d2")
    acme.deploy("d3")

    assert tree(acme.data) == expected_data()
    assert identities(acme.data) == written, "a later deployment rewrote or touched persistent data"
    for deployment in ("d1", "d2", "d3"):
        root = acme.path / deployment
        for directory in ("db", "config", "log"):
            assert describe(root / directory)[:2] == ("dir", f"{DEPLOY}:{DEPLOY}"), f"{deployment}/{directory}"
        for leaf in LEAVES:
            assert describe(root / leaf) == ("link", f"{DEPLOY}:{DEPLOY}", "", str(acme.data / leaf)), \
                f"{deployment}/{leaf}"
        assert (root / "config" / "application.rb").read_bytes() == b"# the application's own configuration\n"
    assert (acme.path / "d1" / "db" / "schema.rb").read_bytes() == b"ActiveRecord::Schema.define {}\n"
    current = acme.path / "current"
    assert (current / "log" / "production.log").read_bytes() == SHIPPED_LOG + b"I, [2024-01-02] written while d1 ran\n"
    assert (current / "db" / "production.sqlite3").read_bytes() == b"SQLite format 3\x00rows of d1"
    assert (current / "tmp" / "session-1").read_bytes() == b"a session of d1"
    assert (current / "config" / "database.yml").read_bytes() == SHIPPED_DATABASE_YML


def test_a_persistent_directory_is_seeded_with_only_what_the_mtree_declares(acme: Acme) -> None:
    acme.deploy("d1")

    assert sorted(os.listdir(acme.data / "config")) == ["database.yml"]
    assert sorted(os.listdir(acme.data / "db")) == ["production.sqlite3"]


# ---------------------------------------------------------------- re-application


def _tamper_by_hand(data: Path) -> None:
    for path in (data / "db", data / "log" / "production.log", data / "tmp"):
        os.chown(path, 0, 0)
        path.chmod(0o700 if path.is_dir() else 0o600)


def test_a_new_deployment_reapplies_ownership_and_mode_changed_by_hand(acme: Acme) -> None:
    acme.deploy("d1")
    acme.use()
    _tamper_by_hand(acme.data)

    acme.deploy("d2")

    assert tree(acme.data) == expected_data()


def test_nochange_keeps_ownership_and_mode_changed_by_hand(acme: Acme) -> None:
    spec = EXAMPLE.replace("production.log type=file gname=user mode=0660",
                           "production.log type=file gname=user mode=0660 nochange")
    acme.deploy("d1", spec)
    acme.use()
    _tamper_by_hand(acme.data)

    acme.deploy("d2", spec)

    found, expected = tree(acme.data), expected_data()
    assert found["log/production.log"] == ("file", "root:root", "0o600", expected["log/production.log"][3])
    del found["log/production.log"], expected["log/production.log"]
    assert found == expected


# ---------------------------------------------------------------- safety


@pytest.mark.parametrize(("tmp", "line", "words"), [
    ("\ttmp uname=root gname=user\n", 15, ["user 'root', which the manifest does not allow", "spec.userMapping"]),
    ("\ttmp uname=nobody gname=user\n", 15, ["user 'nobody', which the manifest does not allow", "spec.userMapping"]),
    ("\ttmp uname=www gname=user\n", 15, ["user 'www', which the manifest does not allow", "spec.userMapping"]),
    ("\ttmp uname=user gname=root\n", 15, ["group 'root', which the manifest does not allow", "spec.groupMapping"]),
    ("/unset uname\n\ttmp uid=0 gname=user\n", 16, ["user id 0, which the manifest does not allow", "spec.userMapping"]),
], ids=["uname-root", "uname-unmapped-local-user", "uname-unknown", "gname-root", "uid-0"])
def test_an_mtree_that_gives_files_to_someone_the_manifest_does_not_allow_is_refused(
        acme: Acme, tmp: str, line: int, words: list[str]) -> None:
    output = refused(acme, EXAMPLE.replace("\ttmp uname=user gname=user\n", tmp), tamper=lambda: _tamper_by_hand(acme.data))

    assert f".mtree line {line}: " in output
    for word in words:
        assert word in output


@pytest.mark.parametrize(("entry", "words"), [
    ("\t../x type=file\n", "would leave the persistent-data tree"),
    ("\tdb/../../x type=file\n", "would leave the persistent-data tree"),
    ("\t\\056\\056/x type=file\n", "would leave the persistent-data tree"),
    ("\tout type=link link=../../outside\n\t..\n", "points outside persistent data"),
    ("\tout type=link link=/etc/passwd\n\t..\n", "points outside persistent data"),
], ids=["dot-dot", "dot-dot-inside", "escaped-dot-dot", "relative-link", "absolute-link"])
def test_a_name_or_link_that_escapes_the_tree_is_refused(acme: Acme, entry: str, words: str) -> None:
    spec = EXAMPLE.removesuffix("..\n") + entry + "..\n"

    output = refused(acme, spec, tamper=lambda: _tamper_by_hand(acme.data))

    assert words in output
    assert not (acme.node.apps / "x").exists() and not (acme.path / "x").exists()


def _elsewhere(node: support.Node) -> Path:
    """A directory outside the application that an attacker would like tether to chown."""
    elsewhere = node.root / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o700)
    (elsewhere / "secret").write_bytes(b"not for the application\n")
    (elsewhere / "secret").chmod(0o600)
    return elsewhere


@pytest.mark.parametrize(("planted", "target"), [("log", "."), ("log/production.log", "secret"), ("tmp", ".")])
def test_a_symlink_planted_inside_persistent_data_is_refused_not_followed(
        acme: Acme, planted: str, target: str) -> None:
    elsewhere = _elsewhere(acme.node)
    before = tree(elsewhere)

    def plant() -> None:
        victim = acme.data / planted
        victim.rename(acme.data / f"{planted}.moved-away")
        victim.symlink_to(elsewhere / target)

    output = refused(acme, tamper=plant)

    assert f"{acme.data}/{planted} exists but is not a" in output
    assert "move it away" in output
    assert tree(elsewhere) == before
    assert os.readlink(acme.data / planted) == str(elsewhere / target)


def test_a_persistent_data_directory_that_is_a_symlink_is_refused(acme: Acme) -> None:
    elsewhere = _elsewhere(acme.node)
    acme.path.mkdir()
    acme.data.symlink_to(elsewhere)
    acme.serve("d1")
    acme.want("d1")
    before, outside = tree(elsewhere), acme.outside()

    run = acme.reconcile()

    assert run.returncode == 1
    assert f"{acme.data} is a symlink or not a directory" in run.stdout + run.stderr
    assert "move it away" in run.stdout + run.stderr
    assert tree(elsewhere) == before
    assert acme.outside() == outside
    assert os.readlink(acme.data) == str(elsewhere)
    assert not os.path.lexists(acme.path / "current") and not (acme.path / "d1").exists()


@pytest.mark.parametrize(("entry", "declared"), [("config/database.yml", "file"), ("tmp", "dir")])
def test_a_persistent_node_of_another_type_than_the_mtree_says_is_refused_and_left_alone(
        acme: Acme, entry: str, declared: str) -> None:
    def retype() -> None:
        victim = acme.data / entry
        victim.rename(acme.data / f"{entry}.moved-away")
        if declared == "file":
            victim.mkdir()
            (victim / "notes").write_bytes(b"an operator's notes\n")
        else:
            victim.write_bytes(b"an operator's notes\n")

    output = refused(acme, tamper=retype)

    assert f"{acme.data}/{entry} exists but is not a {declared}" in output
    assert "tether never replaces persistent data: move it away or fix the .mtree" in output


@pytest.mark.parametrize(("shipped", "target"), [("config/database.yml", "../index.html"), ("tmp", "config")])
def test_a_symlink_the_deployment_ships_is_not_followed_when_seeding(acme: Acme, shipped: str, target: str) -> None:
    members = [support.Member(".mtree", EXAMPLE.encode()), support.Member("index.html", b"<h1>d1</h1>\n"),
               support.Member("config/", type="dir"), support.Member("config/application.rb", b"# app\n"),
               support.Member(shipped, type="symlink", target=target)]
    acme.http.serve("/acme/d1.tar.gz", support.tar_bytes(members))
    acme.want("d1")

    run = acme.reconcile()

    assert run.returncode == 0, run.stdout + run.stderr
    found = tree(acme.data)
    assert found["config/database.yml"] == ("file", f"{DEPLOY}:{USER}", "0o640", b"")
    assert found["tmp"] == ("dir", f"{USER}:{USER}", "0o755", "")
    assert sorted(found) == [".", "config", "config/database.yml", "db", "db/production.sqlite3", "log",
                             "log/production.log", "tmp"]
    assert os.readlink(acme.path / "d1" / shipped) == str(acme.data / shipped)


def test_persistent_data_off_creates_no_links(acme: Acme) -> None:
    acme.deploy("d1", persistentData="off")

    assert not os.path.lexists(acme.data)
    d1 = acme.path / "d1"
    assert (d1 / "config" / "database.yml").read_bytes() == SHIPPED_DATABASE_YML
    assert (d1 / "log" / "production.log").read_bytes() == SHIPPED_LOG
    assert not any(p.is_symlink() for p in d1.rglob("*"))


def test_an_artifact_without_mtree_creates_no_persistent_data(acme: Acme) -> None:
    acme.deploy("d1", None)

    assert not os.path.lexists(acme.data)
    d1 = acme.path / "d1"
    assert (d1 / "config" / "database.yml").read_bytes() == SHIPPED_DATABASE_YML
    assert not any(p.is_symlink() for p in d1.rglob("*"))


# ---------------------------------------------------------------- optional nodes

OPTIONAL = """\
/set type=dir uname=deploy gname=deploy mode=0755
.
\tconfig
\t\tdatabase.yml type=file gname=user mode=0640
\t\t..
\t\tsecrets.yml type=file mode=0600 optional
\t\t..
\t..
\tuploads uname=user optional
\t\tavatars optional
\t\t..
\t..
..
"""


def test_optional_nodes_are_created_only_when_the_deployment_ships_them(acme: Acme) -> None:
    acme.deploy("d1", OPTIONAL)

    assert sorted(tree(acme.data)) == [".", "config", "config/database.yml"]
    assert not os.path.lexists(acme.path / "d1" / "config" / "secrets.yml")
    assert not os.path.lexists(acme.path / "d1" / "uploads")

    acme.deploy("d2", OPTIONAL, support.Member("config/secrets.yml", b"secret_key_base: d2\n"),
                support.Member("uploads/", type="dir"), support.Member("uploads/avatars/", type="dir"),
                support.Member("uploads/avatars/a.png", b"png"))

    assert tree(acme.data)["config/secrets.yml"] == ("file", f"{DEPLOY}:{DEPLOY}", "0o600", b"secret_key_base: d2\n")
    assert tree(acme.data)["uploads/avatars/a.png"][3] == b"png"
    assert os.readlink(acme.path / "d2" / "config" / "secrets.yml") == str(acme.data / "config" / "secrets.yml")
    assert os.readlink(acme.path / "d2" / "uploads" / "avatars") == str(acme.data / "uploads" / "avatars")


# ---------------------------------------------------------------- idempotence


def test_a_second_pass_with_nothing_changed_changes_nothing(acme: Acme) -> None:
    acme.deploy("d1")
    acme.use()
    acme.deploy("d2")
    before = (tree(acme.path), identities(acme.path), acme.outside())
    requests = len(acme.http.requests)

    run = acme.reconcile()

    assert run.returncode == 0, run.stdout + run.stderr
    assert (tree(acme.path), identities(acme.path), acme.outside()) == before
    assert len(acme.http.requests) == requests
