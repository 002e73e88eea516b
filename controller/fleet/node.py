"""This node's identity: its name and labels, from the node file (`--node-config`) or the host name.

The node file is a one-document YAML file of kind Node (schemas/node.json), read with the
manifests' rules (controller/manifests/documents.py): owned by root or tether's own user and not
writable by group or others (nor is its directory), safe YAML, file:line errors. A missing file is
not an error: the node is then named after the host name (the kernel's node name, as `hostname` prints it), with
no labels.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from controller import errors
from controller.manifests import documents

log = logging.getLogger(__name__)
DEFAULT_PATH = "/etc/tether/node.yaml"
HOST_NAME = "host name"  # the source of an identity that no node file gave


@dataclasses.dataclass(frozen=True)
class Node:
    """Who this node is. `source` is the node file it was read from, or HOST_NAME."""

    name: str
    labels: dict[str, str]
    source: str

    @property
    def from_file(self) -> bool:
        return self.source != HOST_NAME

    def describe(self) -> str:
        """One line for people: the name, the labels and where they came from."""
        labels = ", ".join(f"{key}={value}" for key, value in sorted(self.labels.items())) or "no labels"
        origin = f"from {errors.shown_path(self.source)}" if self.from_file else "from the host name"
        return f"{self.name} ({labels}; {origin})"

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "labels": dict(self.labels), "source": "file" if self.from_file else HOST_NAME,
                "file": self.source if self.from_file else None}


def host_name() -> str:
    """The host name, as socket.gethostname() gives it on Linux (uname's node name), without importing socket."""
    return os.uname().nodename


def from_host(hostname: Callable[[], str] = host_name) -> Node:
    return Node(name=hostname(), labels={}, source=HOST_NAME)


def parse(file: str, text: str) -> Node:
    """The identity in a node file's text; raise ManifestError naming the line and the JSON pointer."""
    document, lines = documents.parse(file, text)
    complete = documents.validated(file, document, lines, "node")
    metadata = complete["metadata"]
    return Node(name=metadata["name"], labels=dict(metadata["labels"]), source=file)


def load(path: str = DEFAULT_PATH, *, secure: bool = True, euid: int | None = None,
         hostname: Callable[[], str] = host_name) -> Node:
    """This node's identity: the node file at `path`, or the host name when there is no such file.

    Raise ManifestError when the file exists but is refused or invalid.
    """
    euid = os.geteuid() if euid is None else euid
    try:
        text = documents.read_text(path, secure=secure, euid=euid)
        directory = os.path.dirname(os.path.abspath(path))
        if secure and (reason := documents.insecure_reason(directory, os.stat(directory), euid)):
            raise errors.ManifestError(path, documents.refusal(reason))
    except FileNotFoundError:
        return from_host(hostname)
    except OSError as exc:
        raise errors.ManifestError(path, f"cannot be read: {exc.strerror}") from exc
    return parse(path, text)


class Tracker:
    """The daemon's view of the node: the last good identity and why the node file is invalid now, if it is.

    `refresh` reads the node file again (the daemon does at every rescan); an invalid file keeps the
    last good identity. Before the first good one (`known`), `identity` is the host name's, a stand-in that
    no rollout may act on. Other threads read `identity`, `error` and `status()` meanwhile.
    """

    def __init__(self, path: str, *, secure: bool = True, hostname: Callable[[], str] = host_name) -> None:
        self.path, self.secure, self.hostname = path, secure, hostname
        self._state: tuple[Node, errors.ManifestError | None] = (from_host(hostname), None)
        self.known = False  # a valid node file (or none) was read: `identity` is this node's, not a stand-in

    @property
    def identity(self) -> Node:
        return self._state[0]

    @property
    def error(self) -> errors.ManifestError | None:
        return self._state[1]

    def status(self) -> dict[str, Any]:
        """What an application's status says of the node: its identity, and the node file's error."""
        identity, error = self._state
        return {**identity.as_json(), "error": str(error) if error else None}

    def refresh(self, first: bool = False) -> bool:
        """Read the node file; True when the identity or the node file's error changed."""
        last, last_error = self._state
        try:
            found, error = load(self.path, secure=self.secure, hostname=self.hostname), None
            self.known = True
        except errors.ManifestError as exc:
            found, error = last, exc
        if first:
            log.info("This node is %s.", found.describe())
        elif found != last:
            log.info("Node identity changed: %s; every application is reconciled again.", found.describe())
        elif error is None and last_error is not None:
            log.info("The node file is valid again; this node is still %s.", found.describe())
        if error is not None and str(error) != str(last_error):
            log.error("Invalid node file: %s; %s.", error, f"keeping the node identity {found.name}" if self.known
                      else "applications with a rollout wait for a valid one")
        self._state = (found, error)
        return found != last or str(error) != str(last_error)
