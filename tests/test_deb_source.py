"""Debian packages as sources (issue 13 item 8): `source.format: deb`, detection by magic, `source.debRoot`.

Good packages are built by `dpkg-deb` in the test, with each compression it
offers, and deployed through the real `tether reconcile` from a file and from
a loopback HTTP server. Hostile packages are built byte by byte here; each is
refused with a clear error (exit 1, the reason on the command line and in the
status file) and leaves the application as it was.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import lzma
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import zstandard
from hypothesis import strategies as st

from controller import errors
from controller.artifacts import archives, extracting
from controller.manifests import model
from tests import support

NAME = "acme"
MAGIC = b"!<arch>\n"
CONTROL = b"Package: acme\nVersion: 1\nArchitecture: all\nMaintainer: Acme <ops@acme.example>\nDescription: acme\n"
Snapshot = dict[str, tuple[str, str]]


# ---------------------------------------------------------------- building packages


def dpkg_deb(tmp_path: Path, compression: str, version: str = "1", marker: Path | None = None) -> bytes:
    """A package built by dpkg-deb: /opt/acme (a site), /usr/share/doc/acme, and a postinst that leaves `marker`."""
    root = Path(tempfile.mkdtemp(dir=tmp_path, prefix="pkg-"))
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_bytes(CONTROL.replace(b"Version: 1", f"Version: {version}".encode()))
    postinst = root / "DEBIAN" / "postinst"
    postinst.write_text(f"#!/bin/sh\ntouch {marker or tmp_path / 'postinst-ran'}\n")
    postinst.chmod(0o755)
    acme = root / "opt" / "acme"
    (acme / "bin").mkdir(parents=True)
    (acme / "index.html").write_text(f"<h1>version {version}</h1>\n")
    (acme / "bin" / "run").write_text("#!/bin/sh\necho run\n")
    (acme / "bin" / "run").chmod(0o755)
    (acme / "home.html").symlink_to("index.html")
    os.link(acme / "index.html", acme / "same.html")
    (root / "usr" / "share" / "doc" / "acme").mkdir(parents=True)
    (root / "usr" / "share" / "doc" / "acme" / "copyright").write_text("Acme\n")
    out = tmp_path / f"acme-{version}-{compression}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(out)],
                   check=True, capture_output=True)
    return out.read_bytes()


def header(name: bytes | str, size: int | bytes, *, terminator: bytes = b"`\n", mode: bytes = b"100644") -> bytes:
    """One 60-byte ar member header; `size` may be raw bytes for the field (a hostile value)."""
    raw_name = name.encode() if isinstance(name, str) else name
    raw_size = size if isinstance(size, bytes) else str(size).encode()
    return (raw_name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + mode.ljust(8) + raw_size.ljust(10)
            + terminator)


def member(name: str, data: bytes) -> bytes:
    return header(name, len(data)) + data + (b"\n" if len(data) % 2 else b"")


def control_tar() -> bytes:
    return support.tar_bytes([support.Member("./", type="dir"), support.Member("./control", CONTROL),
                              support.Member("./postinst", b"#!/bin/sh\nrm -rf /\n", mode=0o755)])


def data_tar(members: Sequence[support.Member] | None = None, compression: str = "gz") -> bytes:
    """A data.tar (compression: '', gz, xz or zst) of `members`, by default a small valid /opt/acme."""
    members = members if members is not None else [
        support.Member("./", type="dir"), support.Member("./opt/", type="dir"),
        support.Member("./opt/acme/", type="dir"), support.Member("./opt/acme/index.html", b"<h1>hand-built</h1>\n")]
    if compression == "zst":
        return zstandard.ZstdCompressor().compress(support.tar_bytes(members, ""))
    return support.tar_bytes(members, compression)


def package(*members: bytes, magic: bytes = MAGIC) -> bytes:
    return magic + b"".join(members)


def good(data: bytes | None = None, name: str = "data.tar.gz") -> list[bytes]:
    """The members of a valid hand-built package."""
    return [member("debian-binary", b"2.0\n"), member("control.tar.gz", control_tar()),
            member(name, data if data is not None else data_tar())]


# ---------------------------------------------------------------- a node with v1 deployed


def _outside(node: support.Node, app: Path) -> Snapshot:
    excluded = [os.path.relpath(app, node.root), os.path.relpath(node.state, node.root), "pkg"]
    return {path: what for path, what in support.snapshot(node.root).items()
            if not any(path == e or path.startswith(e + "/") for e in excluded)}


@dataclasses.dataclass
class Scene:
    node: support.Node
    http: support.HttpServer
    packages: Path
    app: Path
    before: Snapshot = dataclasses.field(default_factory=dict)
    outside: Snapshot = dataclasses.field(default_factory=dict)

    def want(self, data: bytes, deployment: str = "v2", via: str = "file", **source: Any) -> None:
        (self.packages / f"{deployment}.deb").write_bytes(data)
        url = (self.http.serve(f"/{deployment}.deb", data) if via == "http"
               else f"file://{self.packages}/{{deployment}}.deb")
        support.write_manifest(self.node.manifests, support.application(
            NAME, self.app, deployment=deployment, source={"url": url, **source}))
        self.outside = _outside(self.node, self.app)

    def reconcile(self, data: bytes, deployment: str = "v2", via: str = "file",
                  **source: Any) -> subprocess.CompletedProcess[str]:
        self.want(data, deployment, via, **source)
        return self.node.tether("reconcile", "-v", env={"TMPDIR": str(self.node.root / "tmp")})

    def assert_refused(self, run: subprocess.CompletedProcess[str], *words: str) -> None:
        assert run.returncode == 1, run.stdout + run.stderr
        assert "Traceback" not in run.stderr, run.stderr
        error = json.loads((self.node.state / "status" / f"{NAME}.json").read_text())["lastError"]
        for word in words:
            assert word.lower() in (run.stdout + run.stderr).lower(), (word, run.stdout + run.stderr)
            assert word.lower() in error.lower(), (word, error)
        assert os.readlink(self.app / "current") == str(self.app / "v1")
        assert support.snapshot(self.app) == self.before
        assert os.listdir(self.app / ".tether" / "staging") == []
        assert sorted(os.listdir(self.node.state / "cache" / NAME)) == ["v1.artifact"]
        assert _outside(self.node, self.app) == self.outside

    def deployed(self, deployment: str = "v2") -> Path:
        assert os.readlink(self.app / "current") == str(self.app / deployment)
        record = json.loads((self.app / ".tether" / "deployments" / f"{deployment}.json").read_text())
        assert record["state"] == "complete"
        return self.app / deployment


@pytest.fixture
def scene(node: support.Node, http: support.HttpServer, tmp_path: Path) -> Scene:
    (node.root / "tmp").mkdir(mode=0o755)
    packages = node.root / "pkg"
    packages.mkdir(mode=0o755)
    result = Scene(node, http, packages, node.apps / NAME)
    run = result.reconcile(dpkg_deb(tmp_path, "gzip"), "v1", debRoot="opt/acme")
    assert run.returncode == 0, run.stderr
    result.deployed("v1")
    result.before = support.snapshot(result.app)
    return result


# ---------------------------------------------------------------- packages dpkg-deb builds


@pytest.mark.parametrize("via", ["file", "http"])
@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "none"])
def test_a_package_built_by_dpkg_deb_deploys_its_data_files_without_running_maintainer_scripts(
        scene: Scene, tmp_path: Path, compression: str, via: str) -> None:
    marker = tmp_path / f"postinst-{compression}-{via}"

    run = scene.reconcile(dpkg_deb(tmp_path, compression, "2", marker), via=via)

    assert run.returncode == 0, run.stderr
    tree = scene.deployed()
    assert (tree / "opt" / "acme" / "index.html").read_text() == "<h1>version 2</h1>\n"
    assert os.access(tree / "opt" / "acme" / "bin" / "run", os.X_OK)
    assert os.readlink(tree / "opt" / "acme" / "home.html") == "index.html"
    assert os.path.samefile(tree / "opt" / "acme" / "same.html", tree / "opt" / "acme" / "index.html")
    assert (tree / "usr" / "share" / "doc" / "acme" / "copyright").read_text() == "Acme\n"
    assert not (tree / "DEBIAN").exists() and not (tree / "control").exists() and not (tree / "postinst").exists()
    assert not marker.exists(), "a maintainer script ran"
    skipped = [line for line in run.stderr.splitlines() if "maintainer scripts" in line]
    assert len(skipped) == 1 and " INFO " in skipped[0], run.stderr


def test_debroot_makes_that_subtree_of_the_package_the_deployment(scene: Scene, tmp_path: Path) -> None:
    run = scene.reconcile(dpkg_deb(tmp_path, "xz", "2"), debRoot="./opt/acme/")

    assert run.returncode == 0, run.stderr
    tree = scene.deployed()
    assert sorted(os.listdir(tree)) == ["bin", "home.html", "index.html", "same.html"]
    assert (tree / "index.html").read_text() == "<h1>version 2</h1>\n"
    assert os.path.samefile(tree / "same.html", tree / "index.html")
    assert os.readlink(tree / "home.html") == "index.html"


def test_format_deb_given_explicitly_deploys_and_format_auto_knows_a_package_by_its_magic(
        scene: Scene, tmp_path: Path) -> None:
    assert archives.detect(dpkg_deb(tmp_path, "none")[:512]) == "deb"

    run = scene.reconcile(dpkg_deb(tmp_path, "zstd", "2"), format="deb", debRoot="opt")

    assert run.returncode == 0, run.stderr
    assert (scene.deployed() / "acme" / "index.html").read_text() == "<h1>version 2</h1>\n"


def test_a_package_with_a_signature_member_after_the_data_deploys(scene: Scene) -> None:
    run = scene.reconcile(package(*good(), member("_gpgorigin", b"-----BEGIN PGP SIGNATURE-----\n")))

    assert run.returncode == 0, run.stderr
    assert (scene.deployed() / "opt" / "acme" / "index.html").read_text() == "<h1>hand-built</h1>\n"


def test_tether_repair_restores_a_package_deployment_below_debroot_from_the_cached_package(scene: Scene) -> None:
    index = scene.app / "v1" / "index.html"
    index.write_text("defaced")
    (scene.app / "v1" / "added.php").write_text("<?php")

    run = scene.node.tether("repair", NAME)

    assert run.returncode == 0, run.stdout + run.stderr
    assert support.snapshot(scene.app) == scene.before


# ---------------------------------------------------------------- what the manifest may say


@pytest.mark.parametrize(("deb_root", "words"), [
    ("/opt/acme", ("debRoot", "absolute")),
    ("opt/../etc", ("debRoot", "..")),
    ("../acme", ("debRoot", "..")),
    (".", ("debRoot", "no directory")),
])
def test_a_debroot_that_is_absolute_or_climbs_out_is_refused_before_anything_is_fetched(
        scene: Scene, deb_root: str, words: tuple[str, ...]) -> None:
    support.write_manifest(scene.node.manifests, support.application(
        NAME, scene.app, deployment="v2", source={"url": scene.http.serve("/v2.deb", b""), "debRoot": deb_root}))

    run = scene.node.tether("validate", str(scene.node.manifests))
    reconcile = scene.node.tether("reconcile")

    assert run.returncode != 0 and reconcile.returncode != 0
    for word in words:
        assert word in run.stdout + run.stderr, run.stdout + run.stderr
    assert scene.http.requests == []
    assert support.snapshot(scene.app) == scene.before


@pytest.mark.parametrize(("deb_root", "words"), [
    ("srv/acme", ("data.tar.gz", "nothing below source.debRoot", "srv/acme")),
    ("opt/acme/index.html", ("debRoot", "not a directory")),
])
def test_a_debroot_the_package_does_not_have_as_a_directory_is_a_clear_error(
        scene: Scene, tmp_path: Path, deb_root: str, words: tuple[str, ...]) -> None:
    run = scene.reconcile(dpkg_deb(tmp_path, "gzip", "2"), debRoot=deb_root)

    scene.assert_refused(run, *words)


def test_a_hardlink_from_inside_debroot_to_a_file_outside_it_is_refused(scene: Scene) -> None:
    data = data_tar([support.Member("./opt/secret", b"s"), support.Member("./opt/acme/", type="dir"),
                     support.Member("./opt/acme/x", type="hardlink", target="./opt/secret")])

    run = scene.reconcile(package(*good(data)), debRoot="opt/acme")

    scene.assert_refused(run, "hardlink", "outside source.debRoot")


def test_debroot_with_an_artifact_that_is_not_a_package_is_refused(scene: Scene) -> None:
    run = scene.reconcile(support.tar_bytes(support.site("2")), debRoot="opt/acme")

    scene.assert_refused(run, "debRoot", "not a Debian package")


@pytest.mark.parametrize(("fmt", "artifact", "words"), [
    ("deb", support.tar_bytes(support.site("2")), ("format says deb", "tar.gz")),
    ("tar.gz", b"", ("format says tar.gz", "deb")),
])
def test_a_format_that_does_not_match_the_artifact_is_refused(
        scene: Scene, fmt: str, artifact: bytes, words: tuple[str, ...]) -> None:
    run = scene.reconcile(artifact or package(*good()), format=fmt)

    scene.assert_refused(run, *words)


# ---------------------------------------------------------------- hostile packages


HOSTILE: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "bad ar magic": (package(*good(), magic=b"!<arch>\r"), ("not an archive",)),
    "no members at all": (package(), ("no members",)),
    "a first member that is not debian-binary": (package(*good()[1:]), ("first member", "debian-binary")),
    "format version 3": (package(member("debian-binary", b"3.0\n"), *good()[1:]), ("format version", "2.x")),
    "a debian-binary member of a megabyte": (package(member("debian-binary", b"2.0\n" + b" " * 2**20), *good()[1:]),
                                             ("debian-binary", "claims")),
    "a non-decimal size": (package(member("debian-binary", b"2.0\n"), header("control.tar.gz", b"0x10") + b"x" * 16),
                           ("not a valid ar header", "decimal")),
    "a negative size": (package(member("debian-binary", b"2.0\n"), header("control.tar.gz", b"-1")),
                        ("not a valid ar header", "decimal")),
    "a size with a digit after a space": (package(member("debian-binary", b"2.0\n"), header("control.tar.gz", b"1 2")),
                                          ("not a valid ar header",)),
    "a bad header terminator": (package(member("debian-binary", b"2.0\n"),
                                        header("control.tar.gz", 2, terminator=b"\n`") + b"xx"), ("terminator",)),
    "a non-octal mode": (package(member("debian-binary", b"2.0\n"), header("control.tar.gz", 2, mode=b"100968") + b"xx"),
                         ("octal",)),
    "a name with a control character": (package(member("debian-binary", b"2.0\n"),
                                                header(b"control\x01tar", 2) + b"xx"), ("printable",)),
    "a size past the end": (package(*good()[:2], header("data.tar.gz", 10**6) + data_tar()), ("ends inside",)),
    "a huge size in a header": (package(*good()[:2], header("data.tar.gz", 9_999_999_999) + data_tar()),
                                ("claims 9999999999 bytes", "limits.maxBytes")),
    "a missing padding byte": (package(member("debian-binary", b"2.0\n"), header("control.tar.gz", 3) + b"abc",
                                       *good()[2:]), ("padding",)),
    "trailing garbage": (package(*good(), b"garbage"), ("trailing garbage",)),
    "trailing garbage of a header's length": (package(*good(), b"g" * 60), ("not a valid ar header",)),
    "two data members": (package(*good(), member("data.tar.xz", data_tar(compression="xz"))),
                         ("second data member", "data.tar.gz", "data.tar.xz")),
    "two data members of one name": (package(*good(), good()[2]), ("second data member",)),
    "no data member": (package(*good()[:2]), ("no data member",)),
    "a data member before the control member": (package(good()[0], good()[2], good()[1]),
                                                ("before any control member",)),
    "a control member after the data": (package(*good(), member("control.tar.xz", control_tar())),
                                        ("control member after the data",)),
    "an unknown member before the data": (package(*good()[:2], member("extra", b"x"), good()[2]),
                                          ("unexpected member", "extra")),
    "an unknown member after the data": (package(*good(), member("extra", b"x")), ("unexpected member", "extra")),
    "a GNU long-name table as the first member": (package(member("//", b"data.tar.gz/\n"), *good()),
                                                  ("first member is '//'", "debian-binary")),
    "a GNU symbol table before the data": (package(*good()[:2], member("/", b"\0\0\0\0"), good()[2]),
                                           ("unexpected member '/'",)),
    "a BSD long name before the data": (package(*good()[:2], member("#1/12", b"data.tar.gz\n" + good()[2][60:])),
                                        ("unexpected member '#1/12'",)),
    "a data member of an unsupported compression": (package(*good()[:2], member("data.tar.lzma", b"x")),
                                                    ("data.tar.lzma",)),
    "a data member that is gzip of garbage": (package(*good(gzip.compress(b"not a tar" * 100))),
                                              ("in the package's data.tar.gz", "not a valid tar")),
    "a corrupt gzip data member": (package(*good(b"\x1f\x8b\x08\x00" + b"\xff" * 200)), ("data.tar.gz",)),
    "a gzip data member with a bad checksum": (package(*good(data_tar()[:-8] + b"\x00\x00\x00\x00" + data_tar()[-4:])),
                                               ("in the package's data.tar.gz",)),
    "a data member that is not an archive": (package(*good(b"just text\n" * 60, "data.tar")),
                                             ("data.tar", "not an archive")),
    "a data member whose compression is not the one its name says": (
        package(*good(lzma.compress(b"x" * 100), "data.tar.gz")), ("tar.xz, not the tar.gz",)),
    "a zstd data member of garbage": (package(*good(zstandard.ZstdCompressor().compress(b"garbage" * 100),
                                                    "data.tar.zst")), ("not a valid tar",)),
    "a data.tar with a ../ member": (package(*good(data_tar([support.Member("./opt/acme/../../../evil", b"x")]))),
                                     ("in the package's data.tar.gz", "..", "escape")),
    "a data.tar with an absolute member": (package(*good(data_tar([support.Member("/etc/evil", b"x")]))),
                                           ("/etc/evil", "absolute")),
    "a data.tar with a symlink out of the tree": (
        package(*good(data_tar([support.Member("./opt/", type="dir"),
                                support.Member("./opt/out", type="symlink", target="../../etc")]))), ("outside",)),
    "a data.tar with a device": (package(*good(data_tar([support.Member("./dev-null", type="chr")]))), ("device",)),
    "a data.tar with a setuid file": (package(*good(data_tar([support.Member("./su", b"x", mode=0o4755)]))),
                                      ("setuid",)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_package_is_refused_with_a_clear_error_and_the_tree_left_as_it_was(scene: Scene, case: str) -> None:
    data, words = HOSTILE[case]

    run = scene.reconcile(data)

    scene.assert_refused(run, *words)


def test_a_hostile_package_over_http_is_refused_the_same_way(scene: Scene) -> None:
    run = scene.reconcile(package(*good(), member("data.tar.xz", data_tar(compression="xz"))), via="http")

    scene.assert_refused(run, "second data member")


def test_a_member_larger_than_limits_maxbytes_is_refused_unread(scene: Scene) -> None:
    run = scene.reconcile(package(*good()[:2], member("_padding", b"x" * 200_000), good()[2]),
                          limits={"maxBytes": 100_000})

    scene.assert_refused(run, "_padding", "claims 200000 bytes", "limits.maxBytes")


def test_a_debroot_does_not_hide_hostile_members_elsewhere_in_the_package(scene: Scene) -> None:
    data = data_tar([support.Member("./opt/acme/", type="dir"), support.Member("./opt/acme/index.html", b"ok"),
                     support.Member("./usr/../../etc/evil", b"x")])

    run = scene.reconcile(package(*good(data)), debRoot="opt/acme")

    scene.assert_refused(run, "..", "escape")


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(compression=st.sampled_from(["", "gz", "xz", "zst"]), data=st.data())
def test_random_damage_to_a_valid_package_is_extracted_or_refused_as_an_archive_error_never_anything_else(
        tmp_path: Path, compression: str, data: st.DataObject) -> None:
    name = "data.tar" + (f".{compression}" if compression else "")
    valid = package(*good(data_tar(compression=compression), name), member("_gpgorigin", b"sig"))
    damaged = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(damaged) - 1))
        damaged[index] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        damaged = damaged[: data.draw(st.integers(1, len(damaged)))]
    dest = Path(tempfile.mkdtemp(dir=tmp_path))

    try:
        extracting.extract(io.BytesIO(bytes(damaged)), str(dest), fmt="deb", strip=None, owner=None,
                           budget=archives.Budget(model.Limits(), lambda: len(damaged)), spool_dir=str(tmp_path),
                           deb_root=data.draw(st.sampled_from([None, "opt/acme"])))
    except errors.TetherError as exc:
        assert "\n" not in str(exc)


# ---------------------------------------------------------------- the examples


def test_the_example_manifests_of_other_sources_are_valid(node: support.Node) -> None:
    examples = support.REPO / "examples" / "sources"
    files = sorted(examples.glob("*.yaml"))
    assert [f.name for f in files] == ["debian-package.yaml", "git-tag.yaml"]
    for file in files:
        run = node.tether("validate", str(file))
        assert run.returncode == 0, (file.name, run.stdout + run.stderr)
