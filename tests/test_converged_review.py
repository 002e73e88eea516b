"""Review of the still-converged pass (controller/daemon/converged.py, controller/tree/fingerprint.py): changes
that land while a full no-op pass is between reading the tree and taking its fingerprint.

A remembered pass reads the tree (holding the application's lock, path_safety.verify, observe), publishes its
status, releases the lock, and only then lstats what it read (`Converged.remember`). Whatever changes in that
window is in the fingerprint as if the pass had seen it, unless the racy margin refuses the fingerprint. The
margin covers what has a ctime below the ancestors, and only when the filesystem's clock is the daemon's.
The tests make the change at the end of that window: from the pass's own `observations.reconciled` call, the
last thing a pass does before it remembers (an operator's command landing at that moment, not a mock of the
thing under test). Two findings of the review were fixed: an ancestor's change, and any change on a filesystem whose clock is
behind the daemon's, made while a remembering pass finished; the other tests pin down what was checked and holds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from controller import fsutil
from controller.daemon import converged, metrics
from tests import test_converged as converging
from tests.test_converged import Site, site, start

__all__ = ["site", "start"]  # fixtures, used by name


def change_while_remembering(site: Site, change: Callable[[], object]) -> None:
    """One full pass of `site` (it remembers), with `change` made just before it takes its fingerprint."""
    site.runner.converged.forget("site")  # the next pass is a full one
    observations = site.runner.observations
    real = observations.reconciled
    done: list[bool] = []

    def then_change(name: str, result: str, seconds: float) -> None:
        real(name, result, seconds)
        if name == "site" and not done:
            done.append(True)
            change()

    observations.reconciled = then_change  # type: ignore[method-assign]
    try:
        assert not site.still_converged(), "the pass that remembers must be a full one"
    finally:
        observations.reconciled = real  # type: ignore[method-assign]
    assert done, "the change was not made"


def with_one_clock(site: Site) -> None:
    """Give `site` the filesystem's own clock (a local filesystem), once its tree is older than the margin."""
    time.sleep(fsutil.RACY_NS / 1e9 + 0.2)  # not a synchronisation: the tree must be older than the margin
    site.runner.converged = converged.Converged(time.time_ns)
    assert not site.still_converged()  # a new Converged: this pass lstats what it read, for the next
    assert not site.still_converged()  # which remembers
    assert site.still_converged(), "an aged tree must be remembered with the real clock"


# REVIEW FINDING 1 (fixed on this branch): an ancestor's identity holds no time, so the racy margin cannot tell
# that it changed after the pass's path check; a chmod between that check and the fingerprint (taken after the
# lock is released) was remembered as safe, with one clock, until the next content check. A pass is now remembered
# only when what it read, ancestors included, had the same lstats before it read them (Converged.started).
@pytest.mark.parametrize("mode", [0o775, 0o777])
def test_an_ancestor_made_writable_by_others_while_a_pass_finishes_fails_the_next_pass(site: Site, mode: int) -> None:
    with_one_clock(site)
    change_while_remembering(site, lambda: site.node.apps.chmod(mode))
    assert oct(site.node.apps.stat().st_mode & 0o777) == oct(mode)
    assert not site.still_converged(), "the pass after an unsafe ancestor concluded that nothing changed"
    assert converging.reason(site) == "Failed", site.document()


@pytest.mark.parametrize("change", ["`current` retargeted", "`current` removed", "a persistent-data link repointed",
                                    "a staging leftover", "the application path made group-writable"])
def test_a_change_while_a_pass_finishes_on_a_filesystem_whose_clock_is_behind_is_acted_on(site: Site,
                                                                                           change: str) -> None:
    # the fixture's daemon clock is 10 s ahead of the filesystem's: a server's clock 10 s behind this node's
    make, noticed = converging.CHANGES[change]
    change_while_remembering(site, lambda: make(site))
    assert not site.still_converged(), f"the pass after {change} concluded that nothing changed"
    assert noticed(site), f"the pass did not act on {change}: {site.document()}"


@pytest.mark.parametrize("change", ["`current` retargeted", "a persistent-data link repointed",
                                    "the application path made group-writable"])
def test_with_one_clock_a_change_while_a_pass_finishes_is_not_remembered_and_the_next_pass_acts_on_it(
        site: Site, change: str) -> None:
    with_one_clock(site)
    make, noticed = converging.CHANGES[change]
    change_while_remembering(site, lambda: make(site))
    assert not site.still_converged(), f"the pass after {change} concluded that nothing changed"
    assert noticed(site), f"the pass did not act on {change}: {site.document()}"


def test_a_still_converged_pass_moves_the_last_success_series_and_counts_a_successful_pass(site: Site) -> None:
    registry = metrics.registry(metrics.Collector(site.runner.status_documents, site.runner.manifest_state,
                                                  site.runner.observations))

    def sample(metric: str, **labels: str) -> float | None:
        return registry.get_sample_value(metric, {"name": "site", **labels})

    passes = sample("tether_reconcile_total", result="success")
    site.now[0] += 300  # less than the content check interval: no content check is due
    assert site.still_converged()
    assert sample("tether_last_success_timestamp_seconds") == pytest.approx(int(site.now[0]), abs=1)
    assert sample("tether_reconcile_total", result="success") == (passes or 0) + 1
    assert sample("tether_application_ready") == 1
    assert all(sample("tether_drift", type=kind) == 0 for kind in ("current", "deployment", "links", "content"))


def test_the_racy_window_of_a_remembering_pass_spans_its_status_write_and_the_lock_release(site: Site) -> None:
    """What finding 1 rests on: the fingerprint is taken after the lock is released (a command could run)."""
    from controller.tree import locking

    held: list[bool] = []

    def probe() -> None:
        with locking.application_lock(str(site.node.state), "site", wait=False) as free:
            held.append(not free)

    change_while_remembering(site, probe)
    assert held == [False], "the application's lock is released before the fingerprint is taken"
    assert os.path.islink(site.path / "current")
