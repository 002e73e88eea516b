"""Deploy speed against the shell floor: design section 9, targets P1 and P2.

A standalone script, not a pytest test:

    .venv/bin/python tests/benchmarks/deploy_speed.py      # or: make bench

It builds a deterministic tar.gz (20,000 files, ~85 MB uncompressed, one
top-level directory), serves it with `python -m http.server` on 127.0.0.1,
and times, side by side and interleaved:

  P1  HTTP on loopback -> `current` switched
      floor:  curl -sS -o f URL && mkdir d && tar xzf f -C d && ln -s d tmp && mv -T tmp current
      stream: curl -sS URL | tar xzf - -C d && ln -s d tmp && mv -T tmp current   (context)
      tether: write a manifest, run `tether reconcile` until it exits
  P2  local file -> `current` switched
      floor:  mkdir d && tar xzf f -C d && ln -s d tmp && mv -T tmp current
      tether: the same with a file:// source.url

Every run starts in a fresh, empty directory and with no dirty pages left over
from the previous run (an untimed sync(2)), so that tether's own syncfs(2) pays
only for what it wrote itself. The run directories are all removed at the end,
not between runs: on ext4 without a journal, creating files is several times
slower for minutes after many files were deleted (the inode allocator skips
recently deleted inodes), which would tax whichever variant runs next. For
the same reason, give the file system a few minutes between two invocations.
Page caches are not dropped; instead one untimed warm-up of each variant comes
first, and the artifact is hot in the page cache for every variant alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import os
import platform
import random
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
TOP = "site"
MTIME = 1_700_000_000
SEED = 20240917


# ---------------------------------------------------------------- the artifact


def _vocabulary(rng: random.Random, size: int = 6000) -> tuple[list[bytes], list[float]]:
    """Pseudo-words with Zipf-like frequencies, plus some punctuation and newlines."""
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    letter_weights = [12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.3, 4, 2.8, 2.8, 2.4, 2.4, 2.2, 2, 2, 1.9, 1.5, 1, 0.8, 0.2,
                      0.15, 0.1, 0.07]
    words = {"".join(rng.choices(letters, letter_weights, k=rng.randint(1, 11))) for _ in range(size * 2)}
    vocabulary = [w.encode() + b" " for w in sorted(words)[:size]]
    rng.shuffle(vocabulary)
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    extras = [b"\n", b"\n    ", b", ", b". ", b"{ ", b"} ", b"= ", b"(", b") ", b"0 ", b"1 ", b"42 "]
    vocabulary += extras
    weights += [0.5, 0.25, 0.08, 0.06, 0.01, 0.01, 0.02, 0.01, 0.01, 0.01, 0.01, 0.005]
    cumulative = []
    total = 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    return vocabulary, cumulative


def _sizes(rng: random.Random, files: int, large: int, total: int) -> list[int]:
    """File sizes: many small text-like files (lognormal, median ~2 kB) and a few large ones."""
    small = [min(64 * 1024, max(40, int(rng.lognormvariate(7.6, 0.9)))) for _ in range(files - large)]
    left = total - sum(small)
    weights = [rng.uniform(0.3, 1.7) for _ in range(large)]
    big = [int(left * w / sum(weights)) for w in weights]
    sizes = small + big
    rng.shuffle(sizes)
    return sizes


def build_artifact(path: Path, *, files: int = 20_000, large: int = 120, total: int = 85_000_000) -> dict[str, int]:
    """Write a deterministic tar.gz below one top-level directory; return its figures."""
    rng = random.Random(SEED)
    vocabulary, cumulative = _vocabulary(rng)
    sizes = _sizes(rng, files, large, total)
    sections = [f"s{index:02d}-{name}" for index, name in enumerate(
        ["assets", "css", "js", "docs", "img", "lib", "api", "blog", "i18n", "vendor"] * 4)]
    extensions = ["html", "js", "css", "json", "md", "txt", "svg", "xml"]
    with path.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w|", format=tarfile.GNU_FORMAT) as tar:

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)

        add_dir(TOP)
        index = 0
        directories = 1
        per_leaf = -(-files // (len(sections) * 10))
        for section in sections:
            add_dir(f"{TOP}/{section}")
            directories += 1
            for sub in range(10):
                leaf = f"{TOP}/{section}/d{sub}"
                add_dir(leaf)
                directories += 1
                for _ in range(per_leaf):
                    if index == files:
                        break
                    size = sizes[index]
                    words = rng.choices(vocabulary, cum_weights=cumulative, k=size // 5 + 8)
                    data = b"".join(words)[:size]
                    while len(data) < size:  # rare: a run of short words
                        data += b"".join(rng.choices(vocabulary, cum_weights=cumulative, k=size // 5 + 8))
                        data = data[:size]
                    info = tarfile.TarInfo(f"{leaf}/file-{index:05d}.{extensions[index % len(extensions)]}")
                    info.size, info.mode, info.mtime = size, 0o644, MTIME
                    tar.addfile(info, io.BytesIO(data))
                    index += 1
    return {"files": files, "directories": directories, "uncompressed": sum(sizes), "compressed": path.stat().st_size}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- the server


class Server:
    """`python -m http.server` on 127.0.0.1, port 0, serving one directory."""

    def __init__(self, directory: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(directory)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"port (\d+)", line)
        if not found:
            self.close()
            raise RuntimeError(f"http.server did not say which port it uses: {line!r}")
        self.port = int(found.group(1))

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# ---------------------------------------------------------------- the runs


def revision() -> str:
    """The commit measured, and whether controller/ differs from it (read-only git commands)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), "status", "--porcelain", "--",
                                  "controller"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes in controller/" if changed else "")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


