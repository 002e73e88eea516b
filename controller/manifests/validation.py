"""JSON Schema validation of manifest documents, with defaults and plain messages."""

from __future__ import annotations

import copy
import datetime
import functools
import importlib.resources
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from controller import errors as tether_errors  # `errors` below is this module's own function
from controller.manifests import quick_check

SCHEMA_FILES = {"application": "application.json", "kind": "kind.json", "node": "node.json"}
if TYPE_CHECKING:
    import jsonschema

# The manifests directory holds these kinds; a Node document is read from --node-config alone.
KIND_TO_SCHEMA = {"Application": "application", "ApplicationKind": "kind"}


def schema_text(name: str) -> str:
    """The JSON Schema `name` (application, kind or node) as shipped in the package."""
    resource = importlib.resources.files("controller.schemas").joinpath(SCHEMA_FILES[name])
    return resource.read_text(encoding="utf-8")


@functools.cache
def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(schema_text(name))
    return loaded


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[jsonschema.ValidationError]:
    """The `pattern` keyword with `$` as JSON Schema means it: the end, not also before a final newline."""
    import jsonschema  # loaded by _validator already

    if validator.is_type(instance, "string") and not quick_check.pattern_matches(pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


@functools.cache
def _validator(name: str) -> Any:
    # jsonschema (with attrs, referencing and the metaschemas) takes tens of milliseconds to import: only a
    # command that validates a document pays for it, once.
    import jsonschema

    strict = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})
    return strict(schema(name))


def pointer(path: Any) -> str:
    """A JSON pointer (RFC 6901) for a sequence of keys and indexes."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in path]
    return "/" + "/".join(parts) if parts else ""


SHOWN_CHARS = 120  # of a value quoted in an error: a megabyte of it would be copied to every log line and status


def _show(value: Any) -> str:
    """A value as JSON for a message; YAML-only types (dates) as text."""
    text = json.dumps(value, default=str)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def _plain(error: Any) -> str:
    """A plain-words message for one jsonschema error."""
    validator, value, instance = error.validator, error.validator_value, error.instance
    shown = _show(instance)
    if validator == "required":
        missing = [k for k in value if isinstance(instance, dict) and k not in instance]
        return f"the required field {missing[0] if missing else value!r} is missing"
    if validator == "additionalProperties":
        extra = _extra_fields(error)
        return f"unknown field {', '.join(repr(e) for e in extra)}; check its spelling"
    if validator == "type" and isinstance(instance, datetime.date):
        return f"expected a value of type {value}, got {shown}, which YAML read as a date; put the value in quotes"
    if validator == "type":
        return f"expected a value of type {value}, got {shown}"
    if validator in ("enum", "const"):
        allowed = value if validator == "enum" else [value]
        return f"{shown} is not one of {', '.join(json.dumps(a) for a in allowed)}"
    if validator == "pattern":
        return f"{shown} does not have the required form (pattern {value})"
    if validator == "not":
        return f"{shown} is a reserved name"
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        return f"{shown} is out of range ({validator} {value})"
    if validator in ("minLength", "maxLength"):
        return f"{shown} is too {'short' if validator == 'minLength' else 'long'}"
    if validator == "oneOf" and all(set(choice) == {"required"} for choice in value):
        keys = [key for choice in value for key in choice["required"]]
        return f"give exactly one of {', '.join(repr(k) for k in keys)}"
    if validator == "oneOf":
        expected = error.schema.get("description", "see `tether schema`")
        return f"{shown} is not a valid value here; {expected.rstrip('.')}"
    return str(error.message)[: SHOWN_CHARS * 4]


def _extra_fields(error: Any) -> list[str]:
    """The unknown keys an additionalProperties error is about."""
    return sorted(set(error.instance) - set(error.schema.get("properties", {})), key=str)


def errors(document: Any, schema_name: str) -> Iterator[tuple[str, str]]:
    """Yield (JSON pointer, message) for every schema violation, most specific first."""
    if quick_check.accepts(schema(schema_name), document):  # jsonschema would find nothing: not even imported
        return
    found = sorted(_validator(schema_name).iter_errors(document), key=lambda e: list(e.path))
    for error in found:
        best = error
        if error.validator == "oneOf" and error.context:
            # Prefer the explanation from the alternative that got furthest.
            best = max(error.context, key=lambda e: len(e.path))
            if not best.path or best.validator == "type":
                best = error
        where = list(best.absolute_path)
        if best.validator == "additionalProperties" and (extra := _extra_fields(best)):
            where.append(extra[0])  # point at the unknown key itself, so its line is named
        if "propertyNames" in best.schema_path:  # a key of a map (a label name): point at it, call it a key
            where.append(best.instance)
            yield pointer(where), "the key " + _plain(best)
            continue
        yield pointer(where), _plain(best)


def with_defaults(document: Any, schema_name: str) -> Any:
    """A copy of a valid document with the schema's defaults filled in."""
    result = copy.deepcopy(document)
    root = schema(schema_name)
    _fill(result, root, root)
    return result


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _fill(instance: Any, node: dict[str, Any], root: dict[str, Any]) -> None:
    node = _resolve(node, root)
    if not isinstance(instance, dict):
        return
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub, root)
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill(instance[key], sub, root)


# No manifest string may hold a NUL (no path, environment variable or argument can carry one) or a lone
# surrogate (YAML escapes such as "\udcff" make one; it cannot be encoded as UTF-8 for a file, a log or a scrape).
NEVER = re.compile(r"[\x00\ud800-\udfff]")
# Control characters (C0, DEL, C1) and Unicode line breaks make no sense in a name, path, label, URL or header
# (CR/LF in a header value would inject headers); only an inline hook or health check script is free text.
CONTROL = tether_errors.CONTROL
FREE_TEXT = re.compile(r"/spec/hooks/[^/]+|/spec/healthCheck/command")
HEADER_VALUE = re.compile(r"/spec/source/(git/)?headers/[^/]+")
NOT_LATIN_1 = re.compile(r"[^\x00-\xff]")


def _character(char: str, index: int) -> str:
    code, at = ord(char), f"at character {index + 1}"
    if code == 0:
        return f"a NUL character (U+0000) {at}"
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate (U+{code:04X}) {at}, which is not a character and cannot be written as UTF-8"
    if char in "\r\n\u2028\u2029":
        return f"a line break (U+{code:04X}) {at}"
    return f"the control character U+{code:04X} {at}"


def bad_strings(document: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Yield (path, message) for every key or string value holding a character it may not hold."""
    if isinstance(document, dict):
        for key, value in document.items():
            if isinstance(key, str) and (found := CONTROL.search(key)):
                yield (*path, key), f"the key holds {_character(found[0], found.start())}; remove it"
            yield from bad_strings(value, (*path, key))
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from bad_strings(item, (*path, index))
    elif isinstance(document, str):
        where = pointer(path)
        found = (NEVER if FREE_TEXT.fullmatch(where) else CONTROL).search(document)
        if found:
            yield path, f"the value holds {_character(found[0], found.start())}; remove it"
        elif HEADER_VALUE.fullmatch(where) and (wide := NOT_LATIN_1.search(document)):
            yield path, (f"the header value holds U+{ord(wide[0]):04X} at character {wide.start() + 1}, which HTTP "
                         "cannot send (header values are Latin-1); percent-encode it or put it in a file (fromFile)")
