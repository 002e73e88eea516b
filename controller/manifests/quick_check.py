"""A quick yes to a document that jsonschema would accept, without importing jsonschema.

Importing jsonschema (with referencing, attrs and its metaschemas) takes 50-120 ms,
more than the rest of tether's start; validating a manifest then takes about a
millisecond. `accepts` knows the keywords tether's own schemas use, as jsonschema
reads them for draft 2020-12, and nothing else: where it is not sure (a keyword
it does not know, a comparison of lists), it says no. Then, and for every
document it finds invalid, validation.py asks jsonschema, which has the last
word and the messages. tests/test_quick_check.py holds it to that: every keyword
of the shipped schemas is one it knows, and it agrees with jsonschema on
documents that hypothesis derives from the schemas and mutates.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Keywords that only describe: they decide nothing (with_defaults reads "default").
ANNOTATIONS = frozenset({"$schema", "$comment", "title", "description", "default", "examples", "$defs",
                         "deprecated", "readOnly", "writeOnly"})
Check = Callable[[Any, Any, dict[str, Any]], bool]  # (the keyword's value, the instance, the root schema)


class Unsure(Exception):
    """A case this module does not decide exactly (nor, then, a `not` or a `oneOf` around it): jsonschema does."""


def pattern_matches(pattern: str, text: str) -> bool:
    """The `pattern` keyword as tether reads it: re.search, with a final `$` meaning the end (not also before a
    final newline, as Python's `$` would)."""
    return re.search(pattern, text) is not None and not (pattern.endswith("$") and text.endswith("\n"))


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, bool)


# jsonschema's types for draft 2020-12, exactly
TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda value: isinstance(value, str),
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "boolean": lambda value: isinstance(value, bool),
    "null": lambda value: value is None,
    "number": _number,
    "integer": lambda value: (isinstance(value, int) and not isinstance(value, bool))
    or (isinstance(value, float) and value.is_integer()),
}


def _type(kinds: Any, value: Any, root: dict[str, Any]) -> bool:
    return any(TYPES[kind](value) for kind in ([kinds] if isinstance(kinds, str) else kinds))


def _equal(a: Any, b: Any) -> bool:
    """jsonschema's equality (its _utils.equal), for anything but lists and maps: True is not 1, 1 is 1.0."""
    if a is b:
        return True
    if isinstance(a, str) or isinstance(b, str):
        return bool(a == b)
    if isinstance(a, (Sequence, Mapping)) or isinstance(b, (Sequence, Mapping)):
        raise Unsure("equality of lists or maps")
    if isinstance(a, bool) or isinstance(b, bool):
        return False  # (not the same boolean)
    return bool(a == b)


def _unique(unique: Any, value: Any, root: dict[str, Any]) -> bool:
    if not unique or not isinstance(value, list):
        return True
    if not all(isinstance(item, str) for item in value):
        raise Unsure("uniqueItems of other than strings")
    return len(set(value)) == len(value)


def _properties(properties: Any, instance: Any, root: dict[str, Any]) -> bool:
    return not isinstance(instance, dict) or all(
        valid(properties[key], value, root) for key, value in instance.items() if key in properties)


def _additional(extra: Any, instance: Any, root: dict[str, Any], known: Any) -> bool:
    return not isinstance(instance, dict) or all(
        valid(extra, value, root) for key, value in instance.items() if key not in known)


def _ref(ref: Any, instance: Any, root: dict[str, Any]) -> bool:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise Unsure(f"$ref {ref!r}")
    target: Any = root
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return valid(target, instance, root)


def _when(kind: str, check: Callable[[Any, Any], bool]) -> Check:
    """A keyword that applies to instances of one type (jsonschema's is_type first)."""
    applies = TYPES[kind]
    return lambda limit, value, root: not applies(value) or check(limit, value)


CHECKS: dict[str, Check] = {
    "type": _type,
    "properties": _properties,
    "required": _when("object", lambda keys, value: all(key in value for key in keys)),
    "propertyNames": lambda names, value, root: not isinstance(value, dict) or all(
        valid(names, key, root) for key in value),
    "minProperties": _when("object", lambda n, value: not len(value) < n),
    "maxProperties": _when("object", lambda n, value: not len(value) > n),
    "enum": lambda choices, value, root: any(_equal(choice, value) for choice in choices),
    "const": lambda choice, value, root: _equal(value, choice),
    "pattern": _when("string", lambda pattern, value: pattern_matches(pattern, value)),
    "minLength": _when("string", lambda n, value: not len(value) < n),
    "maxLength": _when("string", lambda n, value: not len(value) > n),
    "minimum": _when("number", lambda n, value: not value < n),  # as jsonschema compares (NaN passes)
    "maximum": _when("number", lambda n, value: not value > n),
    "exclusiveMinimum": _when("number", lambda n, value: not value <= n),
    "exclusiveMaximum": _when("number", lambda n, value: not value >= n),
    "items": lambda items, value, root: not isinstance(value, list) or all(valid(items, item, root) for item in value),
    "minItems": _when("array", lambda n, value: not len(value) < n),
    "maxItems": _when("array", lambda n, value: not len(value) > n),
    "uniqueItems": _unique,
    "oneOf": lambda choices, value, root: sum(valid(choice, value, root) for choice in choices) == 1,
    "not": lambda schema, value, root: not valid(schema, value, root),
    "$ref": _ref,
}


def valid(schema: Any, instance: Any, root: dict[str, Any]) -> bool:
    """Whether jsonschema finds `instance` valid against `schema` (below the schema `root`); Unsure where this
    module cannot tell exactly."""
    if isinstance(schema, bool):
        return schema
    if not isinstance(schema, dict):
        raise Unsure("not a schema")
    for keyword, value in schema.items():
        if keyword in CHECKS:
            if not CHECKS[keyword](value, instance, root):
                return False
        elif keyword == "additionalProperties":
            if not _additional(value, instance, root, schema.get("properties", {})):
                return False
        elif keyword not in ANNOTATIONS and not (keyword == "$id" and schema is root):  # (an $id below would
            raise Unsure(f"the keyword {keyword!r}")  # move where a $ref points)
    return True


def accepts(schema: dict[str, Any], document: Any) -> bool:
    """True only if jsonschema would find no error in `document` against `schema`. False: ask jsonschema."""
    try:
        return valid(schema, document, schema)
    except (Unsure, KeyError, TypeError, ValueError, re.error, RecursionError):
        return False