def shell(command: str) -> Callable[[Path], float]:
    """A floor variant: `command` run by bash in a fresh directory; wall time of the whole command."""

    def run(root: Path) -> float:
        start = time.perf_counter()
        done = subprocess.run(["bash", "-c", command], cwd=root, env=_env(), capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{command!r} failed ({done.returncode}): {done.stderr.strip()}")
        current = root / "current"
        if os.readlink(current) != "d" or not (current / TOP / "s00-assets").is_dir():
            raise RuntimeError(f"{command!r} did not switch current to the extracted tree")
        return elapsed

    return run


def tether(url: str) -> Callable[[Path], float]:
    """The tether variant: write a manifest, run `tether reconcile` until it exits (current switched)."""

    def run(root: Path) -> float:
        manifests, state, app = root / "manifests", root / "state", root / "apps" / "site"
        for directory in (root, manifests, state, root / "apps"):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
        manifest = manifests / "site.yaml"
        text = (
            "apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: site\n"
            f"spec:\n  path: {app}\n  deployment: v1\n  source:\n    url: {url}\n"
        )
        command = [str(TETHER), "reconcile", "--manifests", str(manifests), "--state-dir", str(state)]
        start = time.perf_counter()
        manifest.write_text(text)
        manifest.chmod(0o644)
        done = subprocess.run(command, cwd=root, env=_env(), capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"tether reconcile failed ({done.returncode}): {done.stdout}{done.stderr}")
        if os.readlink(app / "current") != str(app / "v1") or not (app / "current" / "s00-assets").is_dir():
            raise RuntimeError("tether reconcile exited 0 but current does not point to the extracted v1")
        return elapsed

    return run


def python_startup(code: str) -> Callable[[Path], float]:
    def run(root: Path) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), check=True)
        return time.perf_counter() - start

    return run


@dataclasses.dataclass
class Variant:
    key: str
    label: str
    run: Callable[[Path], float]
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def best(self) -> float:
        return min(self.times)


def once(variant: Variant, runs: Path) -> float:
    """One run of `variant` in a fresh, empty directory, with no dirty pages left over from earlier runs.

    The directory is not removed here but with all the others at the end: on ext4
    without a journal, creating files within minutes of deleting many is much
    slower (the inode allocator skips and re-checks recently deleted inodes), so
    deleting between runs would tax whichever variant comes next.
    """
    root = Path(tempfile.mkdtemp(prefix=f"{variant.key}-", dir=runs))
    os.sync()
    return variant.run(root)


