"""The first passes of a daemon take their locks at once, in a state dir without a locks directory yet;
anything else standing where the locks go is a permanent error, and nothing is made through it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from controller import errors
from controller.tree import locking


def test_many_passes_taking_their_first_locks_at_once_all_get_them(tmp_path: Path) -> None:
    for attempt in range(30):  # each round a fresh state dir: the race is over the locks directory's creation
        state = tmp_path / f"state-{attempt}"
        state.mkdir()
        start, failures = threading.Barrier(8), list[BaseException]()

        def take(name: str, state: Path = state, start: threading.Barrier = start,
                 failures: list[BaseException] = failures) -> None:
            start.wait()
            try:
                with locking.application_lock(str(state), name):
                    pass
            except BaseException as exc:  # collected and asserted on below
                failures.append(exc)

        threads = [threading.Thread(target=take, args=(f"app-{index}",)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures, failures
        assert sorted(p.name for p in (state / "locks").iterdir()) == sorted(f"app-{i}.lock" for i in range(8))


PLANTED: dict[str, Callable[[Path], None]] = {
    "the locks directory is a file": lambda state: (state / "locks").write_text(""),
    "the lock file is a directory": lambda state: (state / "locks" / "site.lock").mkdir(parents=True),
    "the lock file is a FIFO": lambda state: ((state / "locks").mkdir(), os.mkfifo(state / "locks" / "site.lock")),
    "the lock file is a symlink": lambda state: ((state / "locks").mkdir(),
                                                 (state / "locks" / "site.lock").symlink_to(state / "target")),
    "the lock file is a dangling symlink": lambda state: ((state / "locks").mkdir(),
                                                          (state / "locks" / "site.lock").symlink_to(state / "no")),
}


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_anything_but_a_missing_locks_directory_is_a_permanent_error_and_nothing_is_made_through_it(
        tmp_path: Path, planted: str) -> None:
    (tmp_path / "target").write_text("kept")
    PLANTED[planted](tmp_path)
    before = sorted((str(p), p.is_symlink()) for p in tmp_path.rglob("*"))

    with pytest.raises(errors.PermanentError, match="remove"), locking.application_lock(str(tmp_path), "site"):
        pass

    assert sorted((str(p), p.is_symlink()) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "target").read_text() == "kept"
