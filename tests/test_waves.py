"""The rollout decision (design section 11) as pure functions: the bucket byte for byte, the wave of a node, and the
deployment a node runs for every combination of clock, gate and what it already activated."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib

import pytest

from controller.fleet import waves
from controller.manifests import loading, model

START = datetime.datetime(2026, 12, 1, 10, 0, tzinfo=datetime.UTC).timestamp()
MINUTE, HOUR = 60.0, 3600.0
GATE = model.Gate(prometheus="http://prometheus.example.com:9090", query='ALERTS{alertstate="firing"}')

# sha256("<node>/acme/acme-v2"): its first 8 bytes big-endian, modulo 10000, divided by 100. Recompute with
#   python3 -c 'import hashlib; d = hashlib.sha256(b"web-01/acme/acme-v2").digest(); print(int.from_bytes(d[:8], "big") % 10000 / 100)'
BUCKETS = {
    "web-01": 43.84, "web-02": 19.27, "web-03": 1.17, "web-04": 47.85, "web-05": 72.34,
    "web-06": 42.49, "web-07": 41.86, "web-08": 18.35, "web-09": 35.17, "web-10": 9.52,
}


def rollout(*wave_list: model.Wave, gate: model.Gate | None = GATE, started_at: float | None = START,
            rollout_id: str = "acme-v2") -> model.Rollout:
    return model.Rollout(from_deployment="v1", id=rollout_id, started_at=started_at,
                         started_at_text="2026-12-01T10:00:00Z", waves=wave_list, gate=gate)


CANARY = model.Wave(selector={"canary": "true"})
QUARTER = model.Wave(percent=25, after_seconds=30 * MINUTE, after="30m")
EVERYONE = model.Wave(percent=100, after_seconds=2 * HOUR, after="2h")
THREE = rollout(CANARY, QUARTER, EVERYONE)


def decide(plan: model.Rollout, node: str, now: float, gate_open: bool | None = True,
           activated: str | None = None, labels: dict[str, str] | None = None) -> waves.Decision:
    return waves.decide(plan, "v2", "acme", node, labels or {}, now, gate_open, activated)


def test_the_bucket_table_of_ten_nodes_is_the_documented_formula() -> None:
    for node, expected in BUCKETS.items():
        digest = hashlib.sha256(f"{node}/acme/acme-v2".encode()).digest()
        assert int.from_bytes(digest[:8], "big") % 10000 / 100 == expected
        assert waves.bucket(node, "acme", "acme-v2") == expected


def test_the_bucket_reads_the_first_eight_bytes_big_endian_not_little_endian() -> None:
    digest = hashlib.sha256(b"web-05/acme/acme-v2").digest()
    assert digest[:8].hex() == "089609fb564d1c32"
    assert waves.bucket("web-05", "acme", "acme-v2") == 0x089609FB564D1C32 % 10000 / 100 == 72.34
    assert waves.bucket("web-05", "acme", "acme-v2") != int.from_bytes(digest[:8], "little") % 10000 / 100


def test_the_bucket_changes_with_the_application_and_the_rollout_id() -> None:
    assert waves.bucket("web-01", "acme", "acme-v3") != BUCKETS["web-01"]
    assert waves.bucket("web-01", "shop", "acme-v2") != BUCKETS["web-01"]


def test_a_percent_wave_takes_the_nodes_whose_bucket_is_below_it() -> None:
    plan = rollout(model.Wave(percent=25), gate=None)
    inside = {node for node in BUCKETS if waves.wave_of(node, {}, "acme", plan) == 0}
    assert inside == {node for node, bucket in BUCKETS.items() if bucket < 25} == {"web-02", "web-03", "web-08",
                                                                                   "web-10"}


def test_a_node_whose_bucket_equals_the_percent_is_not_in_the_wave() -> None:
    assert waves.wave_of("web-01", {}, "acme", rollout(model.Wave(percent=43.84))) is None
    assert waves.wave_of("web-01", {}, "acme", rollout(model.Wave(percent=43.85))) == 0


def test_a_selector_wave_needs_every_label_to_be_equal() -> None:
    plan = rollout(model.Wave(selector={"canary": "true", "zone": "eu-1"}))
    assert waves.wave_of("web-05", {"canary": "true", "zone": "eu-1", "role": "web"}, "acme", plan) == 0
    assert waves.wave_of("web-05", {"canary": "true"}, "acme", plan) is None
    assert waves.wave_of("web-05", {"canary": "True", "zone": "eu-1"}, "acme", plan) is None


def test_a_node_is_in_the_first_wave_that_takes_it() -> None:
    assert waves.wave_of("web-03", {"canary": "true"}, "acme", THREE) == 0  # canary, though its bucket is 1.17
    assert waves.wave_of("web-03", {}, "acme", THREE) == 1
    assert waves.wave_of("web-05", {}, "acme", THREE) == 2


def test_a_wave_with_selector_and_percent_takes_a_node_either_one_admits() -> None:
    plan = rollout(model.Wave(selector={"canary": "true"}, percent=10))
    assert waves.wave_of("web-05", {"canary": "true"}, "acme", plan) == 0
    assert waves.wave_of("web-10", {}, "acme", plan) == 0  # bucket 9.52
    assert waves.wave_of("web-05", {}, "acme", plan) is None


def test_a_canary_takes_the_deployment_at_startedat_and_not_a_second_before() -> None:
    labels = {"canary": "true"}
    before = decide(THREE, "web-05", START - 1, labels=labels)
    assert (before.desired, before.wave, before.in_open_wave, before.next_wave_at) == ("v1", 0, False, START)
    at = decide(THREE, "web-05", START, labels=labels)
    assert (at.desired, at.in_open_wave, at.next_wave_at, at.waiting_on_gate) == ("v2", True, None, False)


def test_the_first_wave_ignores_the_gate() -> None:
    assert decide(THREE, "web-05", START + 1, gate_open=None, labels={"canary": "true"}).desired == "v2"
    assert decide(THREE, "web-05", START + 1, gate_open=False, labels={"canary": "true"}).desired == "v2"


def test_a_later_wave_opens_at_its_after_when_the_gate_holds() -> None:
    just_before = decide(THREE, "web-03", START + 30 * MINUTE - 0.001)
    assert (just_before.desired, just_before.wave, just_before.next_wave_at) == ("v1", 1, START + 30 * MINUTE)
    assert not just_before.waiting_on_gate
    just_after = decide(THREE, "web-03", START + 30 * MINUTE)
    assert (just_after.desired, just_after.in_open_wave, just_after.next_wave_at) == ("v2", True, None)


@pytest.mark.parametrize("gate_open", [False, None])
def test_a_later_wave_stays_shut_while_the_gate_is_closed_or_unknown(gate_open: bool | None) -> None:
    held = decide(THREE, "web-03", START + HOUR, gate_open=gate_open)
    assert (held.desired, held.in_open_wave, held.waiting_on_gate, held.next_wave_at) == ("v1", False, True, None)
    assert ("closed" if gate_open is False else "unknown") in held.reason


def test_without_a_gate_every_wave_opens_at_its_time() -> None:
    plan = rollout(CANARY, QUARTER, EVERYONE, gate=None)
    for gate_open in (None, False, True):
        assert decide(plan, "web-03", START + 30 * MINUTE, gate_open=gate_open).desired == "v2"
        assert decide(plan, "web-05", START + 2 * HOUR - 1, gate_open=gate_open).desired == "v1"
        assert decide(plan, "web-05", START + 2 * HOUR, gate_open=gate_open).desired == "v2"
        assert not decide(plan, "web-05", START + 3 * HOUR, gate_open=gate_open).waiting_on_gate


def test_a_node_that_activated_the_deployment_keeps_it_when_the_gate_closes() -> None:
    took = decide(THREE, "web-03", START + 31 * MINUTE, gate_open=True)
    assert took.desired == "v2"
    later = decide(THREE, "web-03", START + 40 * MINUTE, gate_open=False, activated="v2")
    assert (later.desired, later.in_open_wave, later.waiting_on_gate) == ("v2", False, False)
    assert "keeps" in later.reason


def test_a_node_that_activated_only_from_does_not_keep_anything_else() -> None:
    assert decide(THREE, "web-03", START + 40 * MINUTE, gate_open=False, activated="v1").desired == "v1"
    assert decide(THREE, "web-03", START + 40 * MINUTE, gate_open=False, activated="v0").desired == "v1"


def test_a_startedat_in_the_future_opens_no_wave_for_anyone() -> None:
    plan = rollout(CANARY, QUARTER, EVERYONE, started_at=START + 24 * HOUR)
    for node in BUCKETS:
        decision = decide(plan, node, START + 3 * HOUR, labels={"canary": "true"} if node == "web-01" else {})
        assert (decision.desired, decision.in_open_wave) == ("v1", False)
        assert decision.next_wave_at is not None and decision.next_wave_at >= START + 24 * HOUR


def test_a_node_in_no_wave_stays_on_from_forever() -> None:
    plan = rollout(CANARY, QUARTER)
    decision = decide(plan, "web-05", START + 1000 * HOUR)  # bucket 72.34, not canary
    assert (decision.desired, decision.wave, decision.in_open_wave) == ("v1", None, False)
    assert (decision.opens_at, decision.next_wave_at, decision.waiting_on_gate) == (None, None, False)
    assert "no wave" in decision.reason


def test_percent_only_waves_take_the_fleet_in_bucket_order() -> None:
    plan = rollout(model.Wave(percent=20), model.Wave(percent=45, after_seconds=HOUR), gate=None)
    at_start = {node for node in BUCKETS if decide(plan, node, START).desired == "v2"}
    assert at_start == {"web-02", "web-03", "web-08", "web-10"}
    after_an_hour = {node for node in BUCKETS if decide(plan, node, START + HOUR).desired == "v2"}
    assert after_an_hour == {node for node, bucket in BUCKETS.items() if bucket < 45}
    assert "web-05" not in after_an_hour and "web-04" not in after_an_hour  # 72.34 and 47.85


def test_selector_only_waves_leave_unlabelled_nodes_on_from() -> None:
    plan = rollout(CANARY, model.Wave(selector={"zone": "eu-1"}, after_seconds=MINUTE), gate=None)
    assert decide(plan, "web-01", START + HOUR, labels={"zone": "eu-1"}).desired == "v2"
    assert decide(plan, "web-01", START + HOUR, labels={"zone": "us-1"}).desired == "v1"


def test_a_startedat_that_is_no_time_opens_nothing() -> None:
    decision = decide(rollout(CANARY, started_at=None), "web-01", START, labels={"canary": "true"})
    assert (decision.desired, decision.opens_at, decision.in_open_wave) == ("v1", None, False)


MANIFEST = """\
apiVersion: tether/v1
kind: Application
metadata: {name: acme}
spec:
  path: /opt/acme
  deployment: v2
  source: {url: "https://example.com/{deployment}.tgz", sha256: "%s"}
  rollout:
    from: v1
    startedAt: "2026-12-01T10:00:00Z"
    waves:
      - selector: {canary: "true"}
      - percent: 100
        after: 1h
