"""Persistent data under attack and under faults (issue 9, items 3, 4, 5 and the `.mtree` of item 15).

Everything runs through the real command line as root: real hard links and
symlinks planted in persistent data, a real SIGKILL in the middle of a seed,
a real tmpfs that fills up, a `.mtree` that is a directory, a FIFO, too big.
The application runs as `nobody:nogroup`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import support

USER, GROUP = "nobody", "nogroup"
SEED_NAME = re.compile(r"\.tether-seed-[0-9a-f]{16}")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these attacks need root: tether hands files to nobody")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def big(size: int) -> bytes:
    """Incompressible-looking but cheap data: a random MiB repeated, each copy stamped with its number."""
    block = os.urandom(1024 * 1024)
    return b"".join(i.to_bytes(8, "big") + block[8:] for i in range(size // len(block)))[:size]


class App:
    """One application `acme` deployed from the HTTP fixture."""

    def __init__(self, node: support.Node, http: support.HttpServer) -> None:
        self.node, self.http = node, http
        self.path = node.apps / "acme"
        self.data = self.path / "persistent-data"

    def serve(self, deployment: str, spec: bytes | str | None, *members: support.Member) -> None:
        shipped = [support.Member("index.html", f"<h1>{deployment}</h1>\n".encode()), *members]
        if spec is not None:
            shipped.insert(0, support.Member(".mtree", spec.encode() if isinstance(spec, str) else spec))
        self.http.serve(f"/acme/{deployment}.tar.gz", support.tar_bytes(shipped))

    def want(self, deployment: str) -> None:
        support.write_manifest(self.node.manifests, support.application(
            "acme", self.path, deployment=deployment, user=USER, group=GROUP,
            source={"url": self.http.url("/acme/{deployment}.tar.gz")}))

    def reconcile(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.node.tether("reconcile", env=env, timeout=60)

    def deploy(self, deployment: str, spec: bytes | str | None, *members: support.Member) -> None:
        self.serve(deployment, spec, *members)
        self.want(deployment)
        run = self.reconcile()
        assert run.returncode == 0, run.stdout + run.stderr
        assert self.current() == deployment

    def current(self) -> str | None:
        link = self.path / "current"
        return Path(os.readlink(link)).name if os.path.lexists(link) else None

    def outside(self) -> dict[str, tuple[str, str]]:
        return {k: v for k, v in support.snapshot(self.node.root).items()
                if not k.startswith(("apps/acme", "state"))}


@pytest.fixture
def app(node: support.Node, http: support.HttpServer) -> App:
    return App(node, http)


def one_line_error(run: subprocess.CompletedProcess[str], *words: str) -> str:
    """The run failed with a clear message holding `words`, and no traceback."""
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if all(word in line for word in words)]
    assert lines, f"no line says {words}: {output}"
    return lines[0]


def refused(app: App, deployment: str, *words: str) -> str:
    """Reconcile towards `deployment`: it must fail clearly, stay on what was active, leave no trace of itself."""
    before = app.current()
    run = app.reconcile()
    line = one_line_error(run, *words)
    assert app.current() == before
    assert not (app.path / deployment).exists()
    return line


def victim(node: support.Node) -> Path:
    """A root-only file outside the application, playing /etc/shadow."""
    shadow = node.root / "shadow"
    shadow.write_bytes(b"root:$6$secret:19000:0:99999:7:::\n")
    shadow.chmod(0o600)
    os.chown(shadow, 0, 0)
    return shadow


def identity(path: Path) -> tuple[int, int, int, bytes]:
    st = path.lstat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), path.read_bytes()


def seed_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if SEED_NAME.fullmatch(p.name)) if directory.is_dir() else []


# ---------------------------------------------------------------- item 3: hard links in persistent data

SECRETS = """\
/set type=dir mode=0755
.
config
app.yml type=file mode=0640
secret.yml type=file uname=nobody mode=0640
..
..
"""


@pytest.mark.parametrize("how", ["planted-after-the-first-deployment", "there-before-the-first-deployment"])
def test_a_hard_link_to_a_root_file_in_persistent_data_is_refused_and_the_file_keeps_its_owner_and_mode(
        app: App, how: str) -> None:
    shadow = victim(app.node)
    config = app.data / "config"
    if how == "planted-after-the-first-deployment":
        app.deploy("d1", SECRETS, support.Member("config/secret.yml", b"key: d1\n"))
        (config / "secret.yml").unlink()
        (config / "app.yml").chmod(0o666)  # the application's own doing: a refused pass must not "fix" it first
    else:
        config.mkdir(parents=True)
    os.link(shadow, config / "secret.yml")
    app.serve("d2", SECRETS)
    app.want("d2")
    before, outside = identity(shadow), app.outside()

    line = refused(app, "d2", f"{config}/secret.yml has 2 hard links", "remove the extra links")

    assert "does not change the owner or mode of a file linked elsewhere" in line
    assert identity(shadow) == before
    assert app.outside() == outside
    if how == "planted-after-the-first-deployment":
        assert stat.S_IMODE((config / "app.yml").stat().st_mode) == 0o666, "the refused pass changed other nodes"
    else:
        assert not (config / "app.yml").exists(), "the refused pass created other nodes"


def test_a_hard_link_to_a_root_symlink_in_persistent_data_is_refused_and_keeps_its_owner(app: App) -> None:
    spec = "/set mode=0755\n. type=dir\nshared type=link link=config uname=nobody\n..\n"
    outside_link = app.node.root / "root-link"
    outside_link.symlink_to("/etc/hostname")
    app.data.mkdir(parents=True)
    os.link(outside_link, app.data / "shared", follow_symlinks=False)
    app.serve("d1", spec)
    app.want("d1")

    refused(app, "d1", f"{app.data}/shared has 2 hard links")

    assert outside_link.lstat().st_uid == 0


def test_a_hard_linked_persistent_file_marked_nochange_is_left_alone_and_deploys(app: App) -> None:
    shadow = victim(app.node)
    (app.data / "config").mkdir(parents=True)
    os.link(shadow, app.data / "config" / "secret.yml")
    before = identity(shadow)

    app.deploy("d1", SECRETS.replace("uname=nobody mode=0640", "uname=nobody mode=0640 nochange"))

    assert identity(shadow) == before


def test_a_persistent_file_replaced_by_a_symlink_to_a_root_file_is_refused_not_followed(app: App) -> None:
    shadow = victim(app.node)
    app.deploy("d1", SECRETS, support.Member("config/secret.yml", b"key: d1\n"))
    (app.data / "config" / "secret.yml").unlink()
    (app.data / "config" / "secret.yml").symlink_to(shadow)
    before = identity(shadow)
    app.serve("d2", SECRETS)
    app.want("d2")

    refused(app, "d2", f"{app.data}/config/secret.yml exists but is not a file")

    assert identity(shadow) == before


def test_a_single_link_persistent_file_is_still_given_its_owner_and_mode(app: App) -> None:
    app.deploy("d1", SECRETS, support.Member("config/secret.yml", b"key: d1\n"))
    secret = app.data / "config" / "secret.yml"
    os.chown(secret, 0, 0)
    secret.chmod(0o644)
    app.deploy("d2", SECRETS)

    st = secret.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode), secret.read_bytes()) == (65534, 0o640, b"key: d1\n")


# ---------------------------------------------------------------- item 4: link chains


def chain_spec(*entries: str) -> tuple[str, int]:
    """A spec with a directory `d` holding `entries`; the line number of the last one."""
    lines = ["/set mode=0755", ". type=dir", "d type=dir", *entries, "..", ".."]
    return "\n".join(lines) + "\n", 3 + len(entries)


@pytest.mark.parametrize("entries", [
    ("up type=link link=..", "out type=link link=up/.."),
    ("e type=dir", "top type=link link=../..", "..", "hop type=link link=e/top", "out type=link link=hop/../etc"),
    ("out type=link link=up/../passwd", "up type=link link=.."),
    ("out type=link link=a/../x", "a type=link link=b", "b type=link link=.."),
    ("out type=link link=./../../x",),
    ("out type=link link=..//../x",),
    ("out type=link link=/etc/passwd",),
], ids=["through-a-link-to-dot-dot", "through-two-links", "through-a-link-declared-later", "chain-of-three",
        "dot-slash-dot-dot", "double-slash", "absolute"])
def test_a_link_that_leaves_persistent_data_through_other_links_is_refused_with_its_line(
        app: App, entries: tuple[str, ...]) -> None:
    spec, _ = chain_spec(*entries)
    line = 3 + next(i for i, entry in enumerate(entries, start=1) if entry.startswith("out "))
    app.serve("d1", spec)
    app.want("d1")
    outside = app.outside()

    message = refused(app, "d1", f".mtree line {line}: ", "points outside persistent data")

    assert "link=" in message
    assert not os.path.lexists(app.data / "d" / "out")
    assert app.outside() == outside


def test_a_loop_of_links_is_refused_with_its_line(app: App) -> None:
    spec, _ = chain_spec("a type=link link=b", "b type=link link=a")
    app.serve("d1", spec)
    app.want("d1")

    refused(app, "d1", ".mtree line 4: ", "loop of links")


@pytest.mark.parametrize("planted", ["/etc", "../..", "../../../.."])
def test_a_link_through_a_symlink_already_in_persistent_data_that_leaves_it_is_refused(app: App, planted: str) -> None:
    (app.data / "d").mkdir(parents=True)
    (app.data / "d" / "planted").symlink_to(planted)
    spec, line = chain_spec("out type=link link=planted/passwd")
    app.serve("d1", spec)
    app.want("d1")

    refused(app, "d1", f".mtree line {line}: ", "points outside persistent data", "d/planted")

    assert not os.path.lexists(app.data / "d" / "out")


def test_a_declared_link_whose_existing_copy_leaves_persistent_data_refuses_links_through_it(app: App) -> None:
    spec, _ = chain_spec("up type=link link=.", "out type=link link=up/x")
    app.deploy("d1", spec)
    (app.data / "d" / "up").unlink()
    (app.data / "d" / "up").symlink_to("../..")  # what is on disk wins over what the spec says
    app.serve("d2", spec)
    app.want("d2")

    refused(app, "d2", ".mtree line 4: ", f"{app.data}/d/up already exists as a link to ../..", "move it away")


def test_good_relative_links_inside_the_tree_still_work(app: App) -> None:
    spec = ("/set mode=0755\n. type=dir\nconfig type=dir\ndatabase.yml type=file\ncurrent.yml type=link "
            "link=database.yml\n..\nd type=dir\nshared type=link link=../config\nx type=link link=shared/database.yml\n"
            "up type=link link=..\ny type=link link=up/config/./database.yml\n..\n..\n")
    app.deploy("d1", spec, support.Member("config/database.yml", b"adapter: sqlite3\n"))

    d1 = app.path / "d1"
    for leaf in ("config/current.yml", "d/x", "d/y"):
        assert (d1 / leaf).read_bytes() == b"adapter: sqlite3\n", leaf
    assert os.readlink(app.data / "d" / "y") == "up/config/./database.yml"


# ---------------------------------------------------------------- item 5: seeding whole or not at all

SEEDED = "/set mode=0755\n. type=dir\ndata type=dir\nbig.bin type=file mode=0640\n..\n..\n"
SEEDED_DIR = "/set mode=0755\n. type=dir\nuploads type=dir mode=0750\n..\n..\n"


def test_a_seed_killed_halfway_leaves_no_truncated_file_and_the_next_pass_seeds_it_whole(app: App) -> None:
    content = big(12 * 1024 * 1024)
    app.serve("d1", SEEDED, support.Member("data/big.bin", content))
    app.want("d1")

    killed = app.reconcile(env={"TETHER_TEST_CRASH_AT": "seeding"})

    assert killed.returncode == -signal.SIGKILL, f"the seed was never reached: {killed.stdout + killed.stderr}"
    assert not os.path.lexists(app.data / "data" / "big.bin"), "a partial seed sits at the persistent name"
    assert app.current() is None
    again = app.reconcile()
    assert again.returncode == 0, again.stdout + again.stderr
    seeded = app.data / "data" / "big.bin"
    assert sha256(seeded) == hashlib.sha256(content).hexdigest()
    st = seeded.stat()
    assert (st.st_uid, st.st_nlink, stat.S_IMODE(st.st_mode)) == (65534, 1, 0o640)
    assert seed_leftovers(app.data / "data") == []
    assert app.current() == "d1"
    assert (app.path / "current" / "data" / "big.bin").read_bytes() == content


def test_a_directory_seed_killed_halfway_is_absent_and_the_next_pass_seeds_it_whole(app: App) -> None:
    files = [support.Member(f"uploads/{i:03}.bin", os.urandom(4096)) for i in range(50)]
    app.serve("d1", SEEDED_DIR, support.Member("uploads/", type="dir"), *files)
    app.want("d1")

    killed = app.reconcile(env={"TETHER_TEST_CRASH_AT": "seeding"})

    assert killed.returncode == -signal.SIGKILL, f"the seed was never reached: {killed.stdout + killed.stderr}"
    assert not os.path.lexists(app.data / "uploads")
    again = app.reconcile()
    assert again.returncode == 0, again.stdout + again.stderr
    uploads = app.data / "uploads"
    assert sorted(p.name for p in uploads.iterdir()) == sorted(Path(m.name).name for m in files)
    for member in files:
        assert (app.data / member.name).read_bytes() == member.data
    assert stat.S_IMODE(uploads.stat().st_mode) == 0o750 and uploads.stat().st_uid == 65534
    assert seed_leftovers(app.data) == []


def test_a_file_the_application_wrote_after_an_interrupted_seed_is_kept_not_replaced(app: App) -> None:
    app.serve("d1", SEEDED, support.Member("data/big.bin", big(4 * 1024 * 1024)))
    app.want("d1")
    assert app.reconcile(env={"TETHER_TEST_CRASH_AT": "seeding"}).returncode == -signal.SIGKILL
    mine = app.data / "data" / "big.bin"
    mine.write_bytes(b"written by the application between the passes\n")

    run = app.reconcile()

    assert run.returncode == 0, run.stdout + run.stderr
    assert mine.read_bytes() == b"written by the application between the passes\n"
    assert seed_leftovers(app.data / "data") == []
    assert (app.path / "current" / "data" / "big.bin").read_bytes() == mine.read_bytes()


def test_a_later_deployment_never_reseeds_over_data_the_application_wrote(app: App) -> None:
    app.deploy("d1", SEEDED, support.Member("data/big.bin", b"shipped with d1\n"))
    mine = app.data / "data" / "big.bin"
    mine.write_bytes(b"the application's data\n")
    app.deploy("d2", SEEDED, support.Member("data/big.bin", b"shipped with d2\n"))

    assert mine.read_bytes() == b"the application's data\n"


def test_a_seed_killed_between_its_link_and_its_unlink_is_finished_by_the_next_pass(app: App) -> None:
    app.deploy("d1", SEEDED, support.Member("data/big.bin", b"seeded by d1\n"))
    seeded = app.data / "data" / "big.bin"
    os.link(seeded, app.data / "data" / ".tether-seed-0011223344556677")  # the temporary name, not yet removed
    shadow = victim(app.node)
    elsewhere = app.data / "data" / ".tether-seed-8899aabbccddeeff"
    os.link(shadow, elsewhere)  # a second link out of the directory: never tether's to remove
    os.link(shadow, app.node.root / "another-name")

    app.deploy("d2", SEEDED, support.Member("data/big.bin", b"shipped with d2\n"))

    assert seed_leftovers(app.data / "data") == [elsewhere.name]
    assert seeded.read_bytes() == b"seeded by d1\n" and os.stat(seeded).st_nlink == 1


def test_only_leftovers_tether_made_are_removed(app: App) -> None:
    shadow = victim(app.node)
    (app.data / "data").mkdir(parents=True)
    planted_link = app.data / "data" / ".tether-seed-0123456789abcdef"
    planted_link.symlink_to(shadow)
    hard = app.data / "data" / ".tether-seed-fedcba9876543210"
    os.link(shadow, hard)
    other = app.data / "data" / ".tether-seed-notours"
    other.write_bytes(b"an application file with a similar name\n")
    leftover = app.data / "data" / ".tether-seed-00112233445566aa"
    leftover.write_bytes(b"half a seed")
    before = identity(shadow)

    app.deploy("d1", SEEDED, support.Member("data/big.bin", b"whole\n"))

    assert not os.path.lexists(leftover)
    assert os.path.lexists(planted_link) and os.path.lexists(hard) and other.exists()
    assert identity(shadow) == before


@pytest.fixture
def small_disk(app: App) -> Iterator[Path]:
    """persistent-data on its own 4 MiB tmpfs."""
    app.data.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(app.data)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test: {mounted.stderr}")
    try:
        yield app.data
    finally:
        subprocess.run(["umount", "-l", str(app.data)], check=True)


def test_a_full_disk_while_seeding_fails_the_pass_as_temporary_and_leaves_no_truncated_file(
        app: App, small_disk: Path) -> None:
    content = big(6 * 1024 * 1024)
    app.serve("d1", SEEDED, support.Member("data/big.bin", content))
    app.want("d1")

    line = refused(app, "d1", "full", "data/big.bin")

    assert "free some space" in line
    assert not os.path.lexists(small_disk / "data" / "big.bin"), "a truncated seed was left"
    assert seed_leftovers(small_disk / "data") == []
    conditions = json.loads(app.node.tether("status", "acme", "--json").stdout)["conditions"]
    assert {c["type"]: c["status"] for c in conditions}["Stalled"] == "False", "a full disk is not a permanent error"
    subprocess.run(["mount", "-o", "remount,size=32m", str(small_disk)], check=True)
    again = app.reconcile()
    assert again.returncode == 0, again.stdout + again.stderr
    assert sha256(small_disk / "data" / "big.bin") == hashlib.sha256(content).hexdigest()
    assert app.current() == "d1"


def test_a_full_disk_while_seeding_a_directory_leaves_no_cut_short_file(app: App, small_disk: Path) -> None:
    # The file fits in one write, and the disk has room for a third of it: the write takes what fits and says so
    # only by its return value.
    content = os.urandom(300 * 1024)
    app.serve("d1", SEEDED_DIR, support.Member("uploads/seed.bin", content))
    app.want("d1")
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 65536)
        os.ftruncate(fd, os.fstat(fd).st_size - 100 * 1024)
    finally:
        os.close(fd)

    refused(app, "d1", "full", "uploads")

    assert not os.path.lexists(small_disk / "uploads"), "a seed cut short was put in place"
    assert seed_leftovers(small_disk) == []
    (small_disk / "filler").unlink()
    again = app.reconcile()
    assert again.returncode == 0, again.stdout + again.stderr
    assert (small_disk / "uploads" / "seed.bin").read_bytes() == content
    assert app.current() == "d1"


# ---------------------------------------------------------------- item 15: a `.mtree` that is not a small text file


@pytest.mark.parametrize(("members", "words"), [
    ([support.Member(".mtree/", type="dir"), support.Member(".mtree/x", b"/set type=dir\n")],
     ".mtree is a directory, not a regular file"),
    ([support.Member(".mtree", type="symlink", target="index.html")], ".mtree is a symlink"),
    ([support.Member(".mtree", b"# padding\n" * 120_000)], ".mtree is larger than 1 MiB"),
    ([support.Member(".mtree", b". type=dir\ncaf\xe9 type=file\n..\n")], ".mtree line 2: "),
    ([support.Member(".mtree", b". type=dir\nfile type=file\n# a comment\x00\n..\n")], ".mtree line 3: "),
    ([support.Member(".mtree", b". type=dir\nx type=file uname=no\x00body\n..\n")], ".mtree line 2: "),
    ([support.Member(".mtree", b". type=dir\nx type=link link=" + b"a/" * 3000 + b"\n..\n")], ".mtree line 2: "),
], ids=["directory", "symlink", "huge", "not-utf8", "nul-in-comment", "nul-in-value", "link-too-long"])
def test_a_shipped_mtree_that_is_not_a_small_text_file_is_a_one_line_error(
        app: App, members: list[support.Member], words: str) -> None:
    app.serve("d1", None, *members)
    app.want("d1")

    refused(app, "d1", words)

    assert not os.path.lexists(app.data)


def _tamper_mtree(app: App, how: str) -> None:
    spec = app.path / "d1" / ".mtree"
    spec.unlink()
    if how == "fifo":
        os.mkfifo(spec)
    elif how == "directory":
        spec.mkdir()
    elif how == "symlink":
        spec.symlink_to(victim(app.node))
    elif how == "huge-sparse":
        with spec.open("wb") as handle:
            handle.truncate(10 * 1024 ** 3)
    elif how == "not-utf8":
        spec.write_bytes(b". type=dir\nlog\xff type=file\n..\n")


RELINK = """\
import sys
from controller import errors
from controller.manifests import loading
from controller.tree import drift, owners
app = loading.load([sys.argv[1]], secure=True).applications["acme"]
try:
    drift.relink(app, "d1", owners.resolve(app))
