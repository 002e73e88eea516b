"""spec.rollout validation: the schema and the checks it cannot express, each error naming file, line and pointer."""

from __future__ import annotations

import pytest

from controller import errors
from controller.manifests import loading, model

FILE = "/etc/tether/manifests/acme.yaml"
HEAD = """\
apiVersion: tether/v1
kind: Application
metadata: {name: acme}
spec:
  path: /opt/acme
  deployment: v2
  rollout:
"""
GOOD = HEAD + """\
    from: v1
    startedAt: "2026-12-01T10:00:00Z"
    waves:
      - selector: {canary: "true"}
      - percent: 25
        after: 30m
      - percent: 100
        after: 2h
    gate:
      prometheus: http://prometheus.example.com:9090
      query: 'ALERTS{alertstate="firing"}'
"""


def refused(text: str) -> errors.ManifestError:
    with pytest.raises(errors.ManifestError) as caught:
        loading.parse(FILE, text)
    return caught.value


def test_a_good_rollout_parses_with_gate_defaults() -> None:
    app = loading.parse(FILE, GOOD)
    assert isinstance(app, model.Application) and app.rollout is not None
    assert app.rollout.gate == model.Gate("http://prometheus.example.com:9090", 'ALERTS{alertstate="firing"}', 30.0,
                                          10.0)
    assert [w.after_seconds for w in app.rollout.waves] == [0.0, 1800.0, 7200.0]


def test_a_shrinking_percent_is_refused_at_its_line() -> None:
    problem = refused(GOOD.replace("percent: 100", "percent: 20"))
    assert (problem.line, problem.pointer) == (14, "/spec/rollout/waves/2/percent")
    assert "may not shrink" in problem.detail and FILE in str(problem)


def test_after_going_backwards_is_refused() -> None:
    problem = refused(GOOD.replace("after: 2h", "after: 29m"))
    assert (problem.line, problem.pointer) == (15, "/spec/rollout/waves/2/after")
    assert "backwards" in problem.detail


def test_from_equal_to_the_deployment_is_refused() -> None:
    problem = refused(GOOD.replace("from: v1", "from: v2"))
    assert (problem.line, problem.pointer) == (8, "/spec/rollout/from")


def test_a_rollout_without_a_deployment_is_refused() -> None:
    problem = refused(GOOD.replace("  deployment: v2\n", ""))
    assert (problem.line, problem.pointer) == (6, "/spec/rollout")
    assert "needs spec.deployment" in problem.detail


def test_a_gate_without_a_query_is_refused() -> None:
    problem = refused(GOOD.replace("      query: 'ALERTS{alertstate=\"firing\"}'\n", ""))
    assert (problem.line, problem.pointer) == (16, "/spec/rollout/gate")
    assert "'query' is missing" in problem.detail


def test_a_blank_gate_query_is_refused() -> None:
    assert refused(GOOD.replace("'ALERTS{alertstate=\"firing\"}'", "'  '")).pointer == "/spec/rollout/gate/query"


def test_a_wave_with_neither_selector_nor_percent_is_refused() -> None:
    problem = refused(GOOD.replace("      - percent: 25\n        after: 30m", "      - after: 30m"))
    assert (problem.line, problem.pointer) == (12, "/spec/rollout/waves/1")
    assert "neither a selector nor a percent" in problem.detail


def test_an_empty_selector_is_refused() -> None:
    assert refused(GOOD.replace('{canary: "true"}', "{}")).pointer == "/spec/rollout/waves/0/selector"


@pytest.mark.parametrize("percent", ["0", "100.5", "12.345", "-1"])
def test_a_percent_out_of_range_or_with_three_decimals_is_refused(percent: str) -> None:
    assert refused(GOOD.replace("percent: 25", f"percent: {percent}")).pointer == "/spec/rollout/waves/1/percent"


def test_two_decimals_are_fine() -> None:
    app = loading.parse(FILE, GOOD.replace("percent: 25", "percent: 12.34"))
    assert isinstance(app, model.Application) and app.rollout is not None and app.rollout.waves[1].percent == 12.34


@pytest.mark.parametrize("after", ["30", "1d", "1.5h", "-1m", "m"])
def test_a_duration_that_is_not_seconds_minutes_or_hours_is_refused(after: str) -> None:
    assert refused(GOOD.replace("after: 30m", f"after: '{after}'")).pointer == "/spec/rollout/waves/1/after"


@pytest.mark.parametrize("started", ['"2026-12-01 10:00:00"', '"2026-12-01T10:00:00+01:00"', '"yesterday"'])
def test_a_startedat_that_is_not_rfc3339_utc_is_refused(started: str) -> None:
    assert refused(GOOD.replace('"2026-12-01T10:00:00Z"', started)).pointer == "/spec/rollout/startedAt"


def test_a_startedat_that_looks_right_but_is_no_real_time_is_refused() -> None:
    problem = refused(GOOD.replace("2026-12-01T10:00:00Z", "2026-13-45T25:00:00Z"))
    assert (problem.line, problem.pointer) == (9, "/spec/rollout/startedAt")
    assert "not a real UTC time" in problem.detail


def test_an_unquoted_startedat_says_to_quote_it() -> None:
    problem = refused(GOOD.replace('"2026-12-01T10:00:00Z"', "2026-12-01T10:00:00Z"))
    assert problem.pointer == "/spec/rollout/startedAt" and "put the value in quotes" in problem.detail


def test_a_gate_url_must_be_http_or_https() -> None:
    assert refused(GOOD.replace("http://prometheus", "ftp://prometheus")).pointer == "/spec/rollout/gate/prometheus"


def test_waves_after_the_first_without_a_gate_are_allowed() -> None:
    text = GOOD.split("    gate:")[0]
    app = loading.parse(FILE, text)
    assert isinstance(app, model.Application) and app.rollout is not None and app.rollout.gate is None


def test_waves_that_do_not_cover_every_node_are_allowed() -> None:
    app = loading.parse(FILE, GOOD.replace("percent: 100", "percent: 50"))
    assert isinstance(app, model.Application) and app.rollout is not None


def test_an_empty_wave_list_is_refused() -> None:
    text = GOOD.split("    waves:")[0] + "    waves: []\n"
    assert refused(text).pointer == "/spec/rollout/waves"
