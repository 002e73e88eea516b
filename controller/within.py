"""A blocking exchange (a question to a server over a socket) bounded in time as a whole.

Socket timeouts bound each read, not an answer trickled a byte at a time: the exchange runs on a thread of its
own, and past the deadline the caller cuts it (shuts its socket down) and goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def bounded(exchange: Callable[[], T], timeout: float, cut: Callable[[], None], name: str) -> T:
    """What `exchange()` returns or raises, run on a thread of its own and waited for `timeout` seconds in all.
    Past `timeout` this calls `cut()`, which must make the exchange give up (shut its socket down), gives the
    thread a second to end, and raises TimeoutError."""
    returned: list[T] = []
    raised: list[BaseException] = []

    def run() -> None:
        try:
            returned.append(exchange())
        except BaseException as exc:  # handed to the caller's thread
            raised.append(exc)

    worker = threading.Thread(target=run, name=name, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        cut()
        worker.join(1.0)
        raise TimeoutError(f"no answer within {timeout:g} s")
    if raised:
        raise raised[0]
    return returned[0]
