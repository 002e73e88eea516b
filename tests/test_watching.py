"""The manifests directory's watcher (controller/daemon/watching.py): every change asks for a rescan, a file
renamed or moved out included, and watchdog does not hold a move back to pair it (design section 9, P3)."""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.daemon import watching


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    directory = tmp_path / "manifests"
    directory.mkdir()
    changed = threading.Event()
    watcher = watching.Watcher([str(directory)], changed.set)
    watcher.start()
    yield directory, changed
    watcher.stop()


def test_watchdog_holds_no_move_back_to_pair_it() -> None:
    watching.unpaired_moves()
    holders = []
    for module, name in watching.MOVE_PAIRING:
        try:
            holders.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    assert holders, "neither place of watchdog's move pairing exists: watching.MOVE_PAIRING needs the new one"
    assert [holder.delay for holder in holders] == [0] * len(holders)


@pytest.mark.parametrize("how", ["renamed into place", "moved out", "removed", "written in place"])
def test_every_change_to_a_manifest_asks_for_a_rescan(watched: tuple[Path, threading.Event], how: str,
                                                        tmp_path: Path) -> None:
    directory, changed = watched
    manifest = directory / "site.yaml"
    manifest.write_text("a: 1\n")
    assert changed.wait(10)
    changed.clear()
    if how == "renamed into place":
        staged = directory / ".site.yaml.tmp"
        staged.write_text("a: 2\n")
        os.rename(staged, manifest)
    elif how == "moved out":  # an IN_MOVED_FROM that no IN_MOVED_TO in a watched directory pairs
        (tmp_path / "elsewhere").mkdir()
        os.rename(manifest, tmp_path / "elsewhere" / "site.yaml")
    elif how == "removed":
        manifest.unlink()
    else:
        with manifest.open("a") as handle:
            handle.write("b: 2\n")
    assert changed.wait(10), f"a manifest {how} asked for no rescan"
