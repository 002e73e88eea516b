"""Reading many manifests stays cheap (design section 9, P4) without changing what is accepted or refused."""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.manifests import crosschecks, documents

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