# ---------------------------------------------------------------- main


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--repeat", type=int, default=5, help="timed runs of each variant (default 5)")
    options.add_argument("--workdir", type=Path, default=None,
                         help="where to put the artifact and the runs (default: a new temp directory)")
    options.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    args = options.parse_args()
    for tool in ("curl", "tar", "bash"):
        if shutil.which(tool) is None:
            print(f"deploy_speed: {tool} is not installed", file=sys.stderr)
            return 2
    if not TETHER.exists():
        print(f"deploy_speed: {TETHER} does not exist; run `make venv`", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="tether-bench-", dir=args.workdir))
    server: Server | None = None
    try:
        serve = workdir / "serve"
        serve.mkdir()
        artifact = serve / "site-v1.tar.gz"
        start = time.perf_counter()
        figures = build_artifact(artifact)
        built = time.perf_counter() - start
        digest = sha256_file(artifact)
        server = Server(serve)
        url = server.url(artifact.name)
        file_url = artifact.as_uri()

        variants = [
            Variant("p1-floor", "P1 floor: curl -o f && tar xzf f && ln && mv -T",
                    shell(f"curl -sS -o f '{url}' && mkdir d && tar xzf f -C d && ln -s d tmp && mv -T tmp current")),
            Variant("p1-stream", "P1 floor: curl | tar xzf - && ln && mv -T",
                    shell(f"mkdir d && curl -sS '{url}' | tar xzf - -C d && ln -s d tmp && mv -T tmp current")),
            Variant("p1-tether", "P1 tether reconcile (http://127.0.0.1)", tether(url)),
            Variant("p2-floor", "P2 floor: tar xzf f && ln && mv -T",
                    shell(f"mkdir d && tar xzf '{artifact}' -C d && ln -s d tmp && mv -T tmp current")),
            Variant("p2-tether", "P2 tether reconcile (file://)", tether(file_url)),
            Variant("py-bare", "python -c pass", python_startup("pass")),
            Variant("py-import", "python -c 'import controller.cli'", python_startup("import controller.cli")),
        ]
        by_key = {v.key: v for v in variants}

        print("tether deploy speed (design section 9, P1 and P2)")
        print(f"  tether     {revision()}")
        print(f"  python     {platform.python_version()} ({sys.executable})")
        print(f"  machine    nproc {os.cpu_count()}, {platform.system()} {platform.release()} {platform.machine()}")
        tar_version = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        curl_version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
        print(f"  tools      {tar_version}; curl {curl_version}")
        print(f"  workdir    {workdir}")
        print(f"  artifact   {figures['files']} files + {figures['directories']} directories, "
              f"{figures['uncompressed'] / 1e6:.1f} MB uncompressed, {figures['compressed'] / 1e6:.1f} MB tar.gz "
              f"(ratio {figures['uncompressed'] / figures['compressed']:.2f}), built in {built:.1f} s")
        print(f"  sha256     {digest}")
        print(f"  runs       1 warm-up + {args.repeat} timed runs of each variant, interleaved")
        sys.stdout.flush()

        runs = workdir / "runs"
        runs.mkdir()
        for variant in variants:
            once(variant, runs)
        for repetition in range(args.repeat):
            for variant in variants:
                variant.times.append(once(variant, runs))
            print(f"  run {repetition + 1}/{args.repeat}: " + "  ".join(
                f"{v.key} {v.times[-1]:.3f}" for v in variants), flush=True)

        print()
        print(f"{'':4} {'variant':50} {'median s':>9} {'min s':>9}")
        for variant in variants:
            print(f"{'':4} {variant.label:50} {variant.median:9.3f} {variant.best:9.3f}")

        rows = [
            ("P1", "http, vs curl -o f && tar xzf f", "p1-tether", "p1-floor", 1.0),
            ("P1", "http, vs curl | tar xzf - (stream)", "p1-tether", "p1-stream", None),
            ("P2", "file, vs tar xzf f", "p2-tether", "p2-floor", 1.2),
        ]
        print()
        print(f"{'id':4} {'comparison':36} {'tether s':>9} {'floor s':>9} {'ratio':>7} {'min/min':>8} "
              f"{'target':>8}  verdict")
        for ident, text, ours, theirs, target in rows:
            mine, floor = by_key[ours], by_key[theirs]
            ratio = mine.median / floor.median
            best_ratio = mine.best / floor.best
            target_text = f"<= {target:.1f}x" if target is not None else "context"
            verdict = ("meets" if ratio <= target else "MISSES") if target is not None else "-"
            print(f"{ident:4} {text:36} {mine.median:9.3f} {floor.median:9.3f} {ratio:6.2f}x {best_ratio:7.2f}x "
                  f"{target_text:>8}  {verdict}")
        print("(tether and floor are medians of wall time; ratio = median/median; min/min = best/best)")
        startup = by_key["py-import"].median
        print(f"python start-up with `import controller.cli`: {startup:.3f} s median "
              f"({by_key['py-bare'].median:.3f} s for a bare interpreter)")
        return 0
    finally:
        if server is not None:
            server.close()
        if args.keep:
            print(f"kept {workdir}")
        else:
            start = time.perf_counter()
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"removed {workdir} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
