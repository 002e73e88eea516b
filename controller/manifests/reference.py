"""The manifests reference in Markdown, generated from the JSON Schemas (`tether schema NAME --markdown`).

docs/manifests.md is this output; a test keeps the two equal."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from controller.manifests import validation

Schema = Mapping[str, Any]


HEADER = """# Manifests reference

Generated from the JSON Schemas (`schemas/`) by `make docs`; do not edit. `tether schema application`,
`tether schema kind` and `tether schema node` print the schemas themselves, `tether validate PATH`
checks manifest files against them and `tether node` reads the node file. Each file holds one YAML
document; see design sections 2 and 11 and the operator guide for examples.
"""


def document() -> str:
    """docs/manifests.md: every schema as a table."""
    return "\n".join([HEADER, markdown("application"), markdown("kind"), markdown("node")])


def markdown(which: str) -> str:
    schema: Schema = json.loads(validation.schema_text(which))
    lines = [f"## {schema['title']}", "", schema.get("description", ""), "",
             "| field | type | default | description |", "| --- | --- | --- | --- |"]
    for path, node, required in _fields(schema, schema, ""):
        default = f"`{json.dumps(node['default'])}`" if "default" in node else ("required" if required else "")
        lines.append(f"| `{path}` | {_cell(_type(schema, node))} | {default} | {_cell(_description(schema, node))} |")
    return "\n".join(lines) + "\n"


def _resolve(root: Schema, node: Schema) -> Schema:
    """`node` with its $ref (to #/$defs/...) merged in; the node's own keys win."""
    if "$ref" not in node:
        return node
    target = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return {**_resolve(root, target), **{k: v for k, v in node.items() if k != "$ref"}}


def _fields(root: Schema, node: Schema, prefix: str) -> Iterator[tuple[str, Schema, bool]]:
    node = _resolve(root, node)
    required = set(node.get("required", ()))
    for name, child in node.get("properties", {}).items():
        child = _resolve(root, child)
        path = f"{prefix}.{name}" if prefix else name
        yield path, child, name in required
        yield from _fields(root, child, path)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in _resolve(root, extra):
        yield from _fields(root, extra, f"{prefix}.*")
    items = node.get("items")
    if isinstance(items, dict) and "properties" in _resolve(root, items):
        yield from _fields(root, items, f"{prefix}[]")


def _type(root: Schema, node: Schema) -> str:
    node = _resolve(root, node)
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return " | ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    if "oneOf" in node and "type" not in node:  # an object with oneOf over its required keys is an object
        return " or ".join(_type(root, choice) for choice in node["oneOf"])
    kind = str(node.get("type", "any"))
    if kind == "object" and "properties" in node and not node.get("additionalProperties", True):
        return "object {" + ", ".join(node["properties"]) + "}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(root, node['additionalProperties'])}"
    if kind == "string" and "pattern" in node:
        return f"string matching `{node['pattern']}`"
    if kind == "array" and "items" in node:
        return f"array of {_type(root, node['items'])}"
    if kind in ("integer", "number"):
        low = f">= {node['minimum']}" if "minimum" in node else f"> {node['exclusiveMinimum']}" \
            if "exclusiveMinimum" in node else ""
        high = f"<= {node['maximum']}" if "maximum" in node else ""
        return " ".join(part for part in (kind, low, high) if part)
    return kind


def _description(root: Schema, node: Schema) -> str:
    text = str(node.get("description", ""))
    extra = node.get("additionalProperties")
    if isinstance(extra, dict) and (inner := _resolve(root, extra).get("description")):
        text = f"{text} Each value: {inner}.".strip()
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    print(document(), end="")
