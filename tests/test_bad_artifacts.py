"""Bad artifacts and bad downloads are refused and leave the node as it was; odd but valid ones deploy.

Every refusal test first deploys a good v1 through the real command line,
then asks for v2 from a bad artifact and checks the exit code, the message
(on the command line and in the status file), and that nothing changed: the
application tree is identical, the artifact cache holds no partial file, and
nothing appeared outside the application path and the state dir.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import random
import ssl
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http import server as http_server
from pathlib import Path
from typing import Any

import pytest
import zstandard

from controller.artifacts import fetching
from controller.engine import reconciling
from controller.manifests import loading
from tests import support

NAME = "site"
Snapshot = dict[str, tuple[str, str]]


# ---------------------------------------------------------------- helpers


def _outside(node: support.Node, app: Path) -> Snapshot:
    """Everything below the sandbox root except the application path and the state dir."""
    excluded = [os.path.relpath(app, node.root), os.path.relpath(node.state, node.root)]
    return {path: what for path, what in support.snapshot(node.root).items()
            if not any(path == e or path.startswith(e + "/") for e in excluded)}


@dataclasses.dataclass
class Deployed:
    """A node where v1 deployed fine; `attempt` asks for v2 and `assert_*` compare with before."""

    node: support.Node
    http: support.HttpServer
    app: Path
    before: Snapshot = dataclasses.field(default_factory=dict)
    outside: Snapshot = dataclasses.field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        # Temporary files the controller might make elsewhere land in the sandbox, where they are seen.
        return {"TMPDIR": str(self.node.root / "tmp")}

    def want(self, source: dict[str, Any], deployment: str = "v2", **spec: Any) -> None:
        support.write_manifest(self.node.manifests, support.application(
            NAME, self.app, deployment=deployment, source=source, **spec))
        self.outside = _outside(self.node, self.app)

    def attempt(self, source: dict[str, Any], **spec: Any) -> subprocess.CompletedProcess[str]:
        """Ask for v2 from `source` and run the real `tether reconcile`."""
        self.want(source, **spec)
        return self.node.tether("reconcile", env=self.env)

    def attempt_in_process(self, source: dict[str, Any], fetcher: fetching.Fetcher) -> reconciling.Result:
        """Ask for v2 and reconcile in this process, with `fetcher` (to record back-off sleeps)."""
        self.want(source)
        app = loading.load([str(self.node.manifests)]).applications[NAME]
        return reconciling.Engine(str(self.node.state), fetcher=fetcher).reconcile(app)

    def requests_for(self, path: str) -> list[dict[str, str]]:
        return [headers for requested, headers in self.http.requests if requested.split("?")[0] == path]

    def assert_unchanged(self) -> None:
        assert os.readlink(self.app / "current") == str(self.app / "v1")
        assert support.snapshot(self.app) == self.before
        assert os.listdir(self.app / ".tether" / "staging") == []
        assert sorted(os.listdir(self.node.state / "cache" / NAME)) == ["v1.artifact"]
        assert _outside(self.node, self.app) == self.outside

    def assert_refused(self, run: subprocess.CompletedProcess[str], *words: str) -> None:
        """The command failed (exit 1) naming `words`, in its output and in status; nothing changed."""
        assert run.returncode == 1, run.stdout + run.stderr
        output = (run.stdout + run.stderr).lower()
        status = json.loads((self.node.state / "status" / f"{NAME}.json").read_text())
        error = status["lastError"]
        assert error, status
        for word in words:
            assert word.lower() in output, (word, run.stdout + run.stderr)
            assert word.lower() in error.lower(), (word, error)
        assert "Traceback" not in run.stderr, run.stderr
        self.assert_unchanged()

    def assert_deployed(self, deployment: str = "v2") -> Path:
        assert os.readlink(self.app / "current") == str(self.app / deployment)
        record = json.loads((self.app / ".tether" / "deployments" / f"{deployment}.json").read_text())
        assert record["state"] == "complete"
        return self.app / deployment


@pytest.fixture
def deployed(node: support.Node, http: support.HttpServer) -> Deployed:
    (node.root / "tmp").mkdir(mode=0o755)
    app = node.apps / NAME
    support.write_manifest(node.manifests, support.application(
        NAME, app, deployment="v1", source={"url": http.serve("/v1.tar.gz", support.tar_bytes(support.site("1")))}))
    scene = Deployed(node, http, app)
    run = node.tether("reconcile", env=scene.env)
    assert run.returncode == 0, run.stderr
    assert os.readlink(app / "current") == str(app / "v1")
    scene.before = support.snapshot(app)
    return scene


def _serve(scene: Deployed, *replies: bytes | support.Reply, path: str = "/v2.tar.gz") -> str:
    return scene.http.serve(path, *replies)


def _with(*members: support.Member) -> list[support.Member]:
    """The valid v2 site followed by `members`."""
    return [*support.site("2"), *members]


def _noise(size: int) -> bytes:
    """Incompressible bytes, the same on every run."""
    return random.Random(size).randbytes(size)


def _zeros_tar_gz(path: Path, size: int) -> bytes:
    """A tar.gz of one file of `size` zero bytes, compressed at level 9 by streaming (memory stays small)."""
    with open("/dev/zero", "rb") as zeros, tarfile.open(path, "w:gz", compresslevel=9) as tar:
        info = tarfile.TarInfo("site/zeros.bin")
        info.size, info.mode, info.mtime = size, 0o644, 1_700_000_000
        tar.addfile(info, zeros)
    return path.read_bytes()


def _no_sleep(seconds: float) -> None:
    pass


# ---------------------------------------------------------------- unsafe tar members


def test_a_tar_member_with_dotdot_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(support.Member("site/../../evil", b"x"))))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/../../evil", "..", "escape")


def test_a_tar_member_with_an_absolute_name_is_refused(deployed: Deployed) -> None:
    target = deployed.node.root / "evil"
    url = _serve(deployed, support.tar_bytes(_with(support.Member(str(target), b"x"))))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, str(target), "absolute")
    assert not target.exists()


def test_a_symlink_with_an_absolute_target_is_refused(deployed: Deployed) -> None:
    outside = deployed.node.root / "outside"
    url = _serve(deployed, support.tar_bytes(_with(support.Member("site/evil", type="symlink", target=str(outside)))))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/evil", "absolute")


def test_a_symlink_with_a_relative_target_outside_the_tree_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(support.Member("site/evil", type="symlink", target="../../x"))))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/evil", "outside")


def test_a_chain_of_symlinks_that_escapes_only_when_resolved_is_refused(deployed: Deployed) -> None:
    # Lexically site/a/b/s/../../.. is site; really s is site/c, so it is site/c/../../.., above the tree.
    url = _serve(deployed, support.tar_bytes(_with(
        support.Member("site/a/", type="dir"),
        support.Member("site/a/b/", type="dir"),
        support.Member("site/c/", type="dir"),
        support.Member("site/a/b/s", type="symlink", target="../../c"),
        support.Member("site/a/b/e", type="symlink", target="s/../../.."),
    )))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/a/b/e", "outside")


def test_a_symlink_that_leaves_the_tree_only_once_the_top_directory_is_stripped_is_refused(deployed: Deployed) -> None:
    # In staging, v1/old -> ../v1/index.html stays inside the archive's single top directory v1/; once that
    # directory is stripped (stripComponents: auto), the link would point at <path>/v1/index.html, another deployment.
    url = _serve(deployed, support.tar_bytes([
        *support.site("2", top="v1"),
        support.Member("v1/old", type="symlink", target="../v1/index.html"),
    ]))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "v1/old", "outside the deployment")


def test_a_hardlink_to_a_target_outside_the_tree_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(support.Member("site/hard", type="hardlink", target="../x"))))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/hard", "hardlink", "../x")


def test_a_hardlink_to_a_name_not_earlier_in_the_archive_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(
        support.Member("site/hard", type="hardlink", target="site/later.txt"),
        support.Member("site/later.txt", b"later\n"),
    )))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/hard", "hardlink", "not an earlier file")


def test_a_member_written_through_an_earlier_symlink_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(
        support.Member("site/sub/", type="dir"),
        support.Member("site/link", type="symlink", target="sub"),
        support.Member("site/link/file", b"through the link\n"),
    )))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/link/file", "through the symlink")


def test_a_character_device_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(support.Member("site/null", type="chr"))))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/null", "device")


def test_a_fifo_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(support.Member("site/pipe", type="fifo"))))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/pipe", "fifo")


def test_a_setuid_file_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(support.Member("site/su", b"#!/bin/sh\n", mode=0o4755))))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/su", "setuid")


def test_a_setgid_file_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(support.Member("site/sg", b"#!/bin/sh\n", mode=0o2755))))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "site/sg", "setgid")


# ---------------------------------------------------------------- unsafe zip members


def test_a_zip_member_with_dotdot_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.zip_bytes(_with(support.Member("../evil", b"slip\n"))), path="/v2.zip")

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "../evil", "escape")


def test_a_zip_member_with_an_absolute_name_is_refused(deployed: Deployed) -> None:
    target = deployed.node.root / "evil"
    url = _serve(deployed, support.zip_bytes(_with(support.Member(str(target), b"x"))), path="/v2.zip")

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, str(target), "absolute")
    assert not target.exists()


# ---------------------------------------------------------------- limits


def test_an_archive_with_more_members_than_max_members_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(support.site("2")))

    run = deployed.attempt({"url": url, "limits": {"maxMembers": 3}})

    deployed.assert_refused(run, "more than 3 members", "maxMembers")


def test_an_archive_that_expands_beyond_max_bytes_is_refused(deployed: Deployed) -> None:
    bomb = _zeros_tar_gz(deployed.node.root / "bomb.tar.gz", 10 * 1024**2)
    url = _serve(deployed, bomb)

    run = deployed.attempt({"url": url, "limits": {"maxBytes": 1024**2}})

    deployed.assert_refused(run, "more than 1048576 bytes", "maxBytes")


def test_a_decompression_bomb_is_refused_by_the_default_ratio_limit(deployed: Deployed) -> None:
    bomb = _zeros_tar_gz(deployed.node.root / "bomb.tar.gz", 300 * 1024**2)
    assert len(bomb) * 100 < 256 * 1024**2  # a genuine bomb: over the default maxRatio once checked
    url = _serve(deployed, bomb)

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "maxRatio", "decompression bomb")


# ---------------------------------------------------------------- malformed artifacts


def test_a_truncated_archive_is_refused(deployed: Deployed) -> None:
    archive = support.tar_bytes(_with(support.Member("site/noise.bin", _noise(256 * 1024))))
    url = _serve(deployed, archive[: len(archive) // 2])  # Content-Length matches: HTTP itself is fine

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "truncated")


def test_a_truncated_uncompressed_tar_is_refused(deployed: Deployed) -> None:
    archive = support.tar_bytes(_with(support.Member("site/noise.bin", _noise(256 * 1024))), "")
    url = _serve(deployed, archive[: len(archive) // 2], path="/v2.tar")

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "truncated")


def test_a_tar_cut_at_a_member_boundary_is_refused(deployed: Deployed) -> None:
    # No compressor checksum can tell: only the missing end-of-archive blocks show the members that are gone.
    archive = support.tar_bytes(_with(support.Member("site/later.html", b"never arrives\n")), "")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        cut = tar.getmember("site/later.html").offset
    url = _serve(deployed, archive[:cut], path="/v2.tar")

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "truncated")


def test_a_tar_with_a_damaged_member_header_is_refused(deployed: Deployed) -> None:
    # The gzip layer is intact; inside it, the header of the last member fails its checksum.
    tar = bytearray(support.tar_bytes(_with(support.Member("site/later.html", b"never arrives\n")), ""))
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        header = archive.getmember("site/later.html").offset
    tar[header : header + 4] = b"XXXX"
    url = _serve(deployed, gzip.compress(bytes(tar)))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "not a valid tar file", "checksum")


def test_a_truncated_tar_zst_is_refused(deployed: Deployed) -> None:
    # zstd's stream reader ends quietly at the last whole block: the tar layer must notice what is missing.
    tar = support.tar_bytes(_with(*(support.Member(f"site/page{i}.html", _noise(700 + i)) for i in range(400))), "")
    archive = zstandard.ZstdCompressor().compress(tar)
    url = _serve(deployed, archive[: len(archive) // 2], path="/v2.tar.zst")

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "truncated")


def test_garbage_that_is_not_an_archive_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, b"<html><body>Welcome! Please log in.</body></html>\n" * 40)

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "not an archive")


def test_an_artifact_with_another_sha256_is_refused(deployed: Deployed) -> None:
    archive = support.tar_bytes(support.site("2"))
    url = _serve(deployed, archive)
    other = support.sha256(b"another file")

    run = deployed.attempt({"url": url, "sha256": other})

    deployed.assert_refused(run, "sha256", support.sha256(archive), other)
    assert not (deployed.app / "v2").exists()


def test_a_format_that_does_not_match_the_artifact_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(support.site("2")))

    run = deployed.attempt({"url": url, "format": "zip"})

    deployed.assert_refused(run, "source.format", "zip", "tar.gz")


# ---------------------------------------------------------------- HTTP


def test_http_404_is_refused_without_a_retry(deployed: Deployed) -> None:
    url = _serve(deployed, support.Reply(404, b"no such package"))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "404", "/v2.tar.gz")
    assert len(deployed.requests_for("/v2.tar.gz")) == 1


def test_http_500_is_retried_with_back_off_until_it_succeeds(deployed: Deployed) -> None:
    archive = support.tar_bytes(support.site("2"))
    url = _serve(deployed, support.Reply(500, b"oops"), support.Reply(500, b"oops"), support.Reply(body=archive))
    sleeps: list[float] = []

    result = deployed.attempt_in_process({"url": url}, fetching.Fetcher(sleep=sleeps.append))

    assert result.ok, result.error
    assert (deployed.assert_deployed() / "index.html").read_text() == "<h1>version 2</h1>\n"
    assert len(deployed.requests_for("/v2.tar.gz")) == 3
    assert len(sleeps) == 2 and all(s > 0 for s in sleeps), sleeps


def test_http_503_with_retry_after_waits_at_least_that_long(deployed: Deployed) -> None:
    archive = support.tar_bytes(support.site("2"))
    url = _serve(deployed, support.Reply(503, b"busy", {"Retry-After": "7"}), support.Reply(body=archive))
    sleeps: list[float] = []

    result = deployed.attempt_in_process({"url": url}, fetching.Fetcher(sleep=sleeps.append))

    assert result.ok, result.error
    deployed.assert_deployed()
    assert len(sleeps) == 1 and sleeps[0] >= 7, sleeps


def test_a_connection_reset_mid_body_fails_after_the_configured_attempts(deployed: Deployed) -> None:
    archive = support.tar_bytes(_with(support.Member("site/noise.bin", _noise(256 * 1024))))
    url = _serve(deployed, support.Reply(body=archive, cut_after=1000))

    result = deployed.attempt_in_process({"url": url}, fetching.Fetcher(attempts=3, sleep=_no_sleep))

    assert not result.ok and not result.permanent
    assert result.error is not None
    assert "broke off" in result.error and "/v2.tar.gz" in result.error, result.error
    assert len(deployed.requests_for("/v2.tar.gz")) == 3
    deployed.assert_unchanged()


def test_a_redirect_to_another_host_follows_it_without_the_secret_headers(deployed: Deployed) -> None:
    archive = support.tar_bytes(support.site("2"))
    elsewhere = deployed.http.url("/mirror/v2.tar.gz", host="localhost")
    deployed.http.serve("/mirror/v2.tar.gz", archive)
    url = _serve(deployed, support.Reply(302, b"", {"Location": elsewhere}))

    run = deployed.attempt({"url": url, "sha256": support.sha256(archive), "headers": {"JOB-TOKEN": "s3cret-t0ken"}})

    assert run.returncode == 0, run.stdout + run.stderr
    assert (deployed.assert_deployed() / "index.html").read_text() == "<h1>version 2</h1>\n"
    [first] = deployed.requests_for("/v2.tar.gz")
    [second] = deployed.requests_for("/mirror/v2.tar.gz")
    assert {k.lower(): v for k, v in first.items()}.get("job-token") == "s3cret-t0ken"
    assert "job-token" not in {k.lower() for k in second}
    assert second.get("Host", "").startswith("localhost")
    assert "s3cret-t0ken" not in run.stdout + run.stderr
    assert "s3cret-t0ken" not in (deployed.node.state / "status" / f"{NAME}.json").read_text()


class _HttpsRedirect:
    """A real HTTPS server on loopback (self-signed, made by openssl) that redirects every request."""

    def __init__(self, directory: Path, location: str) -> None:
        directory.mkdir()
        cert, key = directory / "cert.pem", directory / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http_server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                requests.append(self.path)
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.client_context = ssl.create_default_context(cafile=str(cert))
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def https_redirect(deployed: Deployed) -> Iterator[_HttpsRedirect]:
    server = _HttpsRedirect(deployed.node.root / "tls", deployed.http.url("/plain/v2.tar.gz"))
    yield server
    server.close()


def test_a_redirect_from_https_to_http_is_refused(deployed: Deployed, https_redirect: _HttpsRedirect) -> None:
    deployed.http.serve("/plain/v2.tar.gz", support.tar_bytes(support.site("2")))
    url = f"https://127.0.0.1:{https_redirect.port}/v2.tar.gz"
    fetcher = fetching.Fetcher(ssl_context=https_redirect.client_context, sleep=_no_sleep)

    result = deployed.attempt_in_process({"url": url, "headers": {"JOB-TOKEN": "s3cret-t0ken"}}, fetcher)

    assert https_redirect.requests == ["/v2.tar.gz"]  # TLS worked, and it asked once
    assert result.permanent and result.error is not None
    assert "refuses to leave https" in result.error, result.error
    assert deployed.requests_for("/plain/v2.tar.gz") == []
    deployed.assert_unchanged()


def test_a_content_encoding_the_controller_did_not_ask_for_is_refused(deployed: Deployed) -> None:
    url = _serve(deployed, support.Reply(body=support.tar_bytes(support.site("2")), headers={"Content-Encoding": "gzip"}))

    run = deployed.attempt({"url": url})

    deployed.assert_refused(run, "Content-Encoding", "gzip")
    assert len(deployed.requests_for("/v2.tar.gz")) == 1


# ---------------------------------------------------------------- odd but valid artifacts


def _deploys(deployed: Deployed, source: dict[str, Any]) -> Path:
    run = deployed.attempt(source)
    assert run.returncode == 0, run.stdout + run.stderr
    return deployed.assert_deployed()


def _is_site_2(root: Path) -> None:
    assert (root / "index.html").read_text() == "<h1>version 2</h1>\n"
    assert (root / "css" / "site.css").read_text() == "body { color: black }\n"
    assert os.readlink(root / "home.html") == "index.html"


def test_a_tar_bz2_artifact_deploys(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(support.site("2"), "bz2"), path="/v2.tar.bz2")

    _is_site_2(_deploys(deployed, {"url": url}))


def test_a_tar_xz_artifact_deploys(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(support.site("2"), "xz"), path="/v2.tar.xz")

    _is_site_2(_deploys(deployed, {"url": url}))


def test_a_tar_zst_artifact_deploys(deployed: Deployed) -> None:
    archive = zstandard.ZstdCompressor(level=19).compress(support.tar_bytes(support.site("2"), ""))
    url = _serve(deployed, archive, path="/v2.tar.zst")

    _is_site_2(_deploys(deployed, {"url": url, "sha256": support.sha256(archive)}))
    assert (deployed.node.state / "cache" / NAME / "v2.artifact").read_bytes() == archive


def test_a_zip_with_a_symlink_inside_deploys(deployed: Deployed) -> None:
    url = _serve(deployed, support.zip_bytes(support.site("2")), path="/v2.zip")

    _is_site_2(_deploys(deployed, {"url": url}))


def test_strip_components_0_keeps_the_top_directory(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(support.site("2")))

    root = _deploys(deployed, {"url": url, "stripComponents": 0})

    assert sorted(os.listdir(root)) == ["site"]
    _is_site_2(root / "site")


def test_strip_components_auto_with_two_top_level_entries_strips_nothing(deployed: Deployed) -> None:
    url = _serve(deployed, support.tar_bytes(_with(support.Member("README", b"read me\n"))))

    root = _deploys(deployed, {"url": url})

    assert sorted(os.listdir(root)) == ["README", "site"]
    _is_site_2(root / "site")


def test_a_file_url_deploys(deployed: Deployed) -> None:
    artifacts = deployed.node.root / "artifacts"
    artifacts.mkdir()
    archive = support.tar_bytes(support.site("2"))
    (artifacts / "v2.tar.gz").write_bytes(archive)

    _is_site_2(_deploys(deployed, {"url": f"file://{artifacts}/{{deployment}}.tar.gz", "sha256": support.sha256(archive)}))
    assert (deployed.node.state / "cache" / NAME / "v2.artifact").read_bytes() == archive
