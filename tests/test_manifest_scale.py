"""Reading many manifests stays cheap (design section 9, P4) without changing what is accepted or refused."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller import fsutil
from controller.manifests import crosschecks, documents, loading

SEGMENTS = st.sampled_from(["srv", "a", "ab", "a b", "b", "x.y", "a-"])
PATHS = st.lists(SEGMENTS, max_size=4).map(lambda parts: "/" + "/".join(parts))


@settings(max_examples=300, deadline=None)
@given(st.lists(PATHS, max_size=12))
def test_the_sorted_overlap_search_finds_exactly_the_pairs_the_pairwise_comparison_finds(paths: list[str]) -> None:
    expected: dict[int, list[int]] = {}
    for index, path in enumerate(paths):
        for later in range(index + 1, len(paths)):
            other = paths[later]
            if crosschecks.is_inside(path, other) or crosschecks.is_inside(other, path):
                expected.setdefault(index, []).append(later)
    assert crosschecks._overlaps(paths) == expected


MERGED = """\
base: &base
  user: www
  keep: 2
app:
  <<: *base
  keep: 3
list: [1, 2]
"""


def test_one_parse_of_a_manifest_gives_the_value_and_lines_of_two_and_merge_keys_are_no_duplicates() -> None:
    document, lines = documents.parse("m.yaml", MERGED)
    assert document == yaml.safe_load(MERGED)
    assert lines["/app/keep"] == 6 and lines["/list/1"] == 7 and lines["/base/user"] == 2


def manifest(name: str, deployment: str) -> str:
    return (f"apiVersion: tether/v1\nkind: Application\nmetadata: {{name: {name}}}\n"
            f"spec: {{path: /srv/{name}, deployment: {deployment}}}\n")


CHANGES = {
    "edited in place, same size": lambda file: file.write_text(manifest(file.stem, "v9")),
    "replaced by a rename": lambda file: (file.with_suffix(".new").write_text(manifest(file.stem, "v9")),
                                          os.replace(file.with_suffix(".new"), file)),
    "made writable by others": lambda file: file.chmod(0o666),
    "removed": lambda file: file.unlink(),
}


def test_a_manifest_read_again_only_when_its_identity_changed_still_shows_every_change(tmp_path: Path) -> None:
    """The scan's identities (loading.load): an old enough file is not opened again, and nothing that changes
    a file keeps its identity. The one wait here ages the files past the racy margin."""
    directory = tmp_path / "manifests"
    directory.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    for name in ["unchanged", *(f"app{i}" for i in range(len(CHANGES)))]:
        (directory / f"{name}.yaml").write_text(manifest(name, "v1"))
        (directory / f"{name}.yaml").chmod(0o644)
    cache: dict[Any, Any] = {}
    identities: dict[str, Any] = {}
    loading.load([str(directory)], cache=cache, identities=identities)
    assert identities == {}, "files written just now are not remembered"
    time.sleep(fsutil.RACY_NS / 1e9 + 0.2)  # not a synchronisation: the files must be older than the margin
    first = loading.load([str(directory)], cache=cache, identities=identities)
    assert set(identities) == {str(f) for f in directory.iterdir()}
    for index, change in enumerate(CHANGES.values()):
        change(directory / f"app{index}.yaml")
    again = loading.load([str(directory)], cache=cache, identities=identities)
    assert again.applications["unchanged"] is first.applications["unchanged"]
    assert again.applications["app0"].deployment == "v9" and again.applications["app1"].deployment == "v9"
    assert "app2" not in again.applications and any("app2.yaml" in str(p) for p in again.problems)
    assert "app3" not in again.applications and str(directory / "app3.yaml") not in identities
