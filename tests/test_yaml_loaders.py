"""A manifest is read by libyaml's loader first and by PyYAML's own where libyaml refuses or fails: the same
documents and lines from both for what both read, and PyYAML's clear errors for what is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import yaml
from hypothesis import given, settings

from controller import errors
from controller.manifests import documents

REPO = Path(__file__).resolve().parents[1]
TRICKY = [
    "base: &base {user: www, retention: {keep: 3}}\nspec:\n  <<: *base\n  path: /srv/a\n",
    "# a comment\nkey: |\n  two\n  lines\nother: >-\n  folded\n  text\n",
    "unicode: \"caf\\u00e9 \\U0001F600\"\nplain: naïve ✓\nempty:\nnull_value: ~\n",
    "numbers: [0x1F, 0o17, 1_000, 1.5e3, .inf, -.Inf, .nan]\nbools: [yes, No, on, off, true]\n",
    "dates: [2024-01-02, 2024-01-02T03:04:05Z]\nquoted: '2024-01-02'\n",
    "list:\n- a\n-   - nested\n    - list\n- {flow: map, with: [items]}\n",
    "windows: line\r\nends: here\r\n",
    "\ufeffbom: first\n",
]


def _both(text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    fast = documents.parse("m.yaml", text)
    with monkeypatch.context() as patch:
        patch.setattr(documents, "FAST_LOADER", None)
        clear = documents.parse("m.yaml", text)
    return fast, clear


def test_libyaml_is_there_to_be_used() -> None:
    # Debian's python3-yaml and PyPI's wheels both have it; without it every document is read by PyYAML alone.
    assert documents.FAST_LOADER is yaml.CSafeLoader


@pytest.mark.parametrize("text", TRICKY + [path.read_text() for path in sorted((REPO / "examples").rglob("*.yaml"))])
def test_both_loaders_give_the_same_document_and_lines(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, clear = _both(text, monkeypatch)
    assert fast == clear


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) |
                      st.dictionaries(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                                              max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8), values,
                       min_size=1, max_size=5), st.sampled_from([False, True]))
def test_any_mapping_dumped_as_yaml_reads_the_same_with_both(document: dict[str, Any], flow: bool) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    fast = documents.parse("m.yaml", text)
    original = documents.FAST_LOADER
    documents.FAST_LOADER = None
    try:
        clear = documents.parse("m.yaml", text)
    finally:
        documents.FAST_LOADER = original
    assert fast == clear


@pytest.mark.parametrize("text", [
    "key: 'unterminated\nother: 1\n",
    "key: [1, 2\n",
    "a: 1\n\tb: 2\n",
    "a: 1\n---\nb: 2\n",
    "a: 1\na: 2\n",
    "a: \x07bell\n",
    "a: " + "[" * 2000 + "]" * 2000 + "\n",  # deeper than libyaml's 1000 levels
    "a: " + "[" * 200 + "]" * 200 + "\n",  # deeper than a manifest may be
    "n: " + "9" * 5000 + "\n",
])
def test_what_is_refused_gets_pyyamls_error(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(errors.ManifestError) as fast:
        documents.parse("m.yaml", text)
    monkeypatch.setattr(documents, "FAST_LOADER", None)
    with pytest.raises(errors.ManifestError) as clear:
        documents.parse("m.yaml", text)
    assert str(fast.value) == str(clear.value)
