"""docs/manifests.md is generated from the schemas, and its tables are well formed."""

from __future__ import annotations

import json
import re

from controller.manifests import reference, validation
from tests import support


def test_docs_manifests_md_is_what_the_schemas_generate_now() -> None:
    shipped = (support.REPO / "docs" / "manifests.md").read_text()

    assert shipped == reference.document(), "the schemas changed: run `make docs` and commit docs/manifests.md"


def test_every_schema_field_has_one_row_of_four_cells() -> None:
    for which in ("application", "kind"):
        rows = [line for line in reference.markdown(which).splitlines() if line.startswith("| `")]
        schema = json.loads(validation.schema_text(which))
        spec = schema["properties"]["spec"]["properties"]

        for row in rows:
            assert len(re.split(r"(?<!\\)\|", row)) == 6, row  # four cells between five unescaped bars
        paths = [row.split("`")[1] for row in rows]
        assert [f"spec.{name}" for name in spec] == [p for p in paths if p.count(".") == 1 and p.startswith("spec.")]
        assert len(paths) == len(set(paths))
