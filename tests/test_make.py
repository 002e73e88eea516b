"""The Makefile and CI plumbing: stage times (.ci/stage), the Debian 12 selection, what `make demo` installs."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests import support


def make_dry_run(*targets: str) -> str:
    run = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(support.REPO), *targets],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize(("command", "code"), [("true", 0), ("false", 1), ("exit 3", 3)])
def test_a_ci_stage_prints_its_start_time_and_duration_and_exits_as_its_command_did(command: str, code: int) -> None:
    run = subprocess.run(["bash", str(support.REPO / ".ci" / "stage"), "lint", "bash", "-c", f"echo inside; {command}"],
                         capture_output=True, text=True, timeout=60, check=False)

    lines = run.stdout.splitlines()
    assert run.returncode == code
    assert re.fullmatch(r"== \d\d:\d\d:\d\d lint \.\.\.", lines[0]), lines
    assert lines[1] == "inside"
    ending = r"done in \d+ s" if code == 0 else rf"failed \(exit {code}\) after \d+ s"
    assert re.fullmatch(rf"== \d\d:\d\d:\d\d lint {ending}", lines[2]), lines


def test_the_debian12_pass_runs_files_that_exist_with_durations() -> None:
    command = next(line for line in make_dry_run("test-debian12").splitlines() if "bin/pytest -q" in line)
    files = [word for word in command.split() if word.startswith("tests/")]

    assert files and all((support.REPO / file).is_file() for file in files), files
    assert "--durations=15" in command
    assert "--durations=15" in next(line for line in make_dry_run("unit").splitlines() if "bin/pytest -q" in line)


def test_make_demo_installs_tether_without_the_test_extra_and_make_venv_with_it() -> None:
    pyproject = (support.REPO / "pyproject.toml").read_text()
    makefile = (support.REPO / "Makefile").read_text()
    demo_rule = makefile[makefile.index("$(VENV)/.demo-installed:"):makefile.index("$(VENV)/.test-installed:")]
    test_rule = makefile[makefile.index("$(VENV)/.test-installed:"):makefile.index("venv: ")]

    assert "pip install" in demo_rule and "-e ." in demo_rule and "[test]" not in demo_rule
    assert "-e '.[test]'" in test_rule and "Setting up" in demo_rule and "Setting up" in test_rule
    assert re.search(r"^demo: demo-venv$", makefile, re.M) and re.search(r"^demo-daemon: demo-venv$", makefile, re.M)
    runtime = pyproject[pyproject.index("dependencies = ["):pyproject.index("]", pyproject.index("dependencies = ["))]
    assert not re.search(r"pytest|mypy|ruff|ansible|hypothesis", runtime)
