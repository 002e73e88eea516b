"""Start-up time of the `tether` command: what P1 and P2 (design section 9) pay before the artifact is read.

A standalone script, not a pytest test:

    .venv/bin/python tests/benchmarks/startup_speed.py [--repeat 15] [--tree DIR ...] [--no-bytecode-cache]

P1 and P2 time `tether reconcile` from start to `current` switched against
`tar xzf`, which starts in milliseconds, so everything tether does before its
first read of the artifact counts against it. Interleaved, per run, this times:

  python -c pass                               the interpreter alone (the floor of any Python command)
  python -X importtime -c 'import controller.cli.main'   the imports of the command line, as Python counts them
  tether --help                                argument parsing and the imports
  tether validate examples/manifests           the manifests read and validated (YAML, JSON Schema)
  tether reconcile (file://, a tiny artifact)  the whole command, a new deployment each run
  strace: exec -> artifact opened              the same command under `strace -f -ttt -e trace=execve,openat`, in
                                               three steps: to the manifests directory's open (imports, parser), to
                                               the application's lock (manifests read and validated), to the
                                               artifact's open (the pass before its fetch); strace adds a little to
                                               every traced call

Figures are medians and minimums of wall time; the machine may be shared, so
the load average is printed beside them. Python's bytecode is cached (in a
PYTHONPYCACHEPREFIX of the run's own, filled by the warm-up), as it is for the
installed package (Debian byte-compiles a package's modules when it is
installed), even where PYTHONDONTWRITEBYTECODE is set; --no-bytecode-cache
measures what compiling every module from source on each start costs.
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TETHER = BIN / "tether"


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Run `command`: its wall time and its CPU time (user + sys of it and the children it reaped, from wait4)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            out.seek(0)
            raise RuntimeError(f"{command} failed ({status}): {out.read().decode(errors='replace')}")
    return elapsed, usage.ru_utime + usage.ru_stime


def import_seconds(env: dict[str, str], tree: Path) -> tuple[float, float]:
    """The cumulative import time of controller.cli.main that `python -X importtime` reports (no CPU time)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import controller.cli.main"], cwd=tree,
                          env=env, capture_output=True, text=True, check=True)
    line = [line for line in done.stderr.splitlines() if line.endswith("| controller.cli.main")][-1]
    return int(line.split("|")[1]) / 1e6, math.nan


class Node:
    """A manifests directory with one application whose file:// artifact is new on every run."""

    def __init__(self, root: Path) -> None:
        self.root, self.runs = root, 0
        self.manifests, self.state, self.artifacts = root / "manifests", root / "state", root / "artifacts"
        for directory in (root, self.manifests, self.state, self.artifacts, root / "apps"):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o755)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for index in range(3):
                data = f"file {index}\n".encode()
                info = tarfile.TarInfo(f"site/file-{index}.txt")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        self.tarball = buffer.getvalue()

    def next(self) -> tuple[list[str], str]:
        """A new deployment's manifest and artifact; the command that deploys it, and the artifact's path."""
        self.runs += 1
        deployment = f"v{self.runs}"
        artifact = self.artifacts / f"{deployment}.tar.gz"
        artifact.write_bytes(self.tarball)
        manifest = self.manifests / "site.yaml"
        manifest.write_text("apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: site\nspec:\n"
                            f"  path: {self.root / 'apps' / 'site'}\n  deployment: {deployment}\n"
                            f"  source:\n    url: {artifact.as_uri()}\n  retention:\n    keep: 2\n")
        manifest.chmod(0o644)
        return [str(TETHER), "reconcile", "--manifests", str(self.manifests), "--state-dir", str(self.state)], \
            str(artifact)


def reconcile(node: Node, env: dict[str, str]) -> tuple[float, float]:
    command, _ = node.next()
    return timed(command, env, node.root)


TRACE_LINE = re.compile(r"^\d+\s+(\d+\.\d+) (execve|openat)\((.*)$")


