"""records.observe rereads a bookkeeping file or listing only when it changed, and sees every change made behind
its back (by a command such as `tether deploy` or `rollback`, or by an operator)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller import fsutil
from controller.tree import known_files, records


def _tree(tmp_path: Path) -> Path:
    """An application with two complete deployments, v2 active, as tether leaves it."""
    path = tmp_path / "app"
    for directory in ("v1", "v2", ".tether/deployments", ".tether/staging", ".tether/logs", ".tether/digests"):
        (path / directory).mkdir(parents=True)
    for sequence, name in enumerate(("v1", "v2"), 1):
        records.write_record(str(path), name, records.COMPLETE, completedAt=1000.0 + sequence, sequence=sequence,
                             sha256="a" * 64)
    records.write_activation(str(path), "v2", "v1")
    records.switch_current(str(path), "v2")
    return path


def _old_enough() -> known_files.Known:
    """A cache whose clock says every file was changed long ago: it remembers what it reads at once (the tests
    change files within one clock tick of reading them, which the real clock's margin would never remember)."""
    return known_files.Known(clock_ns=lambda: time.time_ns() + 10 * fsutil.RACY_NS)


def _write_json(file: Path, document: object) -> None:
    fsutil.atomic_write_json(str(file), document)


def _edit_in_place(file: Path, change: Callable[[dict[str, object]], None]) -> None:
    document = json.loads(file.read_text())
    change(document)
    with open(file, "r+") as handle:  # same inode, as an editor that writes in place does
        handle.write(json.dumps(document))
        handle.truncate()


CHANGES: dict[str, Callable[[Path], object]] = {
    "tether deploy rewrites a record": lambda p: records.write_record(str(p), "v2", records.COMPLETE,
                                                                       activationPending=True),
    "a record marked failed": lambda p: records.write_record(str(p), "v1", records.FAILED, error="broken"),
    "a record edited in place": lambda p: _edit_in_place(p / ".tether/deployments/v1.json",
                                                         lambda d: d.update(state="failed")),
    "a record of a newer format": lambda p: _edit_in_place(p / ".tether/deployments/v1.json",
                                                           lambda d: d.update(format=99)),
    "a record removed": lambda p: (p / ".tether/deployments/v1.json").unlink(),
    "a record damaged": lambda p: (p / ".tether/deployments/v1.json").write_text("{not json"),
    "a record replaced by a symlink": lambda p: ((p / ".tether/deployments/v1.json").unlink(),
                                                 (p / ".tether/deployments/v1.json").symlink_to(p / "elsewhere")),
    "a new record": lambda p: records.write_record(str(p), "v3", records.INCOMPLETE),
    "tether rollback rewrites the activation": lambda p: records.write_activation(str(p), "v1", "v2"),
    "the activation edited in place": lambda p: _edit_in_place(p / ".tether/activation.json",
                                                               lambda d: d.update(previous=None)),
    "the activation removed": lambda p: (p / ".tether/activation.json").unlink(),
    "a running hook of a newer format": lambda p: _write_json(p / ".tether/running-hook.json", {"format": 7}),
    "current switched": lambda p: records.switch_current(str(p), "v1"),
    "current removed": lambda p: (p / "current").unlink(),
    "a deployment directory removed": lambda p: (p / "v1").rmdir(),
    "a directory tether did not make": lambda p: (p / "foreign").mkdir(),
    "a deployment directory replaced by a file": lambda p: ((p / "v1").rmdir(), (p / "v1").write_text("")),
    "a leftover link of a switch": lambda p: (p / ".current-abc").symlink_to(p / "v1"),
    "something left in staging": lambda p: (p / ".tether/staging/v3-xyz").mkdir(),
    "the records directory replaced by a symlink": lambda p: (
        (p / ".tether/deployments").rename(p / "moved"), (p / ".tether/deployments").symlink_to(p / "moved")),
    ".tether replaced by a symlink": lambda p: ((p / ".tether").rename(p / "meta"),
                                                (p / ".tether").symlink_to(p / "meta")),
    "the application directory replaced": lambda p: (p.rename(p.with_name("old")), _tree(p.parent)),
    "the application directory removed": lambda p: fsutil.remove_tree(str(p)),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_made_behind_the_cache_is_seen_by_the_next_observe(tmp_path: Path, change: str) -> None:
    path = _tree(tmp_path)
    known = _old_enough()
    before = records.observe(str(path), known)
    assert records.observe(str(path), known) == before  # remembered now
    CHANGES[change](path)
    after = records.observe(str(path), known)
    assert after == records.observe(str(path), known_files.Known())  # what a fresh read of the disk says
    assert after != before


def test_an_unchanged_tree_is_observed_with_stats_alone(tmp_path: Path) -> None:
    path = _tree(tmp_path)
    known = _old_enough()
    first = records.observe(str(path), known)
    reads = known.reads
    assert reads >= 5  # the application directory, the records listing, two records, staging, the activation
    assert records.observe(str(path), known) == first
    assert known.reads == reads


def test_files_changed_within_the_clock_margin_are_read_again_at_every_observe(tmp_path: Path) -> None:
    path = _tree(tmp_path)
    known = known_files.Known()  # the real clock: everything was written just now
    first = records.observe(str(path), known)
    reads = known.reads
    records.observe(str(path), known)
    assert known.reads == 2 * reads
    with open(path / ".tether/deployments/v1.json", "r+") as handle:  # same size, same inode, same tick maybe
        text = handle.read()
        handle.seek(0)
        handle.write(text.replace('"complete"', '"xomplete"'))
    assert records.observe(str(path), known).deployments["v1"].state == records.INCOMPLETE != \
        first.deployments["v1"].state


def test_a_bookkeeping_fifo_is_never_opened(tmp_path: Path) -> None:
    path = _tree(tmp_path)
    (path / ".tether/activation.json").unlink()
    os.mkfifo(path / ".tether/activation.json")
    observed = records.observe(str(path), _old_enough())  # would block on a FIFO opened for reading
    assert observed.previous is None and observed.last_activated is None


def test_what_is_gone_from_the_disk_is_forgotten_so_a_long_running_daemon_keeps_only_what_is_there(
        tmp_path: Path) -> None:
    path = _tree(tmp_path)
    known = _old_enough()
    records.observe(str(path), known)
    settled = len(known)
    for index in range(50):  # deployments come and go, as pruning makes them go
        records.write_record(str(path), f"w{index}", records.COMPLETE, sequence=10 + index, sha256="b" * 64)
        assert f"w{index}" in records.observe(str(path), known).deployments
        os.unlink(path / ".tether" / "deployments" / f"w{index}.json")
    records.observe(str(path), known)
    assert len(known) == settled

    fsutil.remove_tree(str(path))  # the application is gone altogether
    assert not records.observe(str(path), known).exists
    assert len(known) == 0
