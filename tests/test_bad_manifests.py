"""Bad manifests through the real command line: a clear error, exit 2, and a node left as it was.

Most tests first deploy a good version v1 of the application `site` from a real
HTTP server, then replace its manifest with a bad one and run `tether reconcile`.
The bad manifests are YAML text, so that the line an error must name is visible
in the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import support

INVALID = 2
SECRET = "supersecret-value"

MANIFEST = """\
apiVersion: tether/v1
kind: Application
metadata:
  name: site
spec:
  path: {path}
  deployment: v1
  source:
    url: {url}
    sha256: {sha256}
    format: auto
  retention:
    keep: 3
  hookTimeoutSeconds: 600
"""


@dataclasses.dataclass
class Deployed:
    """A node where v1 of `site` is deployed and active, with a snapshot of its tree."""

    node: support.Node
    app: Path
    text: str  # the good manifest
    before: dict[str, tuple[str, str]]
    cache_before: dict[str, tuple[str, str]]

    @property
    def manifest(self) -> Path:
        return self.node.manifests / "site.yaml"

    def write(self, text: str, file: str = "site.yaml") -> Path:
        return support.write_manifest(self.node.manifests, text, file)

    def swapped(self, start: str, new: str) -> str:
        """The good manifest with its one line starting with `start` replaced by `new` (lines)."""
        return _swap(self.text, start, new)

    def reconcile(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.node.tether("reconcile", *args, env=env)

    def assert_unchanged(self) -> None:
        assert os.readlink(self.app / "current") == str(self.app / "v1")
        assert support.snapshot(self.app) == self.before
        assert support.snapshot(self.node.state / "cache") == self.cache_before

    def assert_status_reports(self, *words: str) -> None:
        """The error shows in status, which keeps the last good state."""
        status = json.loads((self.node.state / "status" / "site.json").read_text())
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidManifest")
        assert status["current"] == "v1" and status["desired"] == "v1"
        for word in words:
            assert word in status["lastError"]


@pytest.fixture
def deployed(node: support.Node, http: support.HttpServer) -> Deployed:
    archive = support.tar_bytes(support.site("1"))
    http.serve("/site/v1.tar.gz", archive)
    app = node.apps / "site"
    text = MANIFEST.format(path=app, url=http.url("/site/{deployment}.tar.gz"), sha256=support.sha256(archive))
    support.write_manifest(node.manifests, text, "site.yaml")
    run = node.tether("reconcile")
    assert run.returncode == 0, run.stderr
    assert os.readlink(app / "current") == str(app / "v1")
    return Deployed(node, app, text, support.snapshot(app), support.snapshot(node.state / "cache"))


def _swap(text: str, start: str, new: str) -> str:
    lines = text.splitlines(keepends=True)
    found = [index for index, line in enumerate(lines) if line.startswith(start)]
    assert len(found) == 1, (start, found)
    lines[found[0]] = new
    return "".join(lines)


def _line_of(text: str, needle: str) -> int:
    """The 1-based number of the only line of `text` that contains `needle`."""
    found = [number for number, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(found) == 1, (needle, found)
    return found[0]


def _error(output: str, file: Path, line: int | None, *words: str) -> str:
    """The error line about `file` (at `line`) in `output`; it must hold every one of `words`."""
    where = f"{file}:{line}: " if line is not None else f"{file}: "
    matches = [entry for entry in output.splitlines() if where in entry]
    assert matches, f"no error for {where!r} in:\n{output}"
    message = matches[0]
    for word in words:
        assert word in message, (word, message)
    return message


def _refused(deployed: Deployed, text: str, needle: str | None, *words: str,
             line: int | None = None) -> subprocess.CompletedProcess[str]:
    """Write the bad `text` as the manifest of `site`, reconcile, and check the refusal.

    The error must name the manifest and the line holding `needle` (or `line`).
    """
    file = deployed.write(text)
    run = deployed.reconcile()
    assert run.returncode == INVALID, run.stderr
    _error(run.stderr, file, _line_of(text, needle) if needle is not None else line, *words)
    assert "Traceback" not in run.stderr
    deployed.assert_unchanged()
    return run


def _files_below(*roots: Path) -> Iterator[Path]:
    for root in roots:
        yield from support.walk_files(root)


# ---------------------------------------------------------------- YAML and document shape


def test_malformed_yaml_is_refused_with_its_line_number(deployed: Deployed) -> None:
    text = deployed.swapped("  deployment: v1", "   deployment: v1\n")

    _refused(deployed, text, "   deployment: v1", "not valid YAML", "mapping values are not allowed")


def test_a_tab_in_the_indentation_is_refused_with_its_line_number(deployed: Deployed) -> None:
    text = deployed.swapped("  deployment: v1", "\tdeployment: v1\n")

    _refused(deployed, text, "\tdeployment: v1", "not valid YAML", "'\\t'")


def test_two_yaml_documents_in_one_file_are_refused(deployed: Deployed) -> None:
    text = deployed.text + "---\n" + deployed.text.replace("v1", "v2")

    _refused(deployed, text, "---", "more than one YAML document", "file of its own")


def test_a_manifest_that_is_a_list_not_a_mapping_is_refused(deployed: Deployed) -> None:
    text = "- apiVersion: tether/v1\n- kind: Application\n"

    _refused(deployed, text, None, "must hold one YAML mapping", line=1)


def test_an_empty_manifest_is_refused(deployed: Deployed) -> None:
    _refused(deployed, "# nothing here yet\n", None, "must hold one YAML mapping", line=1)


def test_a_yaml_alias_bomb_is_refused_quickly(deployed: Deployed) -> None:
    anchors = "x:\n  x0: &a0 [a]\n" + "".join(f"  x{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]\n" for i in range(1, 30))
    text = anchors + deployed.swapped("  hookTimeoutSeconds: 600", "  driftIgnore: *a29\n")

    # A hang shows as subprocess.TimeoutExpired from node.tether's timeout.
    _refused(deployed, text, None, "more than 100000 values", "YAML aliases")


def test_a_self_referencing_yaml_alias_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("  hookTimeoutSeconds: 600", "  driftIgnore: &loop [*loop]\n")

    _refused(deployed, text, None, "an alias refers to a value that contains it", "remove that alias")


@pytest.mark.parametrize("depth", [100, 5000])
def test_a_deeply_nested_document_is_refused(deployed: Deployed, depth: int) -> None:
    text = deployed.swapped("  hookTimeoutSeconds: 600", "  driftIgnore: " + "[" * depth + "]" * depth + "\n")

    _refused(deployed, text, None, "nested", "deep", "is it a manifest?")


def test_a_manifest_of_an_unknown_kind_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("kind: Application", "kind: Applicaton\n")

    _refused(deployed, text, "kind: Applicaton", "kind must be Application or ApplicationKind", "'Applicaton'")


# ---------------------------------------------------------------- schema violations


def test_a_manifest_without_spec_path_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped(f"  path: {deployed.app}", "")

    _refused(deployed, text, "spec:", "the required field 'path' is missing", "(at /spec)")
    deployed.assert_status_reports("'path' is missing")


def test_a_wrong_api_version_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("apiVersion: tether/v1", "apiVersion: tether/v2\n")

    _refused(deployed, text, "apiVersion", '"tether/v2" is not one of "tether/v1"', "(at /apiVersion)")
    deployed.assert_status_reports("tether/v2")


def test_a_misspelt_field_in_spec_is_refused_at_its_own_line(deployed: Deployed) -> None:
    text = deployed.swapped("  hookTimeoutSeconds: 600", "  hookTimeoutSecond: 600\n")

    _refused(deployed, text, "hookTimeoutSecond:", "unknown field 'hookTimeoutSecond'", "check its spelling")
    deployed.assert_status_reports("hookTimeoutSecond")


def test_a_misspelt_top_level_field_is_refused_at_its_own_line(deployed: Deployed) -> None:
    text = deployed.text + "lables: {team: web}\n"

    _refused(deployed, text, "lables", "unknown field 'lables'", "check its spelling")


def test_retention_keep_of_the_wrong_type_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("    keep: 3", "    keep: five\n")

    _refused(deployed, text, "keep: five", "expected a value of type integer", '"five"', "/spec/retention/keep")
    deployed.assert_status_reports("integer")


def test_retention_keep_of_zero_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("    keep: 3", "    keep: 0\n")

    _refused(deployed, text, "keep: 0", "0 is out of range", "minimum 1", "/spec/retention/keep")


def test_an_uppercase_metadata_name_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("  name: site", "  name: Site\n")

    _refused(deployed, text, "name: Site", '"Site" does not have the required form', "/metadata/name")
    assert not (deployed.node.state / "status" / "Site.json").exists()


@pytest.mark.parametrize("name", ["../../escaped", "a/b"])
def test_a_metadata_name_with_a_slash_writes_nothing_outside_the_state_dir(deployed: Deployed, name: str) -> None:
    text = deployed.swapped("  name: site", f"  name: {json.dumps(name)}\n")

    _refused(deployed, text, "name: ", "does not have the required form", "/metadata/name")
    assert not (deployed.node.root / "escaped.json").exists()
    assert sorted(os.listdir(deployed.node.state / "status")) == ["site.json"]


def test_an_ftp_source_url_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("    url: ", "    url: ftp://example.com/{deployment}.tar.gz\n")

    _refused(deployed, text, "url: ftp://", '"ftp://example.com/{deployment}.tar.gz"', "/spec/source/url",
             "^(https?|file)://")


def test_a_sha256_that_is_not_64_hex_digits_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("    sha256: ", "    sha256: 9f86d0\n")

    _refused(deployed, text, "sha256: 9f86d0", '"9f86d0" does not have the required form', "/spec/source/sha256")


def test_an_unknown_archive_format_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("    format: auto", "    format: rar\n")

    _refused(deployed, text, "format: rar", '"rar" is not one of', '"tar.gz"', '"zip"', "/spec/source/format")


def test_a_negative_hook_timeout_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("  hookTimeoutSeconds: 600", "  hookTimeoutSeconds: -5\n")

    _refused(deployed, text, "hookTimeoutSeconds", "-5 is out of range", "/spec/hookTimeoutSeconds")


@pytest.mark.parametrize("value", ["{fromEnv: TOKEN, fromFile: /etc/tether/token}", "{fromVault: secret/site}"],
                         ids=["both-keys", "unknown-key"])
def test_a_header_value_object_with_both_or_unknown_keys_is_refused(deployed: Deployed, value: str) -> None:
    text = deployed.swapped("    format: auto", f"    format: auto\n    headers:\n      JOB-TOKEN: {value}\n")

    _refused(deployed, text, "JOB-TOKEN", "is not a valid value here", "fromFile", "fromEnv", "exactly one",
             "/spec/source/headers/JOB-TOKEN")


def test_an_empty_hook_is_refused_with_what_a_hook_may_be(deployed: Deployed) -> None:
    text = deployed.swapped("  hookTimeoutSeconds: 600", "  hooks:\n    beforeDeploy: ''\n")

    _refused(deployed, text, "beforeDeploy", '"" is not a valid value here', "inline script", "{path: ",
             "/spec/hooks/beforeDeploy")


@pytest.mark.parametrize(("start", "line"), [("  name: site", "  name: \"site\\n\"\n"),
                                             ("  deployment: v1", "  deployment: \"v1\\n\"\n")],
                         ids=["metadata.name", "spec.deployment"])
def test_a_name_with_a_trailing_newline_is_refused(deployed: Deployed, start: str, line: str) -> None:
    text = deployed.swapped(start, line)

    _refused(deployed, text, line.strip(), '\\n" does not have the required form')


def test_an_unquoted_date_as_deployment_is_refused_with_a_message(deployed: Deployed) -> None:
    text = deployed.swapped("  deployment: v1", "  deployment: 2024-05-01\n")

    _refused(deployed, text, "deployment: 2024", "expected a value of type string", "2024-05-01",
             "/spec/deployment")


@pytest.mark.parametrize("name", ["current", "persistent-data", ".hidden", "a/b", ".."])
def test_a_reserved_or_unsafe_deployment_name_is_refused(deployed: Deployed, name: str) -> None:
    text = deployed.swapped("  deployment: v1", f"  deployment: {json.dumps(name)}\n")

    message = _refused(deployed, text, "deployment: ", json.dumps(name), "/spec/deployment").stderr
    assert "reserved name" in message or "does not have the required form" in message


# ---------------------------------------------------------------- application paths


def test_a_relative_path_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped(f"  path: {deployed.app}", "  path: apps/site\n")

    _refused(deployed, text, "path: apps/site", "path 'apps/site' must be absolute", "/spec/path")


def test_the_root_directory_as_path_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped(f"  path: {deployed.app}", "  path: /\n")

    _refused(deployed, text, "path: /", "path '/' is the root directory", "/spec/path")
    deployed.assert_status_reports("root directory")


def test_etc_as_path_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped(f"  path: {deployed.app}", "  path: /etc\n")

    _refused(deployed, text, "path: /etc", "path '/etc' is a system directory", "/etc/APP", "/spec/path")


def test_a_path_inside_usr_lib_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped(f"  path: {deployed.app}", "  path: /usr/lib/site\n")

    _refused(deployed, text, "path: /usr/lib", "inside the system directory /usr/lib", "/spec/path")
    assert not Path("/usr/lib/site").exists()


@pytest.mark.parametrize(("bad", "normal"), [("{app}/../x", "{apps}/x"), ("{app}/", "{app}"),
                                             ("{app}/./v", "{app}/v")])
def test_a_path_that_is_not_normalised_is_refused_with_the_normal_form(
        deployed: Deployed, bad: str, normal: str) -> None:
    bad, normal = (p.format(app=deployed.app, apps=deployed.app.parent) for p in (bad, normal))
    text = deployed.swapped("  path: ", f"  path: {bad}\n")

    _refused(deployed, text, f"path: {bad}", f"path '{bad}' is not normalised", f"write '{normal}'", "/spec/path")


def test_a_path_with_a_leading_double_slash_is_refused_with_the_normal_form(deployed: Deployed) -> None:
    bad = f"/{deployed.app}"
    text = deployed.swapped(f"  path: {deployed.app}", f"  path: {bad}\n")

    _refused(deployed, text, f"path: {bad}", "is not normalised", f"write '{deployed.app}'", "/spec/path")


def test_a_path_overlapping_the_state_dir_is_refused(deployed: Deployed) -> None:
    inside = deployed.node.state / "site"
    text = deployed.swapped(f"  path: {deployed.app}", f"  path: {inside}\n")

    _refused(deployed, text, "path: ", f"path {inside} overlaps tether's own directory {deployed.node.state}",
             "/spec/path")
    assert not inside.exists()
    deployed.assert_status_reports("overlaps")


def test_a_path_containing_the_manifests_dir_is_refused(deployed: Deployed) -> None:
    root = deployed.node.root
    text = deployed.swapped(f"  path: {deployed.app}", f"  path: {root}\n")

    _refused(deployed, text, "path: ", f"path {root} overlaps tether's own directory", "/spec/path")
    assert not (root / "current").exists()


# ---------------------------------------------------------------- checks across manifests


def test_duplicate_application_names_in_two_files_are_refused(deployed: Deployed) -> None:
    copy = deployed.write(deployed.text.replace("deployment: v1", "deployment: v2"), "copy.yaml")

    run = _refused(deployed, deployed.text, "name: site", "the Application name 'site' is also used by",
                   str(copy), "must be unique", "/metadata/name")

    _error(run.stderr, copy, _line_of(deployed.text, "name: site"), f"also used by {deployed.manifest}")
    assert not (deployed.app / "v2").exists()


def test_overlapping_paths_of_two_applications_are_refused(deployed: Deployed) -> None:
    nested = deployed.app / "v1" / "nested"
    other = deployed.write(deployed.text.replace("name: site", "name: other")
                           .replace(f"path: {deployed.app}", f"path: {nested}"), "other.yaml")

    run = _refused(deployed, deployed.text, "path: ", f"path {deployed.app} overlaps {nested} of {other}",
                   "its own tree", "/spec/path")

    _error(run.stderr, other, _line_of(deployed.text, "path: "), f"overlaps {deployed.app} of {deployed.manifest}")
    assert not nested.exists()


def test_an_application_naming_a_missing_application_kind_is_refused(deployed: Deployed) -> None:
    text = deployed.swapped("  deployment: v1", "  deployment: v1\n  kind: rails\n")

    _refused(deployed, text, "kind: rails", "unknown kind 'rails'", "ApplicationKind", "/spec/kind")
    deployed.assert_status_reports("unknown kind")


def test_an_unknown_url_placeholder_is_refused(deployed: Deployed) -> None:
    text = deployed.text.replace("{deployment}.tar.gz", "{version}.tar.gz")

    _refused(deployed, text, "{version}", "unknown placeholder {version}",
             "{application}, {environment}, {deployment}", "/spec/source/url")


# ---------------------------------------------------------------- who may write manifests


def _v2(deployed: Deployed) -> str:
    """A valid manifest asking for v2, which would change the node if it were read."""
    return _swap(deployed.swapped("  deployment: v1", "  deployment: v2\n"), "    sha256: ", "")


def test_a_world_writable_manifest_is_refused(deployed: Deployed) -> None:
    deployed.write(_v2(deployed)).chmod(0o666)

    run = deployed.reconcile()

    assert run.returncode == INVALID, run.stderr
    _error(run.stderr, deployed.manifest, None, "refused", "writable by group or others", "0666",
           "--insecure-manifests")
    deployed.assert_unchanged()


def test_a_group_writable_manifests_directory_is_refused(deployed: Deployed) -> None:
    deployed.write(_v2(deployed))
    deployed.node.manifests.chmod(0o775)

    run = deployed.reconcile()

    assert run.returncode == INVALID, run.stderr
    _error(run.stderr, deployed.node.manifests, None, "refused", "writable by group or others", "0775",
           "--insecure-manifests")
    deployed.assert_unchanged()


def test_a_manifest_owned_by_another_user_is_refused(deployed: Deployed) -> None:
    os.chown(deployed.write(_v2(deployed)), 12345, -1)

    run = deployed.reconcile()

    assert run.returncode == INVALID, run.stderr
    _error(run.stderr, deployed.manifest, None, "refused", "owned by uid 12345", "not by root",
           "--insecure-manifests")
    deployed.assert_unchanged()


def test_a_valid_v2_manifest_would_change_the_node(deployed: Deployed, http: support.HttpServer) -> None:
    """The control for the permission tests: the same manifest, trusted, is deployed."""
    http.serve("/site/v2.tar.gz", support.tar_bytes(support.site("2")))
    deployed.write(_v2(deployed))

    run = deployed.reconcile()

    assert run.returncode == 0, run.stderr
    assert os.readlink(deployed.app / "current") == str(deployed.app / "v2")


# ---------------------------------------------------------------- files that are not manifests


BROKEN = "apiVersion: tether/v1\nkind: Application\nmetadata: {name: site\n  spec: [\n"


@pytest.mark.parametrize("name", [".hidden.yaml", "x.yaml~", "x.yaml.swp", "x.yaml.dpkg-new", "x.yaml.bak",
                                  "x.yaml.tmp", "x.yaml.rpmnew", "notes.txt"])
def test_files_that_are_not_manifests_are_ignored(deployed: Deployed, name: str) -> None:
    deployed.write(BROKEN, name)

    run = deployed.reconcile()

    assert run.returncode == 0, run.stderr
    assert name not in run.stderr
    deployed.assert_unchanged()
    assert deployed.node.tether("validate", str(deployed.node.manifests)).returncode == 0


@pytest.mark.parametrize("subdirectory", ["sub", ".git"])
def test_manifests_in_a_subdirectory_are_ignored(deployed: Deployed, subdirectory: str) -> None:
    support.write_manifest(deployed.node.manifests / subdirectory, BROKEN, "site.yaml")
    support.write_manifest(deployed.node.manifests / subdirectory, deployed.text.replace("v1", "v2"), "copy.yaml")

    run = deployed.reconcile()

    assert run.returncode == 0, run.stderr
    assert subdirectory not in run.stderr
    deployed.assert_unchanged()


# ---------------------------------------------------------------- secrets


def test_a_header_secret_never_leaks_into_output_or_files(deployed: Deployed, http: support.HttpServer) -> None:
    headers = "    headers:\n      JOB-TOKEN: {fromEnv: TOKEN}\n"
    text = _v2(deployed).replace("    format: auto\n", "    format: auto\n" + headers)
    deployed.write(text)

    runs = [deployed.reconcile("-vv", env={"TOKEN": SECRET}),
            deployed.reconcile("-vv", "--log-format", "json", env={"TOKEN": SECRET})]

    for run in runs:
        assert run.returncode == 1, run.stderr
        assert "404" in run.stderr
        assert SECRET not in run.stdout and SECRET not in run.stderr
    sent = [headers for path, headers in http.requests if path == "/site/v2.tar.gz"]
    assert len(sent) == 2
    assert all({k.lower(): v for k, v in headers.items()}.get("job-token") == SECRET for headers in sent)
    for file in _files_below(deployed.node.state, deployed.app):
        assert SECRET.encode() not in file.read_bytes(), file
    status = json.loads(deployed.node.tether("status", "site", "--json").stdout)
    assert "404" in status["lastError"] and SECRET not in json.dumps(status)
    assert os.readlink(deployed.app / "current") == str(deployed.app / "v1")


# ---------------------------------------------------------------- tether validate


def _validate(node: support.Node, *args: str) -> subprocess.CompletedProcess[str]:
    return node.tether("validate", *args)


def _good_text(node: support.Node, name: str = "site") -> str:
    return MANIFEST.format(path=node.apps / name, url="https://example.com/{deployment}.tar.gz",
                           sha256="ab" * 32).replace("name: site", f"name: {name}")


def test_validate_accepts_a_directory_of_valid_manifests(node: support.Node) -> None:
    support.write_manifest(node.manifests, _good_text(node), "site.yaml")
    support.write_manifest(node.manifests, _good_text(node, "blog"), "blog.yml")
    before = support.snapshot(node.root)

    run = _validate(node, str(node.manifests))

    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 applications and 0 kinds are valid" in run.stdout
    assert support.snapshot(node.root) == before


def test_validate_reports_file_and_line_of_an_error_in_a_directory(node: support.Node) -> None:
    support.write_manifest(node.manifests, _good_text(node), "site.yaml")
    text = _good_text(node, "blog").replace("    keep: 3\n", "    keep: 0\n")
    bad = support.write_manifest(node.manifests, text, "blog.yaml")
    before = support.snapshot(node.root)

    run = _validate(node, str(node.manifests))

    assert run.returncode == INVALID
    assert run.stdout.splitlines() == [
        f"{bad}:{_line_of(text, 'keep: 0')}: 0 is out of range (minimum 1) (at /spec/retention/keep)"]
    assert support.snapshot(node.root) == before


def test_validate_reports_a_yaml_error_of_a_single_file_with_its_line(node: support.Node) -> None:
    text = _good_text(node).replace("  deployment: v1\n", "  deployment: v1\n\tkind: rails\n")
    bad = support.write_manifest(node.root / "repo", text, "site.yaml")

    run = _validate(node, str(bad))

    assert run.returncode == INVALID
    assert run.stdout.startswith(f"{bad}:{_line_of(text, 'kind: rails')}: this is not valid YAML")


def test_validate_json_lists_every_problem_with_file_line_and_pointer(node: support.Node) -> None:
    good = support.write_manifest(node.manifests, _good_text(node), "site.yaml")
    text = _good_text(node, "blog").replace("{deployment}", "{version}")
    bad = support.write_manifest(node.manifests, text, "blog.yaml")
    copy = support.write_manifest(node.manifests, _good_text(node).replace("/site", "/copy"), "copy.yaml")

    run = _validate(node, "--json", str(node.manifests))

    assert run.returncode == INVALID
    report = json.loads(run.stdout)
    assert report["valid"] is False and report["applications"] == [] and report["kinds"] == []
    problems = sorted(report["problems"], key=lambda p: p["file"])
    name_line = _line_of(_good_text(node), "name: site")
    assert [(p["file"], p["line"], p["pointer"]) for p in problems] == [
        (str(bad), _line_of(text, "{version}"), "/spec/source/url"),
        (str(copy), name_line, "/metadata/name"),
        (str(good), name_line, "/metadata/name"),
    ]
    assert "unknown placeholder {version}" in problems[0]["message"]
    assert f"also used by {good}" in problems[1]["message"]


def test_validate_json_reports_valid_manifests(node: support.Node) -> None:
    support.write_manifest(node.manifests, _good_text(node), "site.yaml")

    run = _validate(node, "--json", str(node.manifests))

    assert run.returncode == 0
    assert json.loads(run.stdout) == {"valid": True, "applications": ["site"], "kinds": [], "problems": []}


def test_validate_of_a_missing_path_is_invalid_input(node: support.Node) -> None:
    missing = node.root / "nowhere"

    run = _validate(node, str(missing))

    assert run.returncode == INVALID
    _error(run.stdout, missing, None, "cannot be read", "No such file or directory")
