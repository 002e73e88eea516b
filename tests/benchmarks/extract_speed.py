"""Extraction alone, in process, against `tar xf` and a bare Python loop of the same system calls.

A standalone script, not a pytest test (run it as root, for the fresh file systems):

    .venv/bin/python tests/benchmarks/extract_speed.py [--shapes real,small] [--repeat 3] [--artifacts DIR]

deploy_speed.py times whole deploys; this separates what extraction itself costs
from start-up, download and durability. The artifact (deploy_speed.py's shapes,
built there or taken from --artifacts) is decompressed into memory first, so
that no variant pays for gzip. Interleaved, each run on a fresh loop-mounted
ext4 in /dev/shm:

  tar      `tar xf` of the uncompressed tar (a file in /dev/shm)
  bare     a Python loop making the writer's system calls for every member, names and data already in memory
           (mkdir; open O_EXCL|O_NOFOLLOW relative to a directory descriptor, write, utime, fstat, close), plus
           the sha256 of each file: the floor of any pure-Python writer
  tether   extracting.extract of the same bytes (tether's reader, checks, writer and digests)

Figures are wall seconds and CPU seconds: the extracting thread's (time.thread_time) plus its child
processes' (tar itself; tether's second process, which writes the small files: file_offload.py).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from controller.artifacts import archives, extracting  # noqa: E402
from controller.manifests import model  # noqa: E402
from tests.benchmarks import deploy_speed  # noqa: E402

FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def fresh(run: Callable[[str], None], image: Path, mount: Path) -> tuple[float, float]:
    """`run(directory)` on a fresh ext4: (wall s, CPU s of this thread, or of tar's process)."""
    subprocess.run(["truncate", "-s", "3G", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        dest = tempfile.mkdtemp(dir=mount)
        subprocess.run(["sync"], check=True)
        before = os.times()
        wall, cpu = time.perf_counter(), time.thread_time()
        run(dest)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        after = os.times()
        children = after.children_user + after.children_system - before.children_user - before.children_system
        return wall, cpu + children
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        image.unlink()


def tether(raw: bytes) -> Callable[[str], None]:
    limits = model.Limits(max_bytes=8_000_000_000, max_members=1_000_000, max_ratio=1e9)

    def run(dest: str) -> None:
        source = io.BytesIO(raw)
        extracting.extract(source, dest, fmt="tar", strip=0, owner=None, spool_dir=dest,
                           budget=archives.Budget(limits, source.tell), made=extracting.Made())
    return run


def tar(plain: Path) -> Callable[[str], None]:
    def run(dest: str) -> None:
        subprocess.run(["tar", "xf", str(plain), "-C", dest], check=True)
    return run


def bare(raw: bytes) -> Callable[[str], None]:
    members: list[tuple[str, bytes | None, int, float]] = []
    with tarfile.open(fileobj=io.BytesIO(raw)) as archive:
        for member in archive:
            if member.isdir() or member.isfile():
                data = archive.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
                members.append((member.name.rstrip("/"), data, member.mode & 0o755, float(member.mtime)))

    def run(dest: str) -> None:
        fds = {"": os.open(dest, DIR_FLAGS)}
        try:
            for name, data, mode, mtime in members:
                parent, _, base = name.rpartition("/")
                dir_fd = fds.get(parent)
                if dir_fd is None:  # a directory the archive does not list (tar makes it too)
                    os.makedirs(os.path.join(dest, parent), exist_ok=True)
                    dir_fd = fds[parent] = os.open(os.path.join(dest, parent), DIR_FLAGS)
                if data is None:
                    if name not in fds:
                        os.mkdir(base, 0o700, dir_fd=dir_fd)
                        fds[name] = os.open(base, DIR_FLAGS, dir_fd=dir_fd)
                    continue
                fd = os.open(base, FILE_FLAGS, mode, dir_fd=dir_fd)
                os.write(fd, data)
                hashlib.sha256(data).hexdigest()
                os.utime(fd, (mtime, mtime))
                os.fstat(fd)
                os.close(fd)
        finally:
            for fd in fds.values():
                os.close(fd)
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="real,small", help="artifact shapes of deploy_speed.py (default real,small)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each variant (default 3)")
    parser.add_argument("--artifacts", type=Path, help="deploy_speed.py's directory of built artifacts, reused")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root: every run mounts a fresh ext4")
    work = Path(tempfile.mkdtemp(prefix="tether-extract-", dir="/dev/shm"))
    mount = work / "mnt"
    mount.mkdir()
    print(f"  load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, nproc {os.cpu_count()}")
    try:
        for shape in args.shapes.split(","):
            artifact = (args.artifacts or work) / f"{shape}-v1.tar.gz"  # deploy_speed.py's name for it
            if not artifact.exists():
                deploy_speed.SHAPES[shape][0](artifact)
            raw = gzip.decompress(artifact.read_bytes())
            plain = work / f"{shape}.tar"
            plain.write_bytes(raw)
            variants = {"tar": tar(plain), "bare": bare(raw), "tether": tether(raw)}
            timings: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
            for round_ in range(args.repeat + 1):  # the first round warms caches and is not counted
                for name, run in variants.items():
                    timing = fresh(run, work / "fs.img", mount)
                    if round_:
                        timings[name].append(timing)
            with tarfile.open(plain) as archive:
                members = len(archive.getmembers())
            print(f"  {shape}: {members} members, {len(raw) / 1e6:.1f} MB of tar")
            for name, runs in timings.items():
                print(f"    {name:7} wall median {statistics.median(w for w, _ in runs):.3f} s, "
                      f"CPU median {statistics.median(c for _, c in runs):.3f} s ({len(runs)} runs)")
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
