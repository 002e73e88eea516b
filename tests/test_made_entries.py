"""The digest list taken from what an extraction made equals a walk of the tree it made (issue 16).

When no hook ran and no persistent data was linked, a deploy records its digest
list from extracting.Made instead of walking the new tree again. That is right
only if `digests.made_entries(made)` is exactly what `digests.scan` finds on
disk: for every kind of member (files of every mode, directories explicit and
implied, odd directory modes, symlinks, hardlinks, empty files, large files
hashed on their own thread), with stripComponents and its automatic form, and
for zip archives too. hypothesis draws the trees; the walk is the oracle.
"""

from __future__ import annotations

import datetime
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from controller.artifacts import archives, extracting, member_writer
from controller.manifests import model
from controller.tree import digests
from tests import support

SETTINGS: dict[str, Any] = {
    "derandomize": True,  # the same examples on every run
    "database": None,
    "deadline": datetime.timedelta(seconds=10),
    "max_examples": 150,
    "suppress_health_check": [hypothesis.HealthCheck.too_slow, hypothesis.HealthCheck.data_too_large],
}
FILE_MODES = [0o644, 0o600, 0o755, 0o700, 0o444, 0o000, 0o777, 0o1755, 0o640]
DIR_MODES = [0o755, 0o700, 0o777, 0o1777, 0o2755, 0o555, 0o750]
NAMES = ["a", "b", "lib", "é", "x y", ".hidden", "n" * 40]
SIZES = [0, 1, 511, 4096, member_writer.THREAD_HASH_SIZE - 1, member_writer.THREAD_HASH_SIZE, 300_000]


@st.composite
def trees(draw: Any) -> list[support.Member]:
    """Members of an archive that extraction accepts: parents before children, names unique, links inside."""
    dirs: list[str] = []
    files: list[str] = []
    members: list[support.Member] = []
    used: set[str] = set()
    for _ in range(draw(st.integers(1, 14))):
        parent = draw(st.sampled_from(["", *dirs]))
        name = (parent + "/" if parent else "") + draw(st.sampled_from(NAMES))
        if name in used:
            continue
        used.add(name)
        kind = draw(st.sampled_from(["file", "file", "dir", "implied", "symlink", "hardlink"]))
        if kind == "dir":
            members.append(support.Member(name + "/", type="dir", mode=draw(st.sampled_from(DIR_MODES))))
            dirs.append(name)
        elif kind == "implied":  # a directory only its file names: the writer makes it, 0755
            child = name + "/" + draw(st.sampled_from(NAMES))
            used.add(child)
            members.append(support.Member(child, os.urandom(draw(st.sampled_from(SIZES)))))
            files.append(child)
        elif kind == "symlink":  # relative, and inside (../a only below the top)
            target = draw(st.sampled_from(["a", "missing", ".", "lib/b", *(["../a"] if parent else [])]))
            members.append(support.Member(name, type="symlink", target=target))
        elif kind == "hardlink" and files:
            members.append(support.Member(name, type="hardlink", target=draw(st.sampled_from(files))))
        else:
            members.append(support.Member(name, os.urandom(draw(st.sampled_from(SIZES))),
                                          mode=draw(st.sampled_from(FILE_MODES))))
            files.append(name)
    return members


def _made_and_walked(data: bytes, strip: int | None, offload_after: int | None = member_writer.OFFLOAD_AFTER,
                     ) -> tuple[dict[str, digests.Entry], dict[str, digests.Entry]]:
    with tempfile.TemporaryDirectory() as scratch:
        dest = Path(scratch) / "tree"
        dest.mkdir()
        made = extracting.Made()
        source = io.BytesIO(data)
        root = extracting.extract(source, str(dest), fmt="auto", strip=strip, owner=None,
                                  budget=archives.Budget(model.Limits(max_ratio=1e9), lambda: source.tell()),
                                  spool_dir=scratch, made=made, offload_after=offload_after)
        return digests.made_entries(made), digests.scan(root, lambda rel: False, {})


