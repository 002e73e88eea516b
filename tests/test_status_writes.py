"""A pass that changes nothing writes nothing (design section 9, P4), through a real `tether run`.

Every status file is identified by its inode and its modification time in nanoseconds: tether writes a
status to a temporary file and renames it over the old one, so any write gives the file a new inode. The
daemon's passes are counted from the metrics (tether_reconcile_total), which move with every pass, written
or not.
"""

from __future__ import annotations

import json
import os
import signal

from tests import support
from tests.test_daemon import Start, app_manifest, put, serve, start, wait_converged, wait_until

__all__ = ["start"]  # the fixture, used by name

NAMES = [f"app-{index}" for index in range(6)]


def identities(node: support.Node) -> dict[str, tuple[int, int]]:
    found = {}
    for name in NAMES:
        st = os.stat(node.state / "status" / f"{name}.json")
        found[name] = (st.st_ino, st.st_mtime_ns)
    return found


def every_pass_done(daemon: object, before: dict[str, int], names: list[str]) -> bool:
    return all(daemon.passes(name) > before[name] for name in names)  # type: ignore[attr-defined]


def test_a_full_no_op_pass_rewrites_no_status_file_and_a_change_rewrites_only_its_own_application(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    for name in NAMES:
        serve(http, name, "v1")
        put(node.manifests, app_manifest(node, http, name))
    daemon = start()
    for name in NAMES:
        wait_converged(node, name, "v1")
    wait_until(lambda: all(daemon.passes(name) >= 1 for name in NAMES))
    settled = identities(node)
    last_success = {name: daemon.samples("tether_last_success_timestamp_seconds", name=name) for name in NAMES}

    for round_ in range(2):  # twice: the second pass starts from what the first one kept in memory
        before = {name: daemon.passes(name) for name in NAMES}
        daemon.signal(signal.SIGHUP)
        wait_until(lambda before=before: every_pass_done(daemon, before, NAMES),  # type: ignore[misc]
                   message=f"round {round_}: not every pass ran")
        assert identities(node) == settled, "a pass that changed nothing rewrote a status file"

    # The metrics still say when each pass last ended Ready, though the files were not written.
    assert all(daemon.samples("tether_last_success_timestamp_seconds", name=name) >= last_success[name]
               for name in NAMES)
    on_disk = json.loads((node.state / "status" / f"{NAMES[0]}.json").read_text())
    assert on_disk["current"] == "v1" and on_disk["lastSuccessAt"] is not None

    # A change of one application (a new deployment) rewrites its status, and no other.
    changed = NAMES[2]
    serve(http, changed, "v2")
    before = {name: daemon.passes(name) for name in NAMES}
    put(node.manifests, app_manifest(node, http, changed, deployment="v2"))
    wait_converged(node, changed, "v2")
    daemon.signal(signal.SIGHUP)  # and a full pass of every other application meanwhile
    wait_until(lambda: every_pass_done(daemon, before, NAMES))
    after = identities(node)
    assert after[changed] != settled[changed]
    assert {n: i for n, i in after.items() if n != changed} == {n: i for n, i in settled.items() if n != changed}


def test_a_status_file_replaced_or_removed_behind_the_daemon_is_written_again_at_the_next_pass(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    for name in NAMES[:3]:
        serve(http, name, "v1")
        put(node.manifests, app_manifest(node, http, name))
    daemon = start()
    for name in NAMES[:3]:
        wait_converged(node, name, "v1")
    wait_until(lambda: all(daemon.passes(name) >= 1 for name in NAMES[:3]))
    files = {name: node.state / "status" / f"{name}.json" for name in NAMES[:3]}
    good = json.loads(files[NAMES[0]].read_text())
    files[NAMES[0]].unlink()  # removed
    files[NAMES[1]].write_text("{}\n")  # emptied by hand: it says nothing
    kept = os.stat(files[NAMES[2]])

    before = {name: daemon.passes(name) for name in NAMES[:3]}
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: every_pass_done(daemon, before, NAMES[:3]))
    restored = json.loads(files[NAMES[0]].read_text())
    assert {k: v for k, v in restored.items() if k not in ("updatedAt", "lastSuccessAt")} == \
        {k: v for k, v in good.items() if k not in ("updatedAt", "lastSuccessAt")}
    assert json.loads(files[NAMES[1]].read_text())["current"] == "v1"
    assert (os.stat(files[NAMES[2]]).st_ino, os.stat(files[NAMES[2]]).st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)


def test_a_restarted_daemon_writes_no_status_of_applications_it_finds_converged(
        node: support.Node, http: support.HttpServer, start: Start) -> None:
    for name in NAMES:
        serve(http, name, "v1")
        put(node.manifests, app_manifest(node, http, name))
    first = start()
    for name in NAMES:
        wait_converged(node, name, "v1")
    wait_until(lambda: all(first.passes(name) >= 1 for name in NAMES))
    assert first.stop() == 0
    settled = identities(node)

    second = start()
    wait_until(lambda: all(second.passes(name) >= 1 for name in NAMES))
    assert second.samples("tether_application_ready") == len(NAMES)
    assert identities(node) == settled

