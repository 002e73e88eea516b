"""A deploy reuses the memory of its megabyte buffers instead of faulting fresh pages in for each one.

glibc's malloc returns a freed buffer of a megabyte to the kernel and faults the next one in, zeroed: without
file_process.keep_freed_memory a 64 MiB binary cost some 30,000 page faults more than a tiny artifact, twice
its pages, and a sixth of the CPU time of extracting a large file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests import support

SIZE = 64 * 1024 * 1024
PAGE = 4096


class _Noise:
    """Bytes that do not compress (as a binary's mostly do not), so that the compressed stream is as large."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, size: int = -1) -> bytes:
        count = self.left if size < 0 else min(size, self.left)
        self.left -= count
        return os.urandom(count)


def _artifact(path: Path, size: int) -> Path:
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("site/big.bin")
        info.size = size
        tar.addfile(info, _Noise(size))
    return path


def _deploy_faults(root: Path, size: int) -> int:
    """Minor page faults of a `tether reconcile` deploying a file of `size` bytes (and of the children it waited
    for)."""
    node = support.make_node(root)
    artifact = _artifact(root / "site.tar.gz", size)
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
