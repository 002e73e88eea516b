"""One rollout evaluation on a node (controller/fleet/rollout_state.py): the gate is asked only while the node's
wave waits on it, the status `rollout` field, and the words `tether status` shows."""

from __future__ import annotations

import dataclasses

from controller.fleet import gate, rollout_state
from controller.manifests import model
from tests.test_waves import CANARY, GATE, HOUR, MINUTE, QUARTER, START, rollout

APP = model.Application(name="acme", file="/etc/tether/manifests/acme.yaml", path="/opt/acme", generation="0" * 64,
                        application="acme", environment="production",
                        deployment="v2", rollout=rollout(CANARY, QUARTER))


class Gate:
    def __init__(self, answer: gate.Answer) -> None:
        self.answer, self.asked = answer, 0

    def __call__(self, which: model.Gate) -> gate.Answer:
        assert which == GATE
        self.asked += 1
        return self.answer


CLOSED = gate.Answer(False, "ALERTS returned 1 series")


def test_the_gate_is_not_asked_before_the_wave_opens_and_a_pass_is_due_at_its_opening() -> None:
    ask = Gate(CLOSED)
    found = rollout_state.evaluate(APP, "web-03", {}, START + MINUTE, None, ask)
    assert ask.asked == 0 and found.app.deployment == "v1"
    assert found.status() == {"wave": 1, "inOpenWave": False, "nextWaveAt": "2026-12-01T10:30:00Z",
                              "opensAt": "2026-12-01T10:30:00Z", "waiting": False, "gate": "unknown",
                              "gateMessage": "not asked: this node's wave does not wait on the gate",
                              "desired": "v1", "reason": found.decision.reason if found.decision else ""}
    assert rollout_state.waiting_text({"rollout": found.status()}) == "rollout: waiting for wave 2 at 10:30 UTC"


def test_a_waiting_node_asks_the_gate_and_a_closed_answer_holds_it() -> None:
    ask = Gate(CLOSED)
    found = rollout_state.evaluate(APP, "web-03", {}, START + HOUR, None, ask)
    assert ask.asked == 1 and found.app.deployment == "v1" and found.waiting
    shown = rollout_state.waiting_text({"rollout": found.status()})
    assert shown == "rollout: waiting for wave 2 at 10:30 UTC (gate closed: ALERTS returned 1 series)"


def test_an_open_answer_lets_the_node_take_the_deployment_and_then_it_is_not_asked_again() -> None:
    ask = Gate(gate.Answer(True, "ALERTS returned no series"))
    found = rollout_state.evaluate(APP, "web-03", {}, START + HOUR, None, ask)
    assert found.app.deployment == "v2" and found.status()["gate"] == "open"  # type: ignore[index]
    kept = rollout_state.evaluate(APP, "web-03", {}, START + HOUR, "v2", ask)
    assert ask.asked == 1 and kept.app.deployment == "v2" and not kept.waiting


def test_the_canary_never_asks_the_gate_and_no_rollout_means_no_status() -> None:
    ask = Gate(CLOSED)
    canary = rollout_state.evaluate(APP, "web-03", {"canary": "true"}, START, None, ask)
    assert ask.asked == 0 and canary.app.deployment == "v2"
    assert rollout_state.waiting_text({"rollout": canary.status()}) == "rollout: in wave 1 (open)"
    plain = dataclasses.replace(APP, rollout=None)
    assert rollout_state.evaluate(plain, "web-03", {}, START, None, ask).status() is None
    assert rollout_state.waiting_text({}) == ""


def test_without_a_gate_the_gate_is_open() -> None:
    ungated = dataclasses.replace(APP, rollout=rollout(CANARY, QUARTER, gate=None))
    found = rollout_state.evaluate(ungated, "web-03", {}, START + HOUR, None, None)
    assert found.app.deployment == "v2" and found.gate_state() == ("open", "the rollout has no gate")