except errors.TetherError as exc:
    print(f"refused: {exc}")
    sys.exit(3)
"""


@pytest.mark.parametrize(("how", "words"), [
    ("fifo", ".mtree is a FIFO, not a regular file"),
    ("directory", ".mtree is a directory, not a regular file"),
    ("symlink", ".mtree is a symlink"),
    ("huge-sparse", ".mtree is larger than 1 MiB"),
    ("not-utf8", ".mtree line 2: "),
])
def test_an_mtree_the_application_replaced_in_the_active_deployment_is_a_clear_error_never_a_hang(
        app: App, how: str, words: str) -> None:
    """The daemon's repair of link drift re-reads the active deployment's .mtree, which its user can replace."""
    spec = "/set mode=0755\n. type=dir\nlog type=file\n..\n"
    app.deploy("d1", spec, support.Member("log", b"shipped\n"))
    (app.path / "d1" / "log").unlink()
    _tamper_mtree(app, how)

    try:
        run = subprocess.run([sys.executable, "-c", RELINK, str(app.node.manifests)], capture_output=True, text=True,
                             timeout=30, cwd=app.node.root)
    except subprocess.TimeoutExpired:
        pytest.fail("tether hung on the .mtree")

    output = run.stdout + run.stderr
    assert run.returncode == 3 and "Traceback" not in output, output
    assert words in output, output
    assert app.current() == "d1"
