"""Plans are plain data: these tests build observations by hand, without touching the disk."""

from __future__ import annotations

from controller.engine import planning
from controller.tree import records


def observed(current: str | None = None, previous: str | None = None, foreign: tuple[str, ...] = (),
             leftovers: tuple[str, ...] = (), **states: str) -> records.Observed:
    deployments = {
        name: records.Deployment(name, state.rstrip("-"), has_dir=not state.endswith("-"),
                                 completed_at=float(index))
        for index, (name, state) in enumerate(states.items())
    }
    return records.Observed("/srv/app", True, current, None, previous, deployments, current, foreign, leftovers)


def actions(plan: planning.Plan) -> list[tuple[str, str | None]]:
    return [(s.action, s.deployment) for s in plan.steps]


def test_an_empty_tree_gets_a_deploy_then_an_activation() -> None:
    plan = planning.plan("app", "v1", observed(), keep=5)
    assert actions(plan) == [("deploy", "v1"), ("activate", "v1")]
    assert not plan.converged


def test_a_converged_tree_gets_an_empty_plan() -> None:
    plan = planning.plan("app", "v1", observed(current="v1", v1="complete"), keep=5)
    assert actions(plan) == []
    assert plan.converged


def test_an_incomplete_deployment_is_cleaned_then_deployed_again() -> None:
    plan = planning.plan("app", "v2", observed(current="v1", v1="complete", v2="incomplete"), keep=5)
    assert actions(plan) == [("clean", "v2"), ("deploy", "v2"), ("activate", "v2")]


def test_a_complete_but_inactive_deployment_is_only_activated() -> None:
    plan = planning.plan("app", "v1", observed(current="v2", v1="complete", v2="complete"), keep=5)
    assert actions(plan) == [("activate", "v1")]


def test_a_failed_deployment_is_not_retried() -> None:
    plan = planning.plan("app", "v2", observed(current="v1", v1="complete", v2="failed"), keep=5)
    assert actions(plan) == [("blocked", "v2")]


def test_a_directory_tether_did_not_make_blocks_the_deploy_instead_of_being_overwritten() -> None:
    plan = planning.plan("app", "v2", observed(current="v1", foreign=("v2",), v1="complete"), keep=5)
    assert actions(plan) == [("blocked", "v2")]


def test_leftovers_of_an_interrupted_pass_are_cleaned_first() -> None:
    plan = planning.plan("app", "v1", observed(current="v1", leftovers=("/srv/app/.current-x",), v1="complete"), keep=5)
    assert actions(plan) == [("clean", None)]


def test_a_record_whose_directory_is_gone_is_forgotten_unless_it_is_desired() -> None:
    plan = planning.plan("app", "v2", observed(current="v2", v1="complete-", v2="complete"), keep=5)
    assert actions(plan) == [("clean", "v1")]


def test_a_suspended_application_gets_no_steps() -> None:
    plan = planning.plan("app", "v2", observed(), keep=5, suspended=True)
    assert plan.steps == () and plan.suspended and not plan.converged


def test_pruning_keeps_the_newest_and_never_the_active_or_previous_one() -> None:
    tree = observed(current="v1", previous="v2", v1="complete", v2="complete", v3="complete", v4="complete",
                    v5="complete")
    assert planning.prune_candidates(tree, "v1", keep=3) == ["v4", "v3"]
    assert planning.prune_candidates(tree, "v1", keep=1) == ["v5", "v4", "v3"]


def test_pruning_removes_failed_deployments_first_and_counts_the_one_being_deployed() -> None:
    tree = observed(current="v2", v1="complete", bad="failed", v2="complete")
    assert planning.prune_candidates(tree, "v3", keep=2) == ["bad", "v1"]
