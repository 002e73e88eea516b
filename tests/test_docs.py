"""The repository stands on its own: its docs and code point at docs/design.md, never at a design file
that a clone does not have."""

from __future__ import annotations

import re
import subprocess

from tests import support


def test_no_file_points_at_a_design_document_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=support.REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    pattern = re.compile(r"\bDESIGN(\.md| \d| section)")
    found = [name for name in files if (support.REPO / name).is_file()
             and pattern.search((support.REPO / name).read_text(errors="replace"))]
    assert found == []


def test_the_design_document_has_every_section_that_code_and_docs_refer_to() -> None:
    design = (support.REPO / "docs" / "design.md").read_text()
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", design, re.M)}
    files = subprocess.run(["git", "ls-files", "controller", "tests", "docs", "README.md"], cwd=support.REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    referred = {int(n) for name in files if (support.REPO / name).is_file()
                for n in re.findall(r"design sections? (\d+)", (support.REPO / name).read_text(errors="replace"))}
    assert referred and referred <= sections