@hypothesis.settings(**SETTINGS)
@hypothesis.given(trees(), st.sampled_from([None, 0, 1]), st.booleans(), st.sampled_from([None, 0, 2]))
def test_the_entries_from_what_extraction_made_equal_a_walk_of_the_tree(
        members: list[support.Member], strip: int | None, top: bool, offload_after: int | None) -> None:
    """offload_after: small files written by the second process from the first, from the third, or never."""
    if top:  # one top-level directory: what stripComponents (and its automatic form) removes
        members = [support.Member("release/", type="dir"),
                   *[support.Member("release/" + m.name, m.data, m.type,
                                    "release/" + m.target if m.type == "hardlink" else m.target, m.mode)
                     for m in members]]
    elif strip == 1:
        strip = 0  # stripping a level the tree does not have refuses the archive: another test's business
    made, walked = _made_and_walked(support.tar_bytes(members), strip, offload_after)
    assert made == walked


@hypothesis.settings(**SETTINGS)
@hypothesis.given(trees())
def test_the_entries_from_what_a_zip_extraction_made_equal_a_walk_of_the_tree(members: list[support.Member]) -> None:
    members = [m for m in members if m.type in ("file", "dir")]  # zip archives have no links here
    hypothesis.assume(members)
    made, walked = _made_and_walked(support.zip_bytes(members), None)
    assert made == walked


@pytest.mark.parametrize("offload_after", [None, 0])
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o027])
def test_the_entries_from_what_extraction_made_hold_whatever_the_umask(umask: int, offload_after: int | None) -> None:
    members = [support.Member("site/", type="dir", mode=0o775),
               support.Member("site/run", b"#!/bin/sh\n", mode=0o775),
               support.Member("site/deep/er/file", b"data", mode=0o664),
               support.Member("site/open", b"", mode=0o777)]
    old = os.umask(umask)
    try:
        made, walked = _made_and_walked(support.tar_bytes(members), None, offload_after)
    finally:
        os.umask(old)
    assert made == walked
    assert made["run"]["mode"] == "0755"  # the data filter takes group write away, the umask nothing more


NAME_TEXT = st.text(st.characters(codec=None, exclude_categories=()), min_size=1, max_size=12)  # surrogates too


@hypothesis.settings(**{**SETTINGS, "max_examples": 300})
@hypothesis.given(st.dictionaries(NAME_TEXT, st.integers(0, 0o7777), max_size=8),
                  st.dictionaries(NAME_TEXT, NAME_TEXT, max_size=8),
                  st.dictionaries(NAME_TEXT, st.tuples(st.integers(0, 0o7777), st.binary(max_size=4)), max_size=8))
def test_the_digest_lists_text_is_what_json_makes_of_the_entries(
        dirs: dict[str, int], symlinks: dict[str, str], files: dict[str, tuple[int, bytes]]) -> None:
    """made_json writes the entries as text itself (for speed); json.dumps of made_entries is the oracle, for any
    names (quotes, backslashes, control characters, non-ASCII, the surrogates of undecodable bytes) and any name
    that is two kinds at once (the later kind wins in both)."""
    import hashlib
    import json

    made = extracting.Made(dirs=dirs, symlinks=symlinks, files={
        name: member_writer.Written(hashlib.sha256(data).hexdigest(), 1, len(data), 0, 0, mode)
        for name, (mode, data) in files.items()})
    assert digests.made_json(made) == json.dumps(digests.made_entries(made), sort_keys=True)


def test_a_recorded_digest_list_is_the_stamped_document_of_the_entries(tmp_path: Path) -> None:
    import json

    made = extracting.Made(dirs={"d": 0o755, "d\\\"q\u0000": 0o1777}, symlinks={"d/l": "../x\udcff"}, files={
        "d/f": member_writer.Written("ab" * 32, 1, 2, 3, 4, 0o644)})
    digests.record(str(tmp_path), "v1", [], made, hooks_ran=False)
    text = Path(digests.digests_path(str(tmp_path), "v1")).read_text()
    assert text == json.dumps({"deployment": "v1", "entries": digests.made_entries(made), "format": 1, "version": 1},
                              sort_keys=True) + "\n"
    assert digests.read(str(tmp_path), "v1") == digests.made_entries(made)
