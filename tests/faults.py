"""A real `tether run` whose passes fail on purpose, through the engine's side-effect parameters:

    python -m tests.faults FAULTS BACKOFF_SECONDS run [tether run options...]

While the file `FAULTS/<application>.<point>` exists, a pass of that application raises, at that point, the
built-in exception its content names (RuntimeError, KeyError, OSError...), and appends the monotonic time to
`FAULTS/<application>.<point>.raised`. Points: `fetch` (the fetcher opens the artifact), any hook phase
(`afterActivate`: the hooks of that phase are about to run, whether the application has any or not), both in
the engine, and `gate` (the daemon asks the rollout gate whose query is the application's name).
Removing the file ends the fault. Failed passes are retried on a back-off whose base is BACKOFF_SECONDS.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence

from controller.artifacts import fetching
from controller.cli import logs
from controller.cli import main as cli
from controller.daemon import loop, queueing
from controller.engine import hooks, reconciling
from controller.fleet import gate
from controller.manifests import model


def fault(directory: str, name: str, point: str) -> None:
    """Raise what `<directory>/<name>.<point>` names, if that file exists."""
    path = os.path.join(directory, f"{name}.{point}")
    try:
        with open(path) as file:
            wanted = file.read().strip()
    except FileNotFoundError:
        return
    with open(path + ".raised", "a") as raised:
        raised.write(f"{time.monotonic()}\n")
    error = getattr(builtins, wanted)
    assert isinstance(error, type) and issubclass(error, Exception), wanted
    raise error(f"injected at {point} of {name}")


@dataclasses.dataclass(frozen=True)
class Fetcher(fetching.Fetcher):
    """The real fetcher, but a download of `/<name>/...` raises while `<faults>/<name>.fetch` exists."""

    faults: str = ""

    def open(self, url: str, headers: Mapping[str, str], *, max_bytes: int, sink: fetching.Sink | None = None,
             cancel: threading.Event | None = None, stall_seconds: float = fetching.STALL_SECONDS) -> fetching.Download:
        fault(self.faults, urllib.parse.urlsplit(url).path.split("/")[1], "fetch")
        return super().open(url, headers, max_bytes=max_bytes, sink=sink, cancel=cancel, stall_seconds=stall_seconds)


@dataclasses.dataclass
class Runner(hooks.Runner):
    """The real hook runner, but a phase of `name` raises while `<faults>/<name>.<phase>` exists."""

    faults: str = ""

    def run_phase(self, phase: str, app: model.Application, kind: model.Kind | None, deployment: str,
                  previous: str | None, on_run: Callable[[hooks.HookRun], None]) -> None:
        fault(self.faults, app.name, phase)
        super().run_phase(phase, app, kind, deployment, previous, on_run)


def ask_gate(faults: str) -> Callable[[model.Gate], gate.Answer]:
    """The daemon's gate, but asking a gate whose query is `name` raises while `<faults>/<name>.gate` exists."""

    def ask(asked: model.Gate) -> gate.Answer:
        fault(faults, asked.query, "gate")
        return gate.ask(asked)

    return ask


def main(argv: Sequence[str]) -> int:
    faults, base, *options = argv
    args = cli.parser().parse_args(options)
    logs.configure(args.log_format, logs.level(args.verbose, args.quiet, logging.INFO))
    engine = reconciling.Engine(args.state_dir, fetcher=Fetcher(faults=faults), hooks=Runner(faults=faults))
    backoff = queueing.BackOff(base_seconds=float(base), cap_seconds=4 * float(base))
    return loop.Daemon(cli.daemon_config(args), engine, ask_gate=ask_gate(faults), backoff=backoff).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

