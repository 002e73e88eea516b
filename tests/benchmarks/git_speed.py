"""Git source speed against the shell floor: design section 9, target P7.

A standalone script, not a pytest test:

    .venv/bin/python tests/benchmarks/git_speed.py [--repeat 3] [--workdir DIR]

It builds the same deterministic 20,000-file tree as deploy_speed.py, commits it
to a repository and tags it v1, lets tether make its mirror of that repository
once (untimed), and then times, side by side and interleaved, from that mirror:

  floor:  mkdir d && git --git-dir=MIRROR archive v1 | tar x -C d && ln -s d tmp && mv -T tmp current
  tether: write a manifest (source.git, file:// URL of the repository, deployment v1, a fresh path),
          run `tether reconcile` until it exits (the fetch finds the tag already in the mirror)
  daemon: the same manifest written into the directory of one `tether run` (deploy_speed.Daemon), until
          `current` is switched; its mirror is made by the untimed warm-up run

Each run starts in a fresh directory after an untimed sync(2); run directories are
removed at the end (see deploy_speed.py for why).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_speed

GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "Bench",
           "GIT_AUTHOR_EMAIL": "bench@example.com", "GIT_COMMITTER_NAME": "Bench",
           "GIT_COMMITTER_EMAIL": "bench@example.com", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
           "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}


def build_repository(work: Path) -> Path:
    """A repository whose tag v1 holds the 20,000 files of deploy_speed's artifact (without its top directory)."""
    artifact = work / "site.tar.gz"
    deploy_speed.build_artifact(artifact)
    repo = work / "repo"
    repo.mkdir()
    with tarfile.open(artifact) as tar:
        tar.extractall(repo, filter="data")
    for entry in (repo / deploy_speed.TOP).iterdir():
        entry.rename(repo / entry.name)
    (repo / deploy_speed.TOP).rmdir()
    env = {**os.environ, **GIT_ENV}
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "v1"], ["tag", "v1"]):
        subprocess.run(["git", "-C", str(repo), *command], check=True, env=env)
    return repo


def tether(repo: Path, state: Path) -> Callable[[Path], deploy_speed.Timing]:
    def run(root: Path) -> deploy_speed.Timing:
        manifests, app = root / "manifests", root / "apps" / "site"
        for directory in (root, manifests, root / "apps"):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
        manifest = manifests / "site.yaml"
        text = ("apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: site\n"
                f"spec:\n  path: {app}\n  deployment: v1\n  source:\n    git:\n      url: file://{repo}\n")

        def write() -> None:
            manifest.write_text(text)
            manifest.chmod(0o644)

        command = [str(deploy_speed.TETHER), "reconcile", "--manifests", str(manifests), "--state-dir", str(state)]
        timing, code, output = deploy_speed.timed(command, root, write)
        if code != 0:
            raise RuntimeError(f"tether reconcile failed ({code}): {output}")
        if os.readlink(app / "current") != str(app / "v1") or not (app / "current" / "s00-assets").is_dir():
            raise RuntimeError("tether reconcile exited 0 but current does not point to the extracted v1")
        return timing

    return run


def floor(mirror: Path) -> Callable[[Path], deploy_speed.Timing]:
    command = f"mkdir d && git --git-dir={mirror} archive v1 | tar x -C d && ln -s d tmp && mv -T tmp current"

    def run(root: Path) -> deploy_speed.Timing:
        timing, code, output = deploy_speed.timed(["bash", "-c", command], root)
        if code != 0 or not (root / "current" / "s00-assets").is_dir():
            raise RuntimeError(f"{command!r} failed ({code}): {output.strip()}")
        return timing

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="git-speed-", dir=args.workdir))
    daemon: deploy_speed.Daemon | None = None
    try:
        started = time.perf_counter()
        repo = build_repository(work)
        state = work / "state"
        state.mkdir(mode=0o755)
        runs = work / "runs"
        runs.mkdir()
        print(f"built the repository in {time.perf_counter() - started:.1f} s", flush=True)
        filesystems = deploy_speed.Filesystems(runs, fresh=os.geteuid() == 0)  # a fresh ext4 per run as root
        first = filesystems.once(deploy_speed.Variant("tether", "tether", tether(repo, state)))
        print(f"first deploy, mirror made (untimed): {first.wall:.2f} s", flush=True)
        mirror = state / "git" / "site.git"
        daemon = deploy_speed.Daemon(work)
        variants = [deploy_speed.Variant("floor", "git archive v1 | tar x + mv -T", floor(mirror)),
                    deploy_speed.Variant("tether", "tether reconcile (source.git)", tether(repo, state)),
                    deploy_speed.Variant("daemon", "tether run, already running (source.git)",
                                         daemon.variant(f"    git:\n      url: file://{repo}\n", "s00-assets", "site"))]
        for variant in variants:  # one untimed warm-up each
            filesystems.once(variant)
        for _ in range(args.repeat):
            for variant in variants:
                variant.times.append(filesystems.once(variant))
        print(f"commit {deploy_speed.revision()}, {platform.node()}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{load:.2f}' for load in os.getloadavg())}, "
              f"git {subprocess.run(['git', '--version'], capture_output=True, text=True).stdout.split()[-1]}, "
              f"{deploy_speed.page_reporting()}")
        for variant in variants:
            print(f"{variant.label:40s} median {variant.median:6.2f} s  min {variant.best:6.2f} s  "
                  f"cpu {variant.cpu:6.2f} s  runs {' '.join(f'{t.wall:.2f}' for t in variant.times)}")
        for variant in variants[1:]:
            print(f"P7 {variant.key} / floor (medians): {variant.median / variants[0].median:.2f}x wall, "
                  f"{variant.cpu / variants[0].cpu:.2f}x CPU (target <= 1.2x)")
    finally:
        if daemon is not None:
            daemon.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
