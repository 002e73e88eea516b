"""Ownership of extracted files, the per-application lock, and the download deadline."""

from __future__ import annotations

import io
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from controller import errors
from controller.artifacts import fetching
from controller.manifests import loading, model
from controller.tree import locking, owners
from tests import support


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_as_root_every_extracted_file_belongs_to_the_manifest_user(node: support.Node, http: support.HttpServer) -> None:
    nobody = pwd.getpwnam("nobody")
    app = node.apps / "site"
    url = http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application(
        "site", app, deployment="v1", user="nobody", group="nogroup", source={"url": url}))

    assert node.tether("reconcile").returncode == 0

    deployment = app / "v1"
    paths = [deployment, *deployment.rglob("*")]
    assert len(paths) == 5
    for path in paths:
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), path


def test_without_root_another_owner_is_refused_with_advice(tmp_path: Path) -> None:
    manifest = support.write_manifest(tmp_path, support.application("site", "/srv/site", user="root"))
    app = loading.parse(str(manifest), manifest.read_text())
    assert not isinstance(app, model.Kind)
    with pytest.raises(errors.PermanentError, match=r"leave spec\.user and spec\.group unset"):
        owners.resolve(app, euid=12345)


def test_a_reconcile_waits_for_the_lock_that_another_process_holds(node: support.Node, http: support.HttpServer) -> None:
    app = node.apps / "site"
    url = http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))
    support.write_manifest(node.manifests, support.application("site", app, deployment="v1", source={"url": url}))
    command = [sys.executable, "-m", "controller", "reconcile", "-v", "--manifests", str(node.manifests),
               "--state-dir", str(node.state)]
    with locking.application_lock(str(node.state), "site"):
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        assert process.stderr is not None
        for line in process.stderr:
            if "waiting for it to finish" in line:
                break
        assert not os.path.lexists(app / "current"), "the second process did not wait for the lock"
    assert process.wait(timeout=60) == 0
    assert os.readlink(app / "current") == str(app / "v1")


def test_a_download_that_outlives_its_deadline_is_abandoned() -> None:
    now = [0.0]
    body = io.BytesIO(b"x" * 10)
    download = fetching.Download(body, "http://example.invalid/a", max_bytes=100, deadline=5.0, clock=lambda: now[0])
    assert download.read(4) == b"xxxx"
    now[0] = 6.0
    with pytest.raises(errors.FetchError, match="longer than its deadline"):
        download.read(4)


def test_an_artifact_larger_than_max_bytes_is_refused() -> None:
    download = fetching.Download(io.BytesIO(b"x" * 10), "http://example.invalid/a?token=s3cret", max_bytes=5,
                                 deadline=10.0, clock=lambda: 0.0)
    with pytest.raises(errors.FetchRefused, match="larger than 5 bytes") as raised:
        download.read()
    assert "s3cret" not in str(raised.value)


def test_yaml_errors_and_schema_errors_name_the_line(tmp_path: Path) -> None:
    text = "apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: site\nspec:\n  path: /srv/site\n  retention:\n    keep: lots\n"
    with pytest.raises(errors.ManifestError) as raised:
        loading.parse("site.yaml", text)
    assert raised.value.line == 8 and raised.value.pointer == "/spec/retention/keep"
    assert str(raised.value).startswith("site.yaml:8: expected a value of type integer")
    with pytest.raises(errors.ManifestError) as raised:
        loading.parse("bad.yaml", "a: 1\nb: [\n")
    assert raised.value.line == 2 and "not valid YAML" in str(raised.value)  # where the [ is, not past the end


def test_defaults_come_from_the_schema(tmp_path: Path) -> None:
    app = loading.parse("site.yaml", "apiVersion: tether/v1\nkind: Application\nmetadata: {name: site}\n"
                        "spec: {path: /srv/site, source: {url: 'https://x.invalid/{deployment}.tgz'}}\n")
    assert isinstance(app, model.Application)
    assert (app.keep, app.environment, app.hook_timeout_seconds, app.application) == (5, "production", 600.0, "site")
    assert app.source is not None and app.source.limits.max_members == 100_000 and app.source.strip_components is None


def test_a_key_given_twice_is_refused_instead_of_silently_keeping_the_last(tmp_path: Path) -> None:
    text = "apiVersion: tether/v1\nkind: Application\nmetadata: {name: site}\nspec:\n  path: /srv/a\n  path: /srv/b\n"
    with pytest.raises(errors.ManifestError) as raised:
        loading.parse("site.yaml", text)
    assert raised.value.line == 6 and "'path' appears twice" in str(raised.value)
