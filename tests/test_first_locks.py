"""The first passes of a daemon take their locks at once, in a state dir without a locks directory yet."""

from __future__ import annotations

import threading
from pathlib import Path

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
