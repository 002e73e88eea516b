from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import support


@pytest.fixture
def http() -> Iterator[support.HttpServer]:
    server = support.HttpServer()
    yield server
    server.close()


@pytest.fixture
def node(tmp_path: Path) -> support.Node:
    return support.make_node(tmp_path)
