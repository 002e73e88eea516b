"""packaging/bolt/tether: the Bolt/Choria tasks, run directly as Bolt runs them (JSON on stdin, or PT_*
variables), against a real tether, a real HTTP server and a temporary tree. Bolt itself is not needed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import support

MODULE = support.REPO / "packaging" / "bolt" / "tether"
TASKS = ("deploy", "status", "rollback", "activate", "list", "remove", "prune")
FILTERS = ("status", "list")  # tasks whose application and environment only filter
VENV_BIN = Path(sys.executable).parent
SECRET = "s3cr3t-job-token-0451"


@pytest.fixture
def acme(node: support.Node, http: support.HttpServer) -> support.Node:
    """acme in production and in staging, both reconciled to v1; v2 is served too."""
    assert (VENV_BIN / "tether").is_file(), f"no tether beside {sys.executable}: run `make venv`"
    for version in ("1", "2"):
        http.serve(f"/acme/v{version}.tar.gz", support.tar_bytes(support.site(version)))
    for environment in ("production", "staging"):
        support.write_manifest(node.manifests, support.application(
            f"acme-{environment}", node.apps / f"acme-{environment}", application="acme", environment=environment,
            deployment="v1", source={"url": http.url("/acme/{deployment}.tar.gz")}))
    reconciled = node.tether("reconcile")
    assert reconciled.returncode == 0, reconciled.stderr
    return node


def task(node: support.Node, name: str, params: dict[str, Any] | str | None = None,
         variables: dict[str, str] | None = None, path: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run tasks/<name>.py directly: `params` as JSON on stdin (a str as it is), `variables` in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "PT_"))}
    env.update(PATH=path or f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               TETHER_MANIFESTS=str(node.manifests), TETHER_STATE_DIR=str(node.state), TETHER_INSECURE_MANIFESTS="1",
               **(variables or {}))
    stdin = params if isinstance(params, str) else "" if params is None else json.dumps(params)
    return subprocess.run([str(MODULE / "tasks" / f"{name}.py")], input=stdin, capture_output=True, text=True,
                          env=env, timeout=120, cwd=node.root)


def result(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert run.returncode == 0, (run.stdout, run.stderr)
    answer = json.loads(run.stdout)
    assert isinstance(answer, dict) and "_error" not in answer
    return answer


def error(run: subprocess.CompletedProcess[str], kind: str) -> dict[str, Any]:
    assert run.returncode != 0, run.stdout
    answer = json.loads(run.stdout)
    assert set(answer) == {"_error"} and set(answer["_error"]) == {"msg", "kind", "details"}, answer
    assert answer["_error"]["kind"] == kind, answer
    assert answer["_error"]["msg"] in run.stderr
    return dict(answer["_error"])


def current(node: support.Node, name: str) -> str:
    return os.path.basename(os.readlink(node.apps / name / "current"))


def deploy_v2(http: support.HttpServer, **more: Any) -> dict[str, Any]:
    return {"application": "acme", "environment": "production", "url": http.url("/acme/v2.tar.gz"),
            "deployment_name": "v2", **more}


def test_deploy_status_and_rollback_drive_the_application_their_parameters_select(
        acme: support.Node, http: support.HttpServer) -> None:
    deployed = task(acme, "deploy", deploy_v2(http, headers={"JOB-TOKEN": SECRET}))

    answer = result(deployed)
    assert (answer["name"], answer["application"], answer["environment"]) == ("acme-production", "acme", "production")
    assert (answer["ok"], answer["current"], answer["status"]["current"]) == (True, "v2", "v2")
    assert current(acme, "acme-production") == "v2" and current(acme, "acme-staging") == "v1"
    assert http.requests[-1][0] == "/acme/v2.tar.gz" and http.requests[-1][1].get("JOB-TOKEN") == SECRET
    assert SECRET not in deployed.stdout + deployed.stderr

    listed = result(task(acme, "status", {"application": "acme"}))["applications"]
    assert {(d["name"], d["environment"], d["current"]) for d in listed} == {
        ("acme-production", "production", "v2"), ("acme-staging", "staging", "v1")}
    one = result(task(acme, "status", {"application": "acme", "environment": "production"}))["applications"]
    assert [(d["name"], d["previous"]) for d in one] == [("acme-production", "v1")]
    assert {d["name"] for d in result(task(acme, "status"))["applications"]} == {"acme-production", "acme-staging"}

    rolled_back = result(task(acme, "rollback", {"application": "acme", "environment": "production"}))
    assert (rolled_back["name"], rolled_back["current"]) == ("acme-production", "v1")
    assert current(acme, "acme-production") == "v1"


def test_header_values_never_reach_tethers_command_line(
        acme: support.Node, http: support.HttpServer, tmp_path: Path) -> None:
    # The real tether, behind a script that records the command line other users could see in ps.
    seen = tmp_path / "argv"
    wrapper = tmp_path / "tether"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {seen}\nexec {VENV_BIN / "tether"} "$@"\n')
    wrapper.chmod(0o755)

    deployed = result(task(acme, "deploy", deploy_v2(http, headers={"JOB-TOKEN": SECRET}, tether_bin=str(wrapper))))

    assert deployed["current"] == "v2" and http.requests[-1][1].get("JOB-TOKEN") == SECRET
    assert "deploy" in seen.read_text() and SECRET not in seen.read_text()


def test_parameters_come_from_pt_variables_when_stdin_is_empty(acme: support.Node, http: support.HttpServer) -> None:
    run = task(acme, "deploy", variables={
        "PT_application": "acme", "PT_environment": "staging", "PT_url": http.url("/acme/{deployment}.tar.gz"),
        "PT_deployment_name": "v2", "PT_headers": json.dumps({"X-Deploy-Token": SECRET})})

    assert result(run)["name"] == "acme-staging"
    assert current(acme, "acme-staging") == "v2" and current(acme, "acme-production") == "v1"
    assert http.requests[-1][1].get("X-Deploy-Token") == SECRET
    assert SECRET not in run.stdout + run.stderr


def test_a_deploy_without_a_deployment_name_creates_one_named_for_the_time(
        acme: support.Node, http: support.HttpServer) -> None:
    answer = result(task(acme, "deploy", {"application": "acme", "environment": "production",
                                          "url": http.url("/acme/v2.tar.gz")}))

    assert re.fullmatch(r"\d{8}T\d{6}Z", answer["current"]), answer["current"]
    assert current(acme, "acme-production") == answer["current"]
    assert (acme.apps / "acme-production" / answer["current"] / "index.html").read_text() == "<h1>version 2</h1>\n"


def test_an_unknown_application_or_environment_is_an_error_naming_what_is_known(
        acme: support.Node, http: support.HttpServer) -> None:
    for task_name, params in (("deploy", deploy_v2(http, application="nope")),
                              ("deploy", deploy_v2(http, environment="qa")),
                              ("rollback", {"application": "acme", "environment": "qa"}),
                              ("status", {"application": "nope"})):
        failed = error(task(acme, task_name, params), "tether/unknown-application")
        assert "acme-staging" in failed["msg"], failed
    assert current(acme, "acme-production") == "v1" and [r[0] for r in http.requests].count("/acme/v2.tar.gz") == 0


def test_several_applications_selected_are_an_error_until_the_name_parameter_picks_one(
        acme: support.Node, http: support.HttpServer) -> None:
    support.write_manifest(acme.manifests, support.application(
        "acme-eu", acme.apps / "acme-eu", application="acme", environment="production",
        deployment="v1", source={"url": http.url("/acme/{deployment}.tar.gz")}))
    assert acme.tether("reconcile").returncode == 0

    ambiguous = error(task(acme, "deploy", deploy_v2(http)), "tether/ambiguous-application")
    assert ambiguous["details"]["names"] == ["acme-eu", "acme-production"]
    assert result(task(acme, "deploy", deploy_v2(http, name="acme-eu")))["name"] == "acme-eu"
    assert current(acme, "acme-eu") == "v2" and current(acme, "acme-production") == "v1"
    mismatch = error(task(acme, "rollback", {"application": "acme", "environment": "production",
                                             "name": "acme-staging"}), "tether/application-mismatch")
    assert "staging" in mismatch["msg"]


def test_a_failing_deploy_is_an_error_with_the_status_and_without_the_secret(
        acme: support.Node, http: support.HttpServer) -> None:
    run = task(acme, "deploy", deploy_v2(http, url=http.url("/acme/missing.tar.gz"), headers={"JOB-TOKEN": SECRET}))

    failed = error(run, "tether/deploy-failed")
    assert run.returncode == 1 and "404" in failed["msg"]
    assert (failed["details"]["name"], failed["details"]["status"]["current"]) == ("acme-production", "v1")
    assert http.requests[-1][1].get("JOB-TOKEN") == SECRET and SECRET not in run.stdout + run.stderr
    assert current(acme, "acme-production") == "v1"


def test_bad_parameters_are_refused_before_tether_runs(acme: support.Node, http: support.HttpServer) -> None:
    before, requests = support.snapshot(acme.apps), len(http.requests)
    for params, words in ((deploy_v2(http, url=None), "missing url"),
                          ({**deploy_v2(http), "colour": "blue"}, "unknown colour"),
                          (deploy_v2(http, headers=["JOB-TOKEN", SECRET]), "headers must be a JSON object"),
                          (deploy_v2(http, headers={"JOB-TOKEN": SECRET + "\nX-Evil: 1"}), "invalid value for 'JOB-TOKEN'"),
                          (deploy_v2(http, headers={"Bad: name": SECRET}), "invalid header name"),
                          (deploy_v2(http, deployment_name=""), "deployment_name must be a non-empty string"),
                          ("{not json", "not JSON"),
                          ("[1, 2]", "one JSON object")):
        run = task(acme, "deploy", params)
        failed = error(run, "tether/invalid-parameters")
        assert run.returncode == 2 and words in failed["msg"], (words, failed)
        assert SECRET not in run.stdout + run.stderr
    not_json = task(acme, "deploy", variables={"PT_application": "acme", "PT_environment": "production",
                                               "PT_url": http.url("/x"), "PT_headers": f"JOB-TOKEN: {SECRET}"})
    assert "headers must be a JSON object" in error(not_json, "tether/invalid-parameters")["msg"]
    assert SECRET not in not_json.stdout + not_json.stderr
    refused = task(acme, "deploy", deploy_v2(http, deployment_name="../x"))
    assert refused.returncode == 2 and "not a valid deployment name" in error(refused, "tether/invalid-input")["msg"]
    assert support.snapshot(acme.apps) == before and len(http.requests) == requests


def test_the_tether_command_comes_from_tether_bin_or_path(acme: support.Node, tmp_path: Path) -> None:
    bare = tmp_path / "bare-bin"  # python3 for the task's shebang, and no tether
    bare.mkdir()
    (bare / "python3").symlink_to(sys.executable)

    missing = error(task(acme, "status", path=str(bare)), "tether/not-installed")
    assert "tether_bin" in missing["msg"]
    by_parameter = task(acme, "status", {"tether_bin": str(VENV_BIN / "tether")}, path=str(bare))
    by_variable = task(acme, "status", variables={"TETHER_BIN": str(VENV_BIN / "tether")}, path=str(bare))
    assert len(result(by_parameter)["applications"]) == len(result(by_variable)["applications"]) == 2


def test_list_activate_remove_and_prune_drive_the_deployments_of_the_selected_application(
        acme: support.Node, http: support.HttpServer) -> None:
    result(task(acme, "deploy", deploy_v2(http)))
    production = {"application": "acme", "environment": "production"}

    listed = result(task(acme, "list", {"application": "acme"}))["applications"]
    assert {(a["name"], a["current"], tuple(d["name"] for d in a["deployments"])) for a in listed} == {
        ("acme-production", "v2", ("v1", "v2")), ("acme-staging", "v1", ("v1",))}
    activated = result(task(acme, "activate", {**production, "deployment_name": "v1"}))
    assert (activated["name"], activated["current"]) == ("acme-production", "v1")
    assert current(acme, "acme-production") == "v1"
    active = error(task(acme, "remove", {**production, "deployment_name": "v1"}), "tether/invalid-input")
    assert "v1" in active["msg"] and (acme.apps / "acme-production" / "v1").is_dir()
    assert result(task(acme, "remove", {**production, "deployment_name": "v2"}))["ok"] is True
    assert not (acme.apps / "acme-production" / "v2").exists()
    missing = error(task(acme, "activate", {**production, "deployment_name": "v2"}), "tether/invalid-input")
    assert "no complete deployment v2" in missing["msg"]
    pruned = result(task(acme, "prune", variables={"PT_application": "acme", "PT_environment": "staging",
                                                   "PT_keep": "1"}))
    assert pruned["name"] == "acme-staging" and "pruned to 1" in pruned["message"]
    assert error(task(acme, "prune", {**production, "keep": 0}), "tether/invalid-parameters")["details"]["invalid"] \
        == {"keep": "must be an integer from 1 to 1000"}
    assert [d["name"] for d in result(task(acme, "list", {"name": "acme-production"}))["applications"][0][
        "deployments"]] == ["v1"]


# ---------------------------------------------------------------- the module's files


def metadata(name: str) -> dict[str, Any]:
    loaded = json.loads((MODULE / "tasks" / f"{name}.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


SEED_TYPES = {"application": "String[1]", "environment": "String[1]", "url": "String[1]",
              "deployment_name": "Optional[String[1]]", "headers": "Optional[Hash[String[1], String[1]]]"}
# The seed's activate and remove need the deployment; its prune's keep was Integer[1], default 5 (here: the manifest's)
TASK_TYPES = {"activate": {"deployment_name": "String[1]"}, "remove": {"deployment_name": "String[1]"},
              "prune": {"keep": "Optional[Integer[1, 1000]]"}}


@pytest.mark.parametrize("name", TASKS)
def test_each_task_has_metadata_and_an_executable_python_3_file(name: str) -> None:
    meta = metadata(name)
    executable = MODULE / "tasks" / f"{name}.py"

    assert meta["description"] and meta["input_method"] in ("stdin", "both") and meta["supports_noop"] is False
    assert os.access(executable, os.X_OK) and executable.read_text().startswith("#!/usr/bin/env python3\n")
    for file in meta.get("files", []):
        assert file.startswith("tether/") and (MODULE.parent / file).is_file(), file
    for parameter, declared in meta["parameters"].items():
        assert declared["description"], parameter
        seed = TASK_TYPES.get(name, {}).get(parameter) or SEED_TYPES.get(parameter, "Optional[String[1]]")
        expected = seed if name not in FILTERS or seed.startswith("Optional[") else f"Optional[{seed}]"
        assert declared["type"] == expected, parameter
    if name not in FILTERS:
        assert {"application", "environment"} <= set(meta["parameters"])
    if name == "deploy":
        assert set(SEED_TYPES) <= set(meta["parameters"]) and meta["parameters"]["headers"]["sensitive"] is True


@pytest.mark.parametrize("name", TASKS)
def test_the_executables_accept_exactly_the_parameters_their_metadata_declares(
        name: str, node: support.Node) -> None:
    declared = metadata(name)["parameters"]
    required = sorted(p for p, d in declared.items() if not d["type"].startswith("Optional["))

    undeclared = error(task(node, name, {"undeclared": "x", "_task": f"tether::{name}"}), "tether/invalid-parameters")
    mistyped = error(task(node, name, {p: 0 for p in declared}), "tether/invalid-parameters")

    assert (undeclared["details"]["missing"], undeclared["details"]["unknown"]) == (required, ["undeclared"])
    assert (mistyped["details"]["missing"], mistyped["details"]["unknown"]) == ([], [])
    assert sorted(mistyped["details"]["invalid"]) == sorted(declared)


def test_the_module_has_metadata_and_a_readme_showing_bolt_and_choria() -> None:
    module = json.loads((MODULE / "metadata.json").read_text())
    readme = (MODULE / "README.md").read_text()

    assert module["name"].endswith("-tether") and re.fullmatch(r"\d+\.\d+\.\d+", module["version"])
    assert module["summary"] and module["license"] and isinstance(module["dependencies"], list)
    assert "bolt task run tether::deploy --targets" in readme and "choria" in readme.lower()
    for name in TASKS:
        assert f"tether::{name}" in readme