""" % ("ab" * 32)


def test_effective_replaces_the_deployment_with_from_and_drops_the_sha256_of_the_other_artifact() -> None:
    app = loading.parse("/etc/tether/manifests/acme.yaml", MANIFEST)
    assert isinstance(app, model.Application)
    held = waves.effective(app, "web-05", {}, START + 1, None, None)
    assert held.deployment == "v1" and held.source is not None and held.source.sha256 is None
    assert waves.effective(app, "web-05", {"canary": "true"}, START + 1, None, None) is app
    assert waves.effective(app, "web-05", {}, START + HOUR, None, None) is app  # no gate: opens on time
    assert waves.effective(app, "web-05", {}, START + 1, None, "v2") is app  # already took it


def test_effective_leaves_an_application_without_a_rollout_alone() -> None:
    app = loading.parse("/etc/tether/manifests/acme.yaml", MANIFEST.split("  rollout:")[0])
    assert isinstance(app, model.Application) and app.rollout is None
    assert waves.effective(app, "web-05", {}, START, None, None) is app


def test_the_manifest_rollout_becomes_the_model_with_its_defaults() -> None:
    app = loading.parse("/etc/tether/manifests/acme.yaml", MANIFEST)
    assert isinstance(app, model.Application) and app.rollout is not None
    assert app.rollout.id == "v2" and app.rollout.started_at == START and app.rollout.gate is None
    assert app.rollout.waves == (model.Wave(selector={"canary": "true"}),
                                 model.Wave(percent=100.0, after_seconds=HOUR, after="1h"))
    assert dataclasses.replace(app.rollout.waves[0]).after_seconds == 0.0


def test_iso_writes_utc_with_a_z() -> None:
    assert waves.iso(START + 30 * MINUTE) == "2026-12-01T10:30:00Z"
