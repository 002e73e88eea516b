"""A deploy reuses the memory of its megabyte buffers instead of faulting fresh pages in for each one.

glibc's malloc returns a freed buffer of a megabyte to the kernel and faults the next one in, zeroed: without
file_process.keep_freed_memory a 64 MiB binary cost 29,000-37,000 page faults more than a one-byte file, about twice
its pages, and a sixth of the CPU time of extracting a large file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import support

SIZE = 64 * 1024 * 1024
PAGE = os.sysconf("SC_PAGE_SIZE")


def _deploy_faults(root: Path, size: int) -> int:
    """Minor page faults of a `tether reconcile` deploying a file of `size` bytes (and of the children it waited
    for)."""
    node = support.make_node(root)
    artifact = root / "site.tar.gz"  # random bytes: a compressed stream as large as the file, as for a binary
    artifact.write_bytes(support.tar_bytes([support.Member("site/big.bin", os.urandom(size))]))
    support.write_manifest(node.manifests, support.application(
        "site", node.apps / "site", deployment="v1", source={"url": artifact.as_uri()}))
    command = [sys.executable, "-m", "controller", "reconcile", "--manifests", str(node.manifests),
               "--state-dir", str(node.state)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (node.apps / "site" / "current" / "big.bin").stat().st_size == size
    return usage.ru_minflt


def test_deploying_a_large_file_faults_in_far_fewer_pages_than_it_passes_through(tmp_path: Path) -> None:
    tiny = _deploy_faults(tmp_path / "tiny", 1)
    big = _deploy_faults(tmp_path / "big", SIZE)
    pages = SIZE // PAGE
    assert big - tiny < pages // 2, f"{big - tiny} more page faults for a file of {pages} pages than for one byte"
