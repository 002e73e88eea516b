"""The cache of validated manifests in the state dir: used only for the same bytes, the same validation, and a
file tether wrote; anything else is validated again, and the cache never fails a scan."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.manifests import loading, validated_cache
from tests import support


def _tree(tmp_path: Path, count: int = 3) -> tuple[Path, Path]:
    manifests, state = tmp_path / "manifests", tmp_path / "state"
    state.mkdir()
    for index in range(count):
        support.write_manifest(manifests, support.application(
            f"app-{index}", tmp_path / "apps" / f"app-{index}", deployment="v1",
            source={"url": "https://example.com/a.tar.gz"}, hooks={"afterDeploy": "/bin/true"}))
    return manifests, state


def _load(manifests: Path, store: validated_cache.Store) -> loading.Catalog:
    return loading.load([str(manifests)], cache={}, store=store)  # a fresh daemon: nothing in memory


def _same(first: loading.Catalog, second: loading.Catalog) -> None:
    assert second.applications == first.applications and second.kinds == first.kinds
    assert [str(p) for p in second.problems] == [str(p) for p in first.problems]


def test_a_second_start_builds_every_application_from_the_cache_and_gets_what_validation_gave(tmp_path: Path) -> None:
    manifests, state = _tree(tmp_path)
    first = _load(manifests, validated_cache.Store(str(state)))
    assert os.stat(validated_cache.cache_path(str(state))).st_mode & 0o777 == 0o600
    again = validated_cache.Store(str(state))
    second = _load(manifests, again)
    assert (again.hits, again.misses) == (3, 0)
    _same(first, second)


def test_a_changed_manifest_is_validated_again_and_its_error_is_reported(tmp_path: Path) -> None:
    manifests, state = _tree(tmp_path)
    _load(manifests, validated_cache.Store(str(state)))
    text = (manifests / "app-1.yaml").read_text()
    (manifests / "app-1.yaml").write_text(text.replace("deployment: v1", "deployment: v1\n  colour: blue"))
    store = validated_cache.Store(str(state))
    found = _load(manifests, store)
    assert (store.hits, store.misses) == (2, 1)
    assert "app-1" not in found.applications and "app-1" in found.invalid_names
    assert any("colour" in str(p) for p in found.problems)


def test_a_cache_written_under_another_validation_key_is_ignored_and_rebuilt(tmp_path: Path) -> None:
    manifests, state = _tree(tmp_path)
    first = _load(manifests, validated_cache.Store(str(state), key="tether 0.1.0 and its schemas"))
    other = validated_cache.Store(str(state))  # this tether's version, schemas and validating code
    _same(first, _load(manifests, other))
    assert (other.hits, other.misses) == (0, 3)
    again = validated_cache.Store(str(state))
    _load(manifests, again)
    assert (again.hits, again.misses) == (3, 0)


def test_the_validation_key_covers_the_schemas_and_tethers_version(monkeypatch: pytest.MonkeyPatch) -> None:
    key = validated_cache.validation_key()
    monkeypatch.setattr(validated_cache, "__version__", "99.0.0")
    assert validated_cache.validation_key() != key
    monkeypatch.undo()
    original = validated_cache.validation.schema_text
    monkeypatch.setattr(validated_cache.validation, "schema_text",
                        lambda name: original(name).replace('"minimum": 0', '"minimum": 1'))
    assert validated_cache.validation_key() != key


def _rewrite_body(path: Path, change: Callable[[dict[str, list[object]]], object]) -> None:
    """Change the entries and give the file a matching digest: a damaged cache that its digest cannot catch."""
    header, body = path.read_bytes().split(b"\n", 1)
    entries = change(json.loads(body))
    body = json.dumps(entries).encode()
    head = {**json.loads(header), "sha256": hashlib.sha256(body).hexdigest()}
    path.write_bytes(json.dumps(head).encode() + b"\n" + body)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "a byte changed": lambda p: p.write_bytes(p.read_bytes().replace(b"/bin/true", b"/bin/fals")),
    "empty": lambda p: p.write_bytes(b""),
    "not JSON": lambda p: p.write_bytes(b"\x00\xff garbage\n{"),
    "a newer format": lambda p: p.write_bytes(p.read_bytes().replace(b'"format": 1', b'"format": 2', 1)),
    "entries of another shape": lambda p: _rewrite_body(p, lambda e: {k: {"document": v} for k, v in e.items()}),
    "documents that build nothing": lambda p: _rewrite_body(p, lambda e: {k: [{}, {}, "application"] for k in e}),
    "documents of another kind": lambda p: _rewrite_body(p, lambda e: {k: [v[0], v[1], "kind"] for k, v in e.items()}),
    "a list of entries": lambda p: _rewrite_body(p, lambda e: list(e)),
    "writable by others": lambda p: p.chmod(0o666),
    "a symlink": lambda p: (p.rename(p.with_suffix(".real")), p.symlink_to(p.with_suffix(".real"))),
    "a directory": lambda p: (p.unlink(), p.mkdir()),
    "a FIFO": lambda p: (p.unlink(), os.mkfifo(p)),  # never opened for a blocking read
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_or_untrusted_cache_is_ignored_and_every_manifest_validated_again(tmp_path: Path,
                                                                                     damage: str) -> None:
    manifests, state = _tree(tmp_path)
    first = _load(manifests, validated_cache.Store(str(state)))
    DAMAGE[damage](Path(validated_cache.cache_path(str(state))))
    store = validated_cache.Store(str(state))
    _same(first, _load(manifests, store))
    if damage != "documents that build nothing":  # those pass the shape check, fail to build, and are read again
        assert store.hits == 0
    again = validated_cache.Store(str(state))  # and the scan wrote a good cache again where it could
    _same(first, _load(manifests, again))
    assert (again.hits, again.misses) == ((0, 3) if damage == "a directory" else (3, 0))


def test_an_untrusted_cache_is_never_used_even_when_it_says_a_manifest_is_valid(tmp_path: Path) -> None:
    manifests, state = _tree(tmp_path, count=1)
    good = _load(manifests, validated_cache.Store(str(state)))
    path = Path(validated_cache.cache_path(str(state)))
    (manifests / "app-0.yaml").write_text("kind: Application\nmetadata: {name: app-0}\n")  # invalid now
    digest = hashlib.sha256((manifests / "app-0.yaml").read_bytes()).hexdigest()
    _rewrite_body(path, lambda entries: {digest: next(iter(entries.values()))})  # says it is the valid one
    path.chmod(0o664)
    found = _load(manifests, validated_cache.Store(str(state)))
    assert "app-0" in good.applications and "app-0" not in found.applications
    assert "app-0" in found.invalid_names


def test_a_cache_that_cannot_be_written_costs_a_warning_and_never_fails_the_scan(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifests, _ = _tree(tmp_path)
    not_a_dir = tmp_path / "state-file"
    not_a_dir.write_text("")
    with caplog.at_level(logging.WARNING):
        found = _load(manifests, validated_cache.Store(str(not_a_dir)))
    assert sorted(found.applications) == ["app-0", "app-1", "app-2"]
    assert "Cannot write the manifest cache" in caplog.text


def test_the_cache_keeps_only_the_manifests_of_the_last_scan(tmp_path: Path) -> None:
    manifests, state = _tree(tmp_path)
    store = validated_cache.Store(str(state))
    memory: dict[object, object] = {}
    loading.load([str(manifests)], cache=memory, store=store)  # type: ignore[arg-type]
    (manifests / "app-2.yaml").unlink()
    loading.load([str(manifests)], cache=memory, store=store)  # type: ignore[arg-type]
    again = validated_cache.Store(str(state))
    _load(manifests, again)
    assert (again.hits, again.misses) == (2, 0)
    assert len(json.loads(Path(validated_cache.cache_path(str(state))).read_bytes().split(b"\n", 1)[1])) == 2


def test_a_manifest_json_cannot_hold_exactly_is_validated_at_every_start(tmp_path: Path) -> None:
    manifests, state = _tree(tmp_path, count=0)
    support.write_manifest(manifests, support.application(  # YAML's integer key would come back as a string
        "mapped", tmp_path / "apps" / "mapped", deployment="v1", source={"url": "https://example.com/a.tar.gz"},
        userMapping={1: "www"}))
    first = _load(manifests, validated_cache.Store(str(state)))
    again = validated_cache.Store(str(state))
    _same(first, _load(manifests, again))
    assert again.hits == 0


@pytest.mark.parametrize("source", [
    {"url": "https://example.com/a.tar.gz", "headers": {"Authorization": "Bearer s3cr3t-literal"}},
    {"git": {"url": "https://example.com/r.git", "headers": {"Authorization": "Bearer s3cr3t-literal"}}},
    {"url": "https://deploy:s3cr3t-literal@example.com/a.tar.gz"},
    {"url": "https://example.com/a.tar.gz?X-Amz-Signature=s3cr3t-literal"},
], ids=["source.headers", "source.git.headers", "credentials in the URL", "a presigned URL"])
def test_a_manifest_that_carries_a_secret_is_never_copied_into_the_cache(tmp_path: Path,
                                                                             source: dict[str, object]) -> None:
    manifests, state = _tree(tmp_path, count=1)
    support.write_manifest(manifests, support.application("secret", tmp_path / "apps" / "secret", deployment="v1",
                                                          source=source))
    first = _load(manifests, validated_cache.Store(str(state)))
    again = validated_cache.Store(str(state))

    _same(first, _load(manifests, again))
    assert (again.hits, again.misses) == (1, 1)  # the other manifest came from the cache, this one did not
    assert b"s3cr3t-literal" not in Path(validated_cache.cache_path(str(state))).read_bytes()
