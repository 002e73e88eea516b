"""The writer's shortcut for ordinary member names gives what the full checks give, for every name."""

from __future__ import annotations

import itertools

import pytest

from controller import errors
from controller.artifacts import member_names

# Pieces that make every case the checks tell apart: ".", "..", slashes in every position, non-ASCII, a
# backslash, a space, a control character, and a long component (three of them pass 255 bytes).
PIECES = ["a", ".", "/", "..", "b", "\u00e9", "\\", " ", "\x01", "x" * 120]


def _outcome(clean: object, raw: str, strip: int) -> str | None:
    try:
        return clean(raw, strip)  # type: ignore[operator, no-any-return]
    except errors.ArchiveError:
        return "refused"


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5])
def test_every_name_of_up_to_five_pieces_is_cleaned_as_the_full_checks_clean_it(length: int) -> None:
    for pieces in itertools.product(PIECES, repeat=length):
        raw = "".join(pieces)
        for strip in (0, 1, 2):
            assert _outcome(member_names.clean_name, raw, strip) == _outcome(member_names.checked_name, raw, strip), (
                raw, strip)


@pytest.mark.parametrize("raw", ["a/../b", "../a", "./a", "a/./b", "/a", "a//b", "a/\x00", "\u00e9/a", "a/..",
                                 "x" * 256, ("abcdefgh/" * 500)[:4097]])
def test_a_name_the_shortcut_does_not_take_still_meets_the_full_checks(raw: str) -> None:
    assert not member_names.PLAIN.fullmatch(raw) or len(raw) > member_names.MAX_COMPONENT


@pytest.mark.parametrize("raw,cleaned", [("site/index.html", "index.html"), ("site/", None), ("site/a/b/", "a/b"),
                                         ("site/... /x", "... /x")])
def test_the_shortcut_strips_leading_directories(raw: str, cleaned: str | None) -> None:
    assert member_names.clean_name(raw, 1) == cleaned
