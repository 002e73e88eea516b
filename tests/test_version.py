"""One version, everywhere it is written: the package metadata, `tether --version`, the metrics, the Debian
changelog and docs/changes.md."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

import controller
from tests import support


def test_tether_version_prints_the_version_of_the_installed_package() -> None:
    run = subprocess.run([sys.executable, "-m", "controller", "--version"], capture_output=True, text=True,
                         check=True, cwd=support.REPO)
    metadata = importlib.metadata.version("tether")
    assert run.stdout.strip() == f"tether {metadata}"
    assert metadata == controller.__version__
    assert tomllib.loads((support.REPO / "pyproject.toml").read_text())["project"]["version"] == metadata


def test_the_debian_changelog_starts_with_this_version() -> None:
    text = (support.REPO / "packaging" / "debian" / "changelog").read_text()
    assert re.match(rf"tether \({re.escape(controller.__version__)}\) ", text), text.splitlines()[0]
    if shutil.which("dpkg-parsechangelog") is None:
        pytest.skip("dpkg-parsechangelog (dpkg-dev) checks the changelog's format; it is not installed")
    for field in ("Version", "Date", "Maintainer"):
        parsed = subprocess.run(["dpkg-parsechangelog", "-l", "packaging/debian/changelog", "-S", field],
                                capture_output=True, text=True, cwd=support.REPO)
        assert parsed.returncode == 0 and parsed.stdout.strip() and not parsed.stderr, parsed.stderr
        if field == "Version":
            assert parsed.stdout.strip() == controller.__version__


def test_docs_changes_has_a_section_for_this_version_first() -> None:
    headings = re.findall(r"^## (\S+)", (support.REPO / "docs" / "changes.md").read_text(), re.MULTILINE)
    assert headings and headings[0] == controller.__version__ and "0.1.0" in headings
