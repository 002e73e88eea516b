"""One evaluation of an application's rollout on this node, as the daemon and the one-shot commands both make it:
the effective application, the rollout part of its status, and when to look again.

The gate is asked only when the node's wave waits on it (its time has come, it is gated, the node has not
activated the deployment yet), through `ask` (the daemon's per-application cache, or `gate.ask` once).
The status part is `rollout: {wave, inOpenWave, nextWaveAt, gate, gateMessage}` (plus opensAt, waiting,
desired and reason): wave is the index into spec.rollout.waves (None: in no wave), nextWaveAt the opening time
of the node's wave while it is in the future, gate open, closed or unknown (not asked: the node does not wait
on it; a rollout without a gate is open).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from controller.fleet import gate as gates
from controller.fleet import waves
from controller.manifests import model

Ask = Callable[[model.Gate], gates.Answer]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    app: model.Application  # spec.deployment as the rollout decides for this node now
    decision: waves.Decision | None  # None: no rollout
    answer: gates.Answer | None  # None: the gate was not asked
    gated: bool  # the rollout has a gate

    @property
    def waiting(self) -> bool:
        """The node's wave time has come but the gate keeps it shut."""
        return self.decision is not None and self.decision.waiting_on_gate

    def gate_state(self) -> tuple[str, str]:
        """(open|closed|unknown, message)."""
        if not self.gated:
            return "open", "the rollout has no gate"
        if self.answer is None:
            return "unknown", "not asked: this node's wave does not wait on the gate"
        return ("open" if self.answer.open else "closed"), self.answer.message

    def status(self) -> dict[str, Any] | None:
        """The `rollout` field of the application's status, None without a rollout."""
        if self.decision is None:
            return None
        state, message = self.gate_state()
        next_at, opens_at = self.decision.next_wave_at, self.decision.opens_at
        return {"wave": self.decision.wave, "inOpenWave": self.decision.in_open_wave,
                "nextWaveAt": None if next_at is None else waves.iso(next_at),
                "opensAt": None if opens_at is None else waves.iso(opens_at), "waiting": self.waiting,
                "gate": state, "gateMessage": message, "desired": self.decision.desired,
                "reason": self.decision.reason}


def evaluate(app: model.Application, node_name: str, labels: Mapping[str, str], now: float,
             activated: str | None, ask: Ask | None) -> Evaluation:
    """The rollout's decision for this node now, asking the gate through `ask` only when the node waits on it
    (`ask` None: never, the gate stays unknown, i.e. closed)."""
    rollout, deployment = app.rollout, app.deployment
    if rollout is None or deployment is None:
        return Evaluation(app, None, None, False)
    decision = waves.decide(rollout, deployment, app.application, node_name, labels, now, None, activated)
    answer = None
    if decision.waiting_on_gate and rollout.gate is not None and ask is not None:
        answer = ask(rollout.gate)
        decision = waves.decide(rollout, deployment, app.application, node_name, labels, now, answer.open, activated)
    effective = waves.effective(app, node_name, labels, now, None if answer is None else answer.open, activated)
    return Evaluation(effective, decision, answer, rollout.gate is not None)


def waiting_text(document: Mapping[str, Any]) -> str:
    """For `tether status`: "waiting for wave 2 at 10:30 UTC (gate closed: ALERTS returned 1 series)", "in wave
    1 (open)", "in no wave"; empty without a rollout."""
    rollout = document.get("rollout")
    if not isinstance(rollout, Mapping):
        return ""
    wave = rollout.get("wave")
    if not isinstance(wave, int) or isinstance(wave, bool):
        return "rollout: in no wave"
    if rollout.get("inOpenWave"):
        return f"rollout: in wave {wave + 1} (open)"
    at = rollout.get("opensAt")
    when = f" at {clock_time(at)}" if isinstance(at, str) else ""
    if rollout.get("waiting"):
        return f"rollout: waiting for wave {wave + 1}{when} (gate {rollout.get('gate')}: {rollout.get('gateMessage')})"
    if isinstance(rollout.get("nextWaveAt"), str):
        return f"rollout: waiting for wave {wave + 1}{when}"
    return f"rollout: wave {wave + 1}: {rollout.get('reason')}"


def clock_time(at: str) -> str:
    """"10:30 UTC" for 2026-12-01T10:30:00Z, "10:30:15 UTC" when the seconds are not 0."""
    _, sep, moment = at.partition("T")
    if not sep or len(moment) < 8:
        return at
    return (moment[:5] if moment[5:8] == ":00" and not moment[8:].strip("Z") else moment[:8]) + " UTC"
