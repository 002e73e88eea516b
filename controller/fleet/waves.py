"""Which rollout wave a node is in and which deployment it should run: pure functions, no I/O.

Every node of a fleet evaluates the same manifest alone, so these rules are the contract (design section 11):

- Bucket: the first 8 bytes of sha256("<node>/<application>/<id>") (UTF-8) read as a big-endian unsigned
  integer, modulo 10000, divided by 100: a percent with two decimals, 0.00 to 99.99. `<application>` is
  spec.application (default metadata.name), `<id>` is rollout.id (default spec.deployment).
- Wave of a node: the FIRST wave, in manifest order, whose selector matches the node's labels (every key
  present with an equal value) or whose percent is above the node's bucket. A node in no wave stays on `from`.
- Wave i opens at startedAt + after_i; for i > 0 it is open only while the gate holds too (gate_open True;
  None, unknown, and False, closed, both keep it shut: no data never passes). Without a gate, every wave is
  open from its time on. Before startedAt no wave is open.
- Desired deployment: spec.deployment in an open wave, else `from`; but a node that has already activated
  spec.deployment keeps it, even once its wave's gate closes (no flapping; the fleet goes back by changing the
  manifest).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Mapping

from controller.manifests import model


@dataclasses.dataclass(frozen=True)
class Decision:
    """What one node should run for one application's rollout, and why."""

    desired: str  # spec.deployment or rollout.from
    wave: int | None  # index into rollout.waves, None: in no wave
    in_open_wave: bool
    opens_at: float | None  # startedAt + after of the node's wave (seconds since the epoch), None: in no wave
    next_wave_at: float | None  # opens_at when that is still in the future, else None
    waiting_on_gate: bool  # the wave's time has come but the gate keeps it shut
    reason: str  # one sentence


def bucket_hundredths(node: str, application: str, rollout_id: str) -> int:
    """The bucket in hundredths of a percent, 0 to 9999."""
    digest = hashlib.sha256(f"{node}/{application}/{rollout_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10000


def bucket(node: str, application: str, rollout_id: str) -> float:
    """The node's bucket for a rollout: a percent with two decimals, 0.0 to 99.99."""
    return bucket_hundredths(node, application, rollout_id) / 100


def matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every label the selector names is present with an equal value."""
    return all(labels.get(key) == value for key, value in selector.items())


def wave_of(node_name: str, labels: Mapping[str, str], application: str, rollout: model.Rollout) -> int | None:
    """The index of the first wave the node is in, or None."""
    hundredths = bucket_hundredths(node_name, application, rollout.id)
    for index, wave in enumerate(rollout.waves):
        if wave.selector is not None and matches(wave.selector, labels):
            return index
        if wave.percent is not None and hundredths < round(wave.percent * 100):
            return index
    return None


def opens_at(rollout: model.Rollout, wave: int) -> float | None:
    """When wave `wave` opens (seconds since the epoch), gate aside; None if startedAt is no real time."""
    if rollout.started_at is None:
        return None
    return rollout.started_at + rollout.waves[wave].after_seconds


def decide(rollout: model.Rollout, deployment: str, application: str, node_name: str, labels: Mapping[str, str],
           now: float, gate_open: bool | None, activated: str | None) -> Decision:
    """The deployment this node should run now, from the rollout, who the node is, the clock, the gate's answer
    (True open, False closed, None unknown: closed) and the deployment it last activated."""
    source = rollout.from_deployment
    wave = wave_of(node_name, labels, application, rollout)
    at = None if wave is None else opens_at(rollout, wave)
    time_come = at is not None and now >= at
    gated = wave is not None and wave > 0 and rollout.gate is not None
    is_open = time_come and (not gated or gate_open is True)
    waiting = time_come and gated and gate_open is not True and activated != deployment
    upcoming = at if at is not None and now < at else None
    where = "in no wave" if wave is None else f"in wave {wave + 1}"
    if activated == deployment:
        desired, reason = deployment, (f"The node has already activated {deployment}, which it keeps whatever the "
                                       f"gate says; it is {where}.")
    elif wave is None:
        desired, reason = source, f"The node is in no wave of the rollout, so it stays on {source}."
    elif is_open:
        desired, reason = deployment, f"The node is in wave {wave + 1}, which is open, so it takes {deployment}."
    elif at is None:
        desired, reason = source, f"The rollout's startedAt is no real time, so the node stays on {source}."
    elif not time_come:
        desired, reason = source, (f"The node is in wave {wave + 1}, which opens at {iso(at)}; until then it stays "
                                   f"on {source}.")
    else:
        answer = "unknown" if gate_open is None else "closed"
        desired, reason = source, (f"The node is in wave {wave + 1}, whose time has come but the gate is {answer}, "
                                   f"so it stays on {source}.")
    return Decision(desired=desired, wave=wave, in_open_wave=is_open, opens_at=at, next_wave_at=upcoming,
                    waiting_on_gate=waiting, reason=reason)


def effective(app: model.Application, node_name: str, labels: Mapping[str, str], now: float,
              gate_open: bool | None, activated: str | None) -> model.Application:
    """The application with spec.deployment replaced by what the rollout says this node runs now.

    Without a rollout (or without spec.deployment) the application is returned as it is. When the node stays
    on `from`, the source's sha256 is dropped: it is the digest of spec.deployment's artifact. Apply
    `tether deploy` overrides after this, so that they win over the rollout."""
    if app.rollout is None or app.deployment is None:
        return app
    decision = decide(app.rollout, app.deployment, app.application, node_name, labels, now, gate_open, activated)
    if decision.desired == app.deployment:
        return app
    source = None if app.source is None else dataclasses.replace(app.source, sha256=None)
    return dataclasses.replace(app, deployment=decision.desired, source=source)


FIRST = datetime.datetime.min.replace(tzinfo=datetime.UTC)  # 0001-01-01T00:00:00Z
LAST = datetime.datetime.max.replace(microsecond=0, tzinfo=datetime.UTC)  # 9999-12-31T23:59:59Z


def iso(seconds: float) -> str:
    """An RFC 3339 UTC time such as 2026-12-01T10:30:00Z (fractions of a second kept when there are any).

    Never raises: a time after the year 9999 (or not a number) shows as 9999-12-31T23:59:59Z, one before the
    year 1 as 0001-01-01T00:00:00Z; validation refuses a wave that would open then."""
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (ValueError, OverflowError, OSError):
        moment = FIRST if seconds < 0 else LAST
    return moment.isoformat(timespec="seconds" if moment.microsecond == 0 else "milliseconds").replace("+00:00", "Z")
