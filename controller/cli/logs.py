"""Logging setup for the command line: text or JSON lines on stderr."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


LEVELS = (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG - 1)  # the last: -vv, libraries too


def level(verbose: int, quiet: int, default: int = logging.WARNING) -> int:
    """The level that `-v` (each: one step more) and `-q` (each: one step less) make of `default`."""
    index = LEVELS.index(default) + verbose - quiet
    return LEVELS[max(0, min(index, len(LEVELS) - 1))]


def configure(log_format: str, threshold: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(threshold)
    # watchdog's DEBUG lines (every inotify event) drown tether's own; they come with -vv only.
    logging.getLogger("watchdog").setLevel(threshold if threshold < logging.DEBUG else max(threshold, logging.INFO))
