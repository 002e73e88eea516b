"""`tether rollout plan` as plain data: for a list of nodes, the wave each is in and when it takes the
deployment, by the same rules each node applies (waves), with the gate assumed open. No I/O."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

from controller import errors
from controller.fleet import waves
from controller.manifests import model


@dataclasses.dataclass(frozen=True)
class PlannedNode:
    name: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Row:
    """One node of the plan."""

    node: str
    bucket: float
    wave: int | None  # index into rollout.waves, None: in no wave
    takes_at: float | None  # when the node takes spec.deployment, gate assumed open; None: never (in no wave)
    deployment_at: str | None  # what it runs at the time asked for, when one was


def nodes_from_data(data: Any, file: str) -> list[PlannedNode]:
    """The nodes of a nodes file, a YAML list of {name, labels}; PermanentError naming the entry otherwise."""
    if not isinstance(data, list) or not data:
        raise errors.PermanentError(f"{file}: expected a non-empty YAML list of nodes, each {{name, labels}}")
    nodes: list[PlannedNode] = []
    seen: set[str] = set()
    for index, entry in enumerate(data):
        where = f"{file}: node {index + 1}"
        if not isinstance(entry, dict) or not set(entry) <= {"name", "labels"}:
            raise errors.PermanentError(f"{where}: expected a mapping with the keys name and labels only")
        name, labels = entry.get("name"), entry.get("labels", {})
        if not isinstance(name, str) or not name or errors.CONTROL.search(name):
            raise errors.PermanentError(f"{where}: name must be a non-empty string without control characters")
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise errors.PermanentError(f"{where} ({name}): labels must map strings to strings; quote values such "
                                        "as \"true\"")
        if name in seen:
            raise errors.PermanentError(f"{where}: the name {name!r} appears twice")
        seen.add(name)
        nodes.append(PlannedNode(name, dict(labels)))
    return nodes


def plan(app: model.Application, nodes: Sequence[PlannedNode], at: float | None = None) -> list[Row]:
    """The rows of the plan, sorted by the time each node takes the deployment (never last), then by name."""
    rollout, deployment = app.rollout, app.deployment
    if rollout is None or deployment is None:
        raise errors.PermanentError(f"{app.file}: the application {app.name} has no spec.rollout to plan")
    rows = []
    for node in nodes:
        wave = waves.wave_of(node.name, node.labels, app.application, rollout)
        takes_at = None if wave is None else waves.opens_at(rollout, wave)
        running = None
        if at is not None:
            running = waves.decide(rollout, deployment, app.application, node.name, node.labels, at,
                                   gate_open=True, activated=None).desired
        rows.append(Row(node.name, waves.bucket(node.name, app.application, rollout.id), wave, takes_at, running))
    return sorted(rows, key=lambda r: (math.inf if r.takes_at is None else r.takes_at, r.node))
