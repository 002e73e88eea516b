"""quick_check decides as jsonschema does, wherever it decides (issue 16: a deploy's start without jsonschema).

validation.errors takes quick_check's yes without asking jsonschema, and a `not`
or a `oneOf` turns a no of a subschema into a yes: so quick_check must agree with
jsonschema both ways wherever it does not say Unsure. hypothesis builds documents
from each shipped schema, mostly valid, with junk (wrong types, booleans for
numbers, 1.0 for 1, NaN, a final newline after a pattern's `$`, unknown keys)
in a few places; jsonschema, with tether's own `pattern`, is the oracle.
"""

from __future__ import annotations

import datetime
import math
import sys
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import yaml
from hypothesis import strategies as st

from controller.manifests import quick_check, validation

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = sorted(validation.SCHEMA_FILES)
SETTINGS: dict[str, Any] = {
    "derandomize": True,
    "database": None,
    "deadline": None,
    "max_examples": 400,
    "suppress_health_check": list(hypothesis.HealthCheck),
}
KNOWN = set(quick_check.CHECKS) | {"additionalProperties"} | quick_check.ANNOTATIONS
SCALAR_JUNK = st.sampled_from([None, True, False, 0, 1, -1, 1.0, 2.5, math.nan, math.inf, "", "x", "v1\n", "/a",
                               2**63, [], {}, ["x"], {"x": 1}, datetime.date(2024, 1, 2)])
JUNK = st.one_of(SCALAR_JUNK, st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                                           lambda inner: st.lists(inner, max_size=3)
                                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6))