def trace(node: Node, env: dict[str, str]) -> list[float]:
    """One reconcile under `strace -f -ttt -e trace=execve,openat`: the seconds from its execve to its first
    open of the manifests directory (imports, arguments), then to the application's lock (the manifests read and
    validated), then to the artifact (the pass until its fetch starts). strace adds a little to every traced call."""
    command, artifact = node.next()
    log = node.root / "trace"
    subprocess.run(["strace", "-f", "--seccomp-bpf", "-ttt", "-qq", "-e", "trace=execve,openat", "-o", str(log),
                    *command], cwd=node.root, env=env, capture_output=True, check=True)
    marks = [None, f'"{node.manifests}"', f'"{node.state}/locks/', f'"{artifact}"']
    moments: list[float] = []
    for line in log.read_text().splitlines():
        found = TRACE_LINE.match(line)
        if found and len(moments) < len(marks):
            mark = marks[len(moments)]
            if (mark is None and found[2] == "execve") or (mark is not None and found[2] == "openat"
                                                           and found[3].startswith(f"AT_FDCWD, {mark}")):
                moments.append(float(found[1]))
    if len(moments) != len(marks):
        raise RuntimeError(f"the trace {log} does not show every step of the command: {moments}")
    return [later - earlier for earlier, later in itertools.pairwise(moments)]


Measure = Callable[[dict[str, str]], tuple[float, float]]


def measurements(node: Node, tree: Path) -> dict[str, Measure]:
    """What is timed, by name; `tree` is the checkout whose controller package the commands import."""
    examples = str(REPO / "examples" / "manifests")
    found: dict[str, Measure] = {
        "python -c pass": lambda env: timed([sys.executable, "-c", "pass"], env, tree),
        "-X importtime: import controller.cli.main": lambda env: import_seconds(env, tree),
        "tether --help": lambda env: timed([str(TETHER), "--help"], env, tree),
        "tether validate examples/manifests": lambda env: timed([str(TETHER), "validate", examples], env, tree),
        "tether reconcile (file://, 3 files)": lambda env: reconcile(node, env),
    }
    if shutil.which("strace"):
        phases: list[float] = []

        def traced(index: int) -> Measure:
            def measure(env: dict[str, str]) -> tuple[float, float]:
                if index == 0:
                    phases[:] = trace(node, env)
                return (sum(phases) if index == 3 else phases[index]), math.nan
            return measure

        found["strace: exec -> manifests opened (imports, parser)"] = traced(0)
        found["strace:   -> lock taken (manifests read, validated)"] = traced(1)
        found["strace:   -> artifact opened (the pass before its fetch)"] = traced(2)
        found["strace: exec -> artifact opened"] = traced(3)
    return found


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--repeat", type=int, default=15, help="timed runs of each measurement (default 15)")
    options.add_argument("--tree", action="append", type=Path, default=[],
                         help="also measure the controller package of this checkout (e.g. `git archive main` "
                         "unpacked), side by side with this one, through PYTHONPATH; repeatable")
    options.add_argument("--no-bytecode-cache", action="store_true",
                         help="keep the environment's PYTHONDONTWRITEBYTECODE (every module compiled on each start)")
    args = options.parse_args()
    if not TETHER.exists():
        print(f"startup_speed: {TETHER} does not exist; run `make venv`", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="tether-startup-"))
    try:
        trees = [REPO, *[tree.resolve() for tree in args.tree]]
        envs, tables = [], []
        for index, tree in enumerate(trees):
            env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
            if tree != REPO:
                env["PYTHONPATH"] = str(tree)
            if not args.no_bytecode_cache:
                env.pop("PYTHONDONTWRITEBYTECODE", None)
                env["PYTHONPYCACHEPREFIX"] = str(work / f"pycache-{index}")
            envs.append(env)
            tables.append(measurements(Node(work / f"node-{index}"), tree))
        print("tether start-up (design section 9, P1 and P2)")
        print(f"  python     {platform.python_version()} ({sys.executable})")
        print(f"  bytecode   {'compiled from source on every start' if args.no_bytecode_cache else 'cached'}")
        print(f"  machine    nproc {os.cpu_count()}, load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start")
        times: list[dict[str, list[tuple[float, float]]]] = [{name: [] for name in table} for table in tables]
        for table, env in zip(tables, envs, strict=True):
            for measure in table.values():
                measure(env)  # warm-up: page cache, bytecode
        for _ in range(args.repeat):
            for name in tables[0]:
                for table, env, found in zip(tables, envs, times, strict=True):
                    found[name].append(table[name](env))
        print(f"  runs       1 warm-up + {args.repeat} timed runs of each, interleaved; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
        for tree, found in zip(trees, times, strict=True):
            print()
            print(f"{'':4} {tree!s:58} {'median ms':>10} {'min ms':>8} {'cpu ms':>8}")
            for name, values in found.items():
                walls, cpus = [w for w, _ in values], [c for _, c in values]
                print(f"{'':4} {name:58} {statistics.median(walls) * 1000:10.1f} {min(walls) * 1000:8.1f} "
                      f"{statistics.median(cpus) * 1000:8.1f}")
        print("(wall time: median and minimum; cpu: median user + sys from wait4, the guide on a shared machine)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
