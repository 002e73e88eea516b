"""The manifests directory's watcher (controller/daemon/watching.py): every change asks for a rescan, a file
renamed or moved out included, and watchdog does not hold a move back to pair it (design section 9, P3)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
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
    holders = watching.move_pairing()
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


def test_a_symlink_swapped_on_the_way_to_the_manifests_directory_is_seen_and_so_is_what_follows(
        tmp_path: Path) -> None:
    """git-sync's layout: /git/current is the link it swaps, the manifests are /git/current/manifests."""
    for tree in ("a", "b", "c"):
        (tmp_path / "worktrees" / tree / "manifests").mkdir(parents=True)
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "worktrees" / "a")
    changed = threading.Event()
    watcher = watching.Watcher([str(link / "manifests")], changed.set)
    watcher.start()

    def seen(change: Callable[[], object]) -> bool:
        """Make the change; whether it asked for a rescan (which moves the watches, as the daemon's does)."""
        changed.clear()
        change()
        asked = changed.wait(10)
        watcher.refresh()
        return asked

    def swap(tree: str) -> None:
        staged = tmp_path / "current.new"
        staged.symlink_to(tmp_path / "worktrees" / tree)
        os.replace(staged, link)

    try:
        for tree in ("b", "c"):
            assert seen(lambda tree=tree: swap(tree)), f"the swap to {tree} asked for no rescan"
            manifest = tmp_path / "worktrees" / tree / "manifests" / "site.yaml"
            assert seen(lambda manifest=manifest: manifest.write_text("a: 1\n")), \
                f"a manifest written in {tree} after the swap asked for no rescan"
    finally:
        watcher.stop()


@pytest.mark.parametrize("how", ["removed and made again", "replaced by a directory renamed into place"])
def test_a_manifests_directory_replaced_is_watched_again_and_so_is_what_follows(tmp_path: Path, how: str) -> None:
    """A tool that replaces the directory instead of its files: the watch of the old one dies with it, and the
    new one (which may even have the old inode number) must be watched in its turn, every time."""
    directory = tmp_path / "manifests"
    directory.mkdir()
    changed = threading.Event()
    watcher = watching.Watcher([str(directory)], changed.set)
    watcher.start()

    def seen(change: Callable[[], object]) -> bool:
        changed.clear()
        change()
        asked = changed.wait(10)
        watcher.refresh()  # as the daemon does after the rescan
        return asked

    def replace() -> None:
        shutil.rmtree(directory)
        if how == "removed and made again":
            directory.mkdir()
        else:
            staged = tmp_path / "manifests.new"
            staged.mkdir()
            os.rename(staged, directory)

    try:
        for turn in range(3):
            assert seen(replace), f"replacing the directory (turn {turn}) asked for no rescan"
            assert seen(lambda turn=turn: (directory / f"site{turn}.yaml").write_text("a: 1\n")), \
                f"a manifest written in the directory that replaced it (turn {turn}) asked for no rescan"
    finally:
        watcher.stop()