def keywords(schema: Any, top: bool = True) -> set[str]:
    """Every keyword of `schema` and its subschemas ($id counted below the top only)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        found.update(key for key in schema if not (top and key == "$id"))
        for key in ("properties", "$defs"):
            for sub in schema.get(key, {}).values():
                found |= keywords(sub, False)
        for key in ("additionalProperties", "propertyNames", "items", "not"):
            if isinstance(schema.get(key), dict):
                found |= keywords(schema[key], False)
        for sub in schema.get("oneOf", ()):
            found |= keywords(sub, False)
    return found


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_keyword_of_the_shipped_schemas_is_one_quick_check_knows(name: str) -> None:
    assert keywords(validation.schema(name)) - KNOWN == set()


def test_quick_check_says_yes_to_the_examples_so_a_deploy_never_imports_jsonschema() -> None:
    documents = [doc for file in sorted((REPO / "examples").rglob("*.yaml"))
                 for doc in yaml.safe_load_all(file.read_text()) if isinstance(doc, dict)]
    kinds = {"Application": "application", "ApplicationKind": "kind", "Node": "node"}
    checked = 0
    for document in documents:
        name = kinds.get(document.get("kind", ""))
        if name is not None and validation._validator(name).is_valid(document):
            assert quick_check.accepts(validation.schema(name), document), document
            checked += 1
    assert checked >= 5


def _strategy(node: Any, root: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    return _valid_strategy(node, root, depth)


def _paths(document: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(document, dict):
        for key, value in document.items():
            found += _paths(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += _paths(value, (*path, index))
    return found


def _mutated(document: Any, path: tuple[Any, ...], junk: Any, how: int) -> Any:
    """`document` with the value at `path` replaced by `junk` (how 0), given a final newline (1), or given an
    unknown key (2); the same where that does not apply."""
    if not path:
        if how == 1 and isinstance(document, str):
            return document + "\n"
        if how == 2 and isinstance(document, dict):
            return {**document, "unknownKey": junk}
        return junk if how == 0 else document
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        return {**document, head: _mutated(document[head], rest, junk, how)}
    copy = list(document)
    copy[head] = _mutated(copy[head], rest, junk, how)
    return copy


@st.composite
def documents(draw: Any, schema: dict[str, Any]) -> Any:
    """A document built from `schema`, then up to two changes in random places."""
    document = draw(_strategy(schema, schema))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
        path = draw(st.sampled_from(_paths(document)))
        document = _mutated(document, path, draw(JUNK), draw(st.integers(0, 2)))
    return document


def _valid_strategy(node: Any, root: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    if not isinstance(node, dict) or depth > 12:
        return JUNK
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        return _valid_strategy(target, root, depth + 1)
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        return st.sampled_from(node["enum"])
    if "oneOf" in node:
        rest = {key: value for key, value in node.items() if key != "oneOf"}
        return st.one_of([_valid_strategy({**rest, **choice}, root, depth + 1) for choice in node["oneOf"]])
    kinds = node.get("type", "object" if "properties" in node else "string")
    kind = kinds if isinstance(kinds, str) else kinds[0]
    if kind == "object":
        properties = node.get("properties", {})
        required = [key for key in node.get("required", []) if key in properties]
        optional = {key: _strategy(sub, root, depth + 1) for key, sub in properties.items() if key not in required}
        fixed = st.fixed_dictionaries({key: _strategy(properties[key], root, depth + 1) for key in required},
                                      optional=optional)
        extra = node.get("additionalProperties", True)
        if isinstance(extra, dict):
            names = st.text(min_size=1, max_size=8)
            if "propertyNames" in node and "pattern" in node["propertyNames"]:
                names = st.from_regex(node["propertyNames"]["pattern"], fullmatch=True)
            more = st.dictionaries(names, _strategy(extra, root, depth + 1), max_size=3)
            return st.tuples(fixed, more).map(lambda pair: {**pair[1], **pair[0]})
        return fixed
    if kind == "array":
        return st.lists(_strategy(node.get("items", {}), root, depth + 1), min_size=node.get("minItems", 0),
                        max_size=min(node.get("maxItems", 3), 3))
    if kind == "integer":
        low = node.get("minimum", node.get("exclusiveMinimum", -10) + 1 if "exclusiveMinimum" in node else -10)
        high = node.get("maximum", low + 100)
        return st.integers(low, high) | st.sampled_from([low, high, float(low), float(high)])
    if kind == "number":
        low = node.get("minimum", node.get("exclusiveMinimum", 0))
        return st.floats(low, low + 1000, exclude_min="exclusiveMinimum" in node) | st.sampled_from([low + 0.5, math.nan])
    if kind == "boolean":
        return st.booleans()
    if kind == "string":
        if "pattern" in node:
            return st.from_regex(node["pattern"], fullmatch=True)
        return st.text(min_size=node.get("minLength", 0), max_size=node.get("maxLength", 12))
    return JUNK


def _agrees(name: str, document: Any) -> bool | None:
    schema = validation.schema(name)
    try:
        quick = quick_check.valid(schema, document, schema)
    except quick_check.Unsure:
        quick = None
    if quick is not None:
        assert quick == validation._validator(name).is_valid(document), document
    return quick


@pytest.mark.parametrize("name", SCHEMAS)
def test_quick_check_agrees_with_jsonschema_wherever_it_decides(name: str) -> None:
    schema = validation.schema(name)
    verdicts: list[bool | None] = []

    @hypothesis.settings(**SETTINGS)
    @hypothesis.given(documents(schema))
    def check(document: Any) -> None:
        verdicts.append(_agrees(name, document))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    check()
    assert verdicts.count(True) >= 20 and verdicts.count(False) >= 20, (name, verdicts.count(True))


@pytest.mark.parametrize("value, expected", [
    (True, False), (1, True), (1.0, True), ("1", False), (None, False), ([1], None), ({"a": 1}, None),
])
def test_quick_check_compares_as_jsonschema_does(value: Any, expected: bool | None) -> None:
    """enum and const: True is not 1, 1.0 is 1, a list or a map is left to jsonschema."""
    schema = {"enum": [1, "x"]}
    try:
        got: bool | None = quick_check.valid(schema, value, schema)
    except quick_check.Unsure:
        got = None
    assert got == expected


def test_a_document_quick_check_refuses_gets_jsonschemas_messages() -> None:
    document = {"apiVersion": "tether/v1", "kind": "Application", "metadata": {"name": "site"},
                "spec": {"path": "/srv/site", "deployment": "v1\n"}}
    assert not quick_check.accepts(validation.schema("application"), document)
    assert [where for where, _ in validation.errors(document, "application")] == ["/spec/deployment"]


EDGES = [None, True, False, 0, 1, -1, 2, 1.0, 0.5, math.nan, math.inf, -math.inf, 2**64, "", "a", "A", "x\n", "/",
         "/a", "v1", "v1\n", "1", "a" * 64, "a" * 300, [], ["a"], ["a", "a"], [1], [True, 1], {}, {"a": 1},
         {"a": "b"}, datetime.date(2024, 1, 2)]


def subschemas(schema: Any) -> list[Any]:
    """`schema` and every subschema in it, as keywords() walks them."""
    found = [schema]
    if isinstance(schema, dict):
        for key in ("properties", "$defs"):
            for sub in schema.get(key, {}).values():
                found += subschemas(sub)
        for key in ("additionalProperties", "propertyNames", "items", "not"):
            if isinstance(schema.get(key), dict):
                found += subschemas(schema[key])
        for sub in schema.get("oneOf", ()):
            found += subschemas(sub)
    return found


def near_limits(node: dict[str, Any]) -> list[Any]:
    """Values either side of the node's own limits."""
    values: list[Any] = []
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in node:
            limit = node[key]
            values += [limit - 1, limit, limit + 1, limit - 0.5, limit + 0.5, float(limit)]
    for key in ("minLength", "maxLength"):
        if key in node:
            values += ["a" * max(0, node[key] + step) for step in (-1, 0, 1)]
    for key in ("minItems", "maxItems"):
        if key in node:
            values += [["a"] * max(0, node[key] + step) for step in (-1, 0, 1)]
    for key in ("minProperties", "maxProperties"):
        if key in node:
            values += [{f"k{i}": "a" for i in range(max(0, node[key] + step))} for step in (-1, 0, 1)]
    return values


@pytest.mark.parametrize("name", SCHEMAS)
def test_quick_check_agrees_with_jsonschema_on_every_subschema_at_its_edges(name: str) -> None:
    """Every subschema of the shipped schema against edge values (booleans for numbers, 1.0, NaN, empty and long
    strings, a final newline, values either side of each limit): the same verdict wherever quick_check decides."""
    schema, validator = validation.schema(name), validation._validator(name)
    decided = 0
    for node in subschemas(schema):
        for value in [*EDGES, *near_limits(node if isinstance(node, dict) else {})]:
            try:
                quick = quick_check.valid(node, value, schema)
            except quick_check.Unsure:
                continue
            assert quick == validator.evolve(schema=node).is_valid(value), (node, value)
            decided += 1
    assert decided > 20 * len(subschemas(schema)), decided
