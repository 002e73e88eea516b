"""The daemon's drift checks: structural drift after every pass, content drift on a slower interval.

Drift is a change to what tether last made (design section 6): nothing before an application's first
activation, and a desired deployment that failed to deploy is a failing pass (not Ready), not drift.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from controller import errors
from controller.engine import status
from controller.manifests import model
from controller.tree import drift, records

log = logging.getLogger(__name__)


class DriftWatch:
    def __init__(self, content_check_seconds: float, clock: Callable[[], float]) -> None:
        self.content_check_seconds = content_check_seconds
        self.clock = clock
        self.content: dict[str, list[str]] = {}  # application -> changed paths found by its last content check
        self.due: dict[str, float] = {}  # application -> when its next content check is due

    def record(self, app: model.Application, document: dict[str, Any], observed: records.Observed,
               structure: Callable[[str, records.Observed, str | None], drift.Structural] = drift.check_structure,
               ) -> None:
        """Check `app`, whose tree the pass left as `observed`, and write what was found into its status `document`
        (`structure` checks structural drift: the pass may have checked that snapshot already)."""
        made = observed.last_activated
        types = structure(app.path, observed, made).types if made is not None else []
        note = ""
        if observed.current is not None and self.content_due(app.name):
            self.due[app.name] = self.clock() + self.content_check_seconds
            try:
                self.content[app.name] = drift.check_content(app.path, observed.current, app.drift_ignore).paths
            except errors.PermanentError as exc:
                self.content[app.name], note = [], str(exc)
            if self.content[app.name]:
                log.warning("%s: %d files of %s changed since it completed, e.g. %s.", app.name,
                            len(self.content[app.name]), observed.current, ", ".join(self.content[app.name][:10]))
        files = self.content.get(app.name, [])
        status.set_drift(document, [*types, *(["content"] if files else [])], files, self.clock(), note)

    def content_due(self, name: str) -> bool:
        """Whether the next pass of `name` checks its content."""
        return self.clock() >= self.due.get(name, 0.0)

    def forget(self, name: str) -> None:
        self.content.pop(name, None)
        self.due.pop(name, None)
