"""Deploy speed against the shell floor: design section 9, targets P1 and P2.

A standalone script, not a pytest test:

    .venv/bin/python tests/benchmarks/deploy_speed.py [--shapes small,large,real] [--repeat 5] [--rate 200]

It builds deterministic tar.gz artifacts of three shapes (small: 20,000 files,
~85 MB; large: one 250 MB poorly compressible binary plus a few small files;
real: /usr/include and /usr/lib/python3*/, deep paths and real sizes), serves
them on 127.0.0.1 (unlimited, and rate-limited for the streaming comparison),
and times, side by side and interleaved, per shape:

  P1  HTTP on loopback -> `current` switched
      floor:  curl -sS -o f URL && mkdir d && tar xzf f -C d && ln -s d tmp && mv -T tmp current
      stream: curl -sS URL | tar xzf - -C d && ln -s d tmp && mv -T tmp current   (rate-limited, context)
      tether: write a manifest, run `tether reconcile` until it exits
      daemon: write a manifest into the directory of a `tether run` started once for the whole benchmark
              (the controller as it runs on a node), until `current` is switched (looked at every 2 ms)
      peer:   ansible-playbook -c local: deploy_helper state=present, a release directory (with the
              DEPLOY_UNFINISHED marker, as the module's documentation has it), unarchive with the URL as src and
              remote_src (the one-task download-and-extract the unarchive documentation shows),
              deploy_helper state=finalize (switches `current`)
  P2  local file -> `current` switched
      floor:  mkdir d && tar xzf f -C d && ln -s d tmp && mv -T tmp current
      durable floor (context): the same with `sync -f d` (syncfs(2)) after tar and after mv, what tether
              does to have the tree on disk before `current` names it and the switch on disk after: the
              design's floor leaves both in the page cache
      tether: the same with a file:// source.url
      daemon: the same with a file:// source.url
      peer:   the same playbook, unarchive of the file already on the node (remote_src)

The peer needs ansible-playbook (ansible-core, in the test extra) and the community.general collection
for deploy_helper (on Debian 12: apt-get install ansible); without them its rows are left out.

Run as root, every run gets a fresh ext4 of its own (a loop-mounted image in
/dev/shm, removed after the run): on ext4 file creation slows for minutes after
mass deletions, and a shared file system makes syncfs(2) flush other processes'
pages. Otherwise every run gets a fresh directory after an untimed sync(2), and
the directories are removed at the end. Each run reports wall time and CPU time
(user + sys of the command and the children it reaped, from wait4; for the daemon,
what /proc/PID/stat gained until the switch, in clock ticks): on a shared
machine the CPU ratio is the guide. The daemon rows leave out what a one-shot
`tether reconcile` pays before it can start (the interpreter and tether's
imports, 0.2-0.3 s on a slow machine); the daemon is how a node runs tether.
Page caches are not dropped; one untimed warm-up of each variant comes first.
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
import stat
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


def build_large(path: Path, *, size: int = 250_000_000, small: int = 20) -> dict[str, int]:
    """One poorly compressible binary of `size` bytes plus a few small files, below TOP (design 9's large shape)."""
    rng = random.Random(SEED + 1)
    block = rng.randbytes(1 << 20)
    total = 0
    with path.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for name in (TOP, f"{TOP}/bin", f"{TOP}/etc"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
            tar.addfile(info)

        class Binary(io.RawIOBase):
            """Machine-code-like bytes: random blocks, one in four runs of zeros (compresses about 1.3:1)."""

            def __init__(self) -> None:
                self.left, self.index = size, 0

            def readable(self) -> bool:
                return True

            def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
                count = min(len(buffer), self.left, 1 << 16)
                offset = (self.index * 7919) % ((1 << 20) - (1 << 16))
                chunk = bytes(count) if self.index % 4 == 3 else block[offset:offset + count]
                buffer[:count] = chunk
                self.left -= count
                self.index += 1
                return count

        info = tarfile.TarInfo(f"{TOP}/bin/server")
        info.size, info.mode, info.mtime = size, 0o755, MTIME
        tar.addfile(info, io.BufferedReader(Binary(), 1 << 20))
        total += size
        for index in range(small):
            data = (f"setting{index} = {index * 37}\n" * (50 + index * 20)).encode()
            info = tarfile.TarInfo(f"{TOP}/etc/config-{index:02d}.conf")
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            tar.addfile(info, io.BytesIO(data))
            total += len(data)
    return {"files": small + 1, "directories": 3, "uncompressed": total, "compressed": path.stat().st_size}


REAL_SOURCES = ("/usr/include", *sorted(str(p) for p in Path("/usr/lib").glob("python3*")))


def build_real(path: Path) -> dict[str, int]:
    """Real files: /usr/include and /usr/lib/python3*/ below TOP (deep paths, real sizes); unreadable ones skipped."""
    files = directories = total = 0
    with path.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as packed, \
            tarfile.open(fileobj=packed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(TOP)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
        tar.addfile(info)
        directories += 1
        for source in REAL_SOURCES:
            if not os.path.isdir(source):
                continue
            for parent, dirs, names in os.walk(source):
                dirs.sort()
                rel = f"{TOP}/{source.strip('/').replace('/', '-')}/{os.path.relpath(parent, source)}".rstrip("/.")
                info = tarfile.TarInfo(rel)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
                tar.addfile(info)
                directories += 1
                for name in sorted(names):
                    full = os.path.join(parent, name)
                    try:
                        st = os.lstat(full)
                        if not stat.S_ISREG(st.st_mode):
                            continue
                        with open(full, "rb") as handle:
                            data = handle.read()
                    except OSError:
                        continue
                    info = tarfile.TarInfo(f"{rel}/{name}")
                    info.size, info.mode, info.mtime = len(data), stat.S_IMODE(st.st_mode) & 0o755, int(st.st_mtime)
                    tar.addfile(info, io.BytesIO(data))
                    files += 1
                    total += len(data)
    return {"files": files, "directories": directories, "uncompressed": total, "compressed": path.stat().st_size}


SHAPES: dict[str, tuple[Callable[[Path], dict[str, int]], str]] = {
    "small": (build_artifact, "s00-assets"),  # builder, a directory below TOP that proves the tree is there
    "large": (build_large, "bin"),
    "real": (build_real, "usr-include"),
}


# ---------------------------------------------------------------- the server


SERVE_CODE = """
import http.server, os, socketserver, sys, time
directory, rate = sys.argv[1], float(sys.argv[2])
class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=directory, **k)
    def log_message(self, *a):
        pass
    def copyfile(self, source, out):
        if rate <= 0:
            return super().copyfile(source, out)
        start, sent = time.monotonic(), 0
        while chunk := source.read(64 * 1024):
            out.write(chunk)
            sent += len(chunk)
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
server = Server(("127.0.0.1", 0), Handler)
print("port", server.server_address[1], flush=True)
server.serve_forever()
"""


class Server:
    """An HTTP server on 127.0.0.1, port 0, serving one directory; `rate` bytes/s per response (0: unlimited)."""

    def __init__(self, directory: Path, rate: float = 0) -> None:
        self.process = subprocess.Popen([sys.executable, "-u", "-c", SERVE_CODE, str(directory), str(rate)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        found = re.search(r"port (\d+)", line)
        if not found:
            self.close()
            raise RuntimeError(f"the benchmark's HTTP server did not say which port it uses: {line!r}")
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


PAGE_REPORTING = Path("/sys/module/page_reporting/parameters/page_reporting_order")


def page_reporting() -> str:
    """Whether the guest hands free memory back to its host (virtio-balloon free page reporting), which changes
    these figures: a page the host took back costs a host fault when it is used again, and that time shows as
    system time of whatever process touches it first. Seen here: one-shot deploys of the large shape took
    0.45-0.5 s or 0.6-1.1 s by that alone, once a run had grown the page cache (the daemon's cache copies)."""
    try:
        order = int(PAGE_REPORTING.read_text())
    except (OSError, ValueError):
        return "no free page reporting"
    if order > 10:  # above the largest buddy order (MAX_ORDER 10 on x86-64): nothing is reported
        return f"free page reporting off (page_reporting_order {order})"
    return (f"free page reporting ON (page_reporting_order {order}): figures vary with what memory the host took "
            f"back; for steady ones, as root: echo 11 > {PAGE_REPORTING}, then write and delete a file of most "
            "of the memory in /dev/shm")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


@dataclasses.dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float  # user + sys of the child and everything it waited for


def timed(command: list[str], cwd: Path, before: Callable[[], None] = lambda: None) -> tuple[Timing, int, str]:
    """Run `command`; its wall time, its CPU (os.wait4: the child and its reaped descendants), exit code, output."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        before()
        process = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return Timing(elapsed, usage.ru_utime + usage.ru_stime), process.returncode, text


def shell(command: str, probe: str) -> Callable[[Path], Timing]:
    """A floor variant: `command` run by bash in a fresh directory."""

    def run(root: Path) -> Timing:
        timing, code, text = timed(["bash", "-c", command], root)
        if code != 0:
            raise RuntimeError(f"{command!r} failed ({code}): {text.strip()}")
        current = root / "current"
        if os.readlink(current) != "d" or not (current / TOP / probe).is_dir():
            raise RuntimeError(f"{command!r} did not switch current to the extracted tree")
        return timing

    return run


def tether(url: str, probe: str) -> Callable[[Path], Timing]:
    """The tether variant: write a manifest, run `tether reconcile` until it exits (current switched)."""

    def run(root: Path) -> Timing:
        manifests, state, app = root / "manifests", root / "state", root / "apps" / "site"
        for directory in (root, manifests, state, root / "apps"):
            directory.mkdir(exist_ok=True)
            directory.chmod(0o755)
        manifest = manifests / "site.yaml"
        text = ("apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: site\n"
                f"spec:\n  path: {app}\n  deployment: v1\n  source:\n{url_source(url)}")

        def write() -> None:
            manifest.write_text(text)
            manifest.chmod(0o644)

        command = [str(TETHER), "reconcile", "--manifests", str(manifests), "--state-dir", str(state)]
        timing, code, output = timed(command, root, write)
        if code != 0:
            raise RuntimeError(f"tether reconcile failed ({code}): {output}")
        if os.readlink(app / "current") != str(app / "v1") or not (app / "current" / probe).is_dir():
            raise RuntimeError("tether reconcile exited 0 but current does not point to the extracted v1")
        return timing

    return run


def url_source(url: str) -> str:
    """A manifest's source block for `url`, with limits that let the benchmark's artifacts through."""
    return f"    url: {url}\n    limits:\n      maxBytes: 4000000000\n      maxMembers: 200000\n"


class Daemon:
    """One `tether run` for the whole benchmark, as on a node: its manifests and state directories stay in the
    work directory, each run's application lives on that run's fresh file system."""

    POLL = 0.002  # seconds between looks at `current` (the resolution of the daemon's wall times)

    def __init__(self, workdir: Path) -> None:
        self.manifests, self.state = workdir / "daemon-manifests", workdir / "daemon-state"
        for directory in (self.manifests, self.state):
            directory.mkdir()
            directory.chmod(0o755)
        self.log = (workdir / "daemon.log").open("wb")
        self.process = subprocess.Popen(
            [str(TETHER), "run", "--manifests", str(self.manifests), "--state-dir", str(self.state),
             "--metrics-address", "127.0.0.1:0", "--insecure-manifests"],
            env=_env(), stdout=self.log, stderr=subprocess.STDOUT)
        self.count = 0
        self._settle()

    def _ticks(self) -> int:
        """CPU clock ticks of the daemon and the children it reaped (the file-writing process)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(field) for field in fields[11:15])  # utime stime cutime cstime

    def _settle(self, quiet: float = 0.3) -> None:
        """Wait until the daemon has used no CPU for `quiet` seconds (it is idle: the next run starts clean)."""
        last, since = -1, time.monotonic()
        while time.monotonic() - since < quiet:
            if self.process.poll() is not None:
                raise RuntimeError(f"tether run exited with {self.process.returncode}; see {self.log.name}")
            ticks = self._ticks()
            if ticks != last:
                last, since = ticks, time.monotonic()
            time.sleep(0.05)

    def variant(self, source: str, probe: str, name: str = "") -> Callable[[Path], Timing]:
        """Write a manifest for an application below the run's directory (`source`: the lines of its source
        block; `name`: the same application every run, e.g. to keep its git mirror; default a new one each run);
        time it until `current` is switched; remove the manifest again and wait for the daemon to be idle (so the
        file system can be unmounted)."""

        def run(root: Path) -> Timing:
            self.count += 1
            app_name = name or f"site-{self.count}"
            (root / "apps").mkdir()
            (root / "apps").chmod(0o755)
            app = root / "apps" / app_name
            text = (f"apiVersion: tether/v1\nkind: Application\nmetadata:\n  name: {app_name}\n"
                    f"spec:\n  path: {app}\n  deployment: v1\n  source:\n{source}")
            staged, manifest = self.manifests / f".{app_name}.tmp", self.manifests / f"{app_name}.yaml"
            ticks = self._ticks()
            start = time.perf_counter()
            staged.write_text(text)
            staged.chmod(0o644)
            staged.rename(manifest)  # as config management writes it: whole, at once
            current = app / "current"
            while not current.is_symlink():
                if time.perf_counter() - start > 600 or self.process.poll() is not None:
                    raise RuntimeError(f"tether run did not switch {current}; see {self.log.name}")
                time.sleep(self.POLL)
            elapsed = time.perf_counter() - start
            cpu = (self._ticks() - ticks) / os.sysconf("SC_CLK_TCK")
            if os.readlink(current) != str(app / "v1") or not (current / probe).is_dir():
                raise RuntimeError("tether run switched current, but not to the extracted v1")
            manifest.unlink()
            self._settle()
            return Timing(elapsed, cpu)

        return run

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()
        self.log.close()


COLLECTION_PATHS = (Path.home() / ".ansible" / "collections", Path("/usr/share/ansible/collections"),
                    Path("/usr/lib/python3/dist-packages"), *(Path(p) for p in sys.path if p.endswith("site-packages")))
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Initialize the deploy root
      community.general.deploy_helper:
        path: "{{ app }}"
        release: v1
        state: present
    - name: Create the new release directory
      ansible.builtin.file:
        path: "{{ deploy_helper.new_release_path }}"
        state: directory
    - name: Add an unfinished file, to allow cleanup on successful finalize
      ansible.builtin.file:
        path: "{{ deploy_helper.new_release_path }}/{{ deploy_helper.unfinished_filename }}"
        state: touch
    - name: Unpack the artifact into the new release
      ansible.builtin.unarchive:
        src: "{{ artifact }}"
        dest: "{{ deploy_helper.new_release_path }}"
        remote_src: true
    - name: Finalize the deploy, switching current
      community.general.deploy_helper:
        path: "{{ app }}"
        release: "{{ deploy_helper.new_release }}"
        state: finalize
"""


def ansible_collections() -> Path | None:
    """A collections directory that has community.general's deploy_helper, or None."""
    for path in COLLECTION_PATHS:
        if (path / "ansible_collections/community/general/plugins/modules/deploy_helper.py").is_file():
            return path
    return None


def ansible_peer(artifact: str, probe: str, collections: Path) -> Callable[[Path], Timing]:
    """The peer: an ansible-playbook run on localhost (-c local) of PLAYBOOK, until it exits (current switched)."""

    def run(root: Path) -> Timing:
        root.chmod(0o755)  # ansible ignores an ansible.cfg in a world-writable directory
        (root / "site.yml").write_text(PLAYBOOK)
        (root / "ansible.cfg").write_text(  # read from the working directory; temporary files on the run's file system
            f"[defaults]\ncollections_path = {collections}\nlocal_tmp = {root}/.ansible-tmp\n"
            f"remote_tmp = {root}/.ansible-tmp\ninterpreter_python = {sys.executable}\nretry_files_enabled = False\n")
        app = root / "app"
        command = [str(BIN / "ansible-playbook"), "-c", "local", "-i", "localhost,", "site.yml",
                   "-e", f"app={app}", "-e", f"artifact={artifact}"]
        timing, code, output = timed(command, root)
        if code != 0:
            raise RuntimeError(f"ansible-playbook failed ({code}): {output}")
        if os.readlink(app / "current") != str(app / "releases" / "v1") or \
                not (app / "current" / TOP / probe).is_dir():
            raise RuntimeError(f"ansible-playbook exited 0 but current does not point to the extracted v1: {output}")
        return timing

    return run


def python_startup(code: str) -> Callable[[Path], Timing]:
    def run(root: Path) -> Timing:
        timing, status, text = timed([sys.executable, "-c", code], REPO)
        if status != 0:
            raise RuntimeError(text)
        return timing

    return run


@dataclasses.dataclass
class Variant:
    key: str
    label: str
    run: Callable[[Path], Timing]
    times: list[Timing] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(t.wall for t in self.times)

    @property
    def best(self) -> float:
        return min(t.wall for t in self.times)

    @property
    def cpu(self) -> float:
        return statistics.median(t.cpu for t in self.times)


class Filesystems:
    """A fresh RAM-backed ext4 for every run (a loop-mounted image in /dev/shm), or plain directories."""

    def __init__(self, runs: Path, fresh: bool) -> None:
        self.runs, self.fresh, self.count = runs, fresh, 0

    def once(self, variant: Variant) -> Timing:
        self.count += 1
        root = self.runs / f"{variant.key}-{self.count}"
        root.mkdir()
        if not self.fresh:
            os.sync()
            return variant.run(root)  # removed at the end (see the module docstring)
        image = Path(f"/dev/shm/tether-bench-{os.getpid()}-{self.count}.img")
        try:
            with image.open("wb") as handle:
                handle.truncate(3 << 30)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
            subprocess.run(["mount", "-o", "loop", str(image), str(root)], check=True)
            try:
                os.sync()
                return variant.run(root)
            finally:
                subprocess.run(["umount", str(root)], check=True)
        finally:
            image.unlink(missing_ok=True)
            root.rmdir()


# ---------------------------------------------------------------- main


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    options.add_argument("--repeat", type=int, default=5, help="timed runs of each variant (default 5)")
    options.add_argument("--shapes", default="small,large,real", help="artifact shapes: small,large,real (default all)")
    options.add_argument("--rate", type=float, default=200.0,
                         help="Mbit/s of the rate-limited server for the P1 streaming runs (default 200; 0: skip)")
    options.add_argument("--no-fresh-fs", action="store_true",
                         help="run in plain directories instead of a fresh loop-mounted ext4 per run (needs root)")
    options.add_argument("--no-daemon", dest="daemon", action="store_false",
                         help="leave out the runs through one `tether run` started for the benchmark")
    options.add_argument("--only", default="", help="comma-separated variant keys to run (default all)")
    options.add_argument("--workdir", type=Path, default=None,
                         help="where to put the artifact and the runs (default: a new temp directory)")
    options.add_argument("--keep", action="store_true", help="keep the work directory afterwards")
    options.add_argument("--artifacts", type=Path, default=None,
                         help="a directory to keep the built artifacts in and reuse them from (default: rebuilt)")
    args = options.parse_args()
    for tool in ("curl", "tar", "bash"):
        if shutil.which(tool) is None:
            print(f"deploy_speed: {tool} is not installed", file=sys.stderr)
            return 2
    if not TETHER.exists():
        print(f"deploy_speed: {TETHER} does not exist; run `make venv`", file=sys.stderr)
        return 2
    fresh = not args.no_fresh_fs and os.geteuid() == 0 and shutil.which("mkfs.ext4") is not None
    shapes = [shape for shape in args.shapes.split(",") if shape]
    only = {key for key in args.only.split(",") if key}

    workdir = Path(tempfile.mkdtemp(prefix="tether-bench-", dir=args.workdir))
    servers: list[Server] = []
    daemon: Daemon | None = None
    try:
        serve = args.artifacts or workdir / "serve"
        serve.mkdir(exist_ok=True)
        print("tether deploy speed (design section 9, P1 and P2)")
        print(f"  tether     {revision()}")
        print(f"  python     {platform.python_version()} ({sys.executable})")
        print(f"  machine    nproc {os.cpu_count()}, {platform.system()} {platform.release()} {platform.machine()}, "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        tar_version = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        curl_version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
        print(f"  tools      {tar_version}; curl {curl_version}")
        print(f"  memory     {page_reporting()}")
        print(f"  workdir    {workdir}; every run on {'a fresh loop-mounted ext4 in /dev/shm' if fresh else 'plain directories'}")
        server = Server(serve)
        servers.append(server)
        rated = Server(serve, args.rate * 1e6 / 8) if args.rate > 0 else None
        if rated is not None:
            servers.append(rated)
        collections = ansible_collections() if (BIN / "ansible-playbook").exists() else None
        print("  peer       " + (f"{BIN / 'ansible-playbook'} -c local, community.general from {collections}"
                                  if collections else "left out: no ansible-playbook with community.general's "
                                  "deploy_helper (on Debian 12: apt-get install ansible)"))
        variants: list[Variant] = []
        for shape in shapes:
            builder, probe = SHAPES[shape]
            artifact = serve / f"{shape}-v1.tar.gz"
            start = time.perf_counter()
            if artifact.exists():
                figures = {"files": 0, "directories": 0, "uncompressed": 0, "compressed": artifact.stat().st_size}
            else:
                figures = builder(artifact)
            print(f"  {shape:10} {figures['files']} files + {figures['directories']} directories, "
                  f"{figures['uncompressed'] / 1e6:.1f} MB uncompressed, {figures['compressed'] / 1e6:.1f} MB tar.gz "
                  f"(ratio {figures['uncompressed'] / figures['compressed']:.2f}), built in "
                  f"{time.perf_counter() - start:.1f} s, sha256 {sha256_file(artifact)[:16]}...", flush=True)
            url = server.url(artifact.name)
            if daemon is None and args.daemon and (not only or any(key.endswith("-daemon") for key in only)):
                daemon = Daemon(workdir)
            variants += [
                Variant(f"{shape}-p2-floor", f"{shape} P2 floor: tar xzf f && ln && mv -T",
                        shell(f"mkdir d && tar xzf '{artifact}' -C d && ln -s d tmp && mv -T tmp current", probe)),
                Variant(f"{shape}-p2-durable", f"{shape} P2 durable floor: the floor, sync -f after tar and mv",
                        shell(f"mkdir d && tar xzf '{artifact}' -C d && sync -f d && ln -s d tmp && mv -T tmp current "
                              "&& sync -f .", probe)),
                Variant(f"{shape}-p2-tether", f"{shape} P2 tether reconcile (file://)", tether(artifact.as_uri(), probe)),
                Variant(f"{shape}-p1-floor", f"{shape} P1 floor: curl -o f && tar xzf f && ln && mv -T",
                        shell(f"curl -sS -o f '{url}' && mkdir d && tar xzf f -C d && ln -s d tmp && mv -T tmp current",
                              probe)),
                Variant(f"{shape}-p1-tether", f"{shape} P1 tether reconcile (http://127.0.0.1)", tether(url, probe)),
            ]
            if daemon is not None:
                variants += [
                    Variant(f"{shape}-p2-daemon", f"{shape} P2 tether run, already running (file://)",
                            daemon.variant(url_source(artifact.as_uri()), probe)),
                    Variant(f"{shape}-p1-daemon", f"{shape} P1 tether run, already running (http://)",
                            daemon.variant(url_source(url), probe)),
                ]
            if collections is not None:
                variants += [
                    Variant(f"{shape}-p2-peer", f"{shape} P2 peer: ansible deploy_helper + unarchive",
                            ansible_peer(str(artifact), probe, collections)),
                    Variant(f"{shape}-p1-peer", f"{shape} P1 peer: ansible deploy_helper + unarchive of the URL",
                            ansible_peer(url, probe, collections)),
                ]
            if rated is not None and shape == "small":
                slow = rated.url(artifact.name)
                variants += [
                    Variant(f"{shape}-p1r-floor", f"{shape} P1 @{args.rate:g} Mbit/s floor: curl -o f && tar xzf f",
                            shell(f"curl -sS -o f '{slow}' && mkdir d && tar xzf f -C d && ln -s d tmp && "
                                  "mv -T tmp current", probe)),
                    Variant(f"{shape}-p1r-stream", f"{shape} P1 @{args.rate:g} Mbit/s floor: curl | tar xzf -",
                            shell(f"mkdir d && curl -sS '{slow}' | tar xzf - -C d && ln -s d tmp && mv -T tmp current",
                                  probe)),
                    Variant(f"{shape}-p1r-tether", f"{shape} P1 @{args.rate:g} Mbit/s tether reconcile",
                            tether(slow, probe)),
                ]
        variants += [Variant("py-bare", "python -c pass", python_startup("pass")),
                     Variant("py-import", "python -c 'import controller.cli.main'",
                             python_startup("import controller.cli.main"))]
        if only:
            variants = [v for v in variants if v.key in only]
        by_key = {v.key: v for v in variants}
        print(f"  runs       1 warm-up + {args.repeat} timed runs of each variant, interleaved")
        sys.stdout.flush()

        runs = workdir / "runs"
        runs.mkdir()
        filesystems = Filesystems(runs, fresh)
        for variant in variants:
            filesystems.once(variant)
        for repetition in range(args.repeat):
            for variant in variants:
                variant.times.append(filesystems.once(variant))
            print(f"  run {repetition + 1}/{args.repeat}: " + "  ".join(
                f"{v.key} {v.times[-1].wall:.2f}/{v.times[-1].cpu:.2f}" for v in variants), flush=True)

        print()
        print(f"{'':4} {'variant (wall/cpu per run above)':58} {'median s':>9} {'min s':>7} {'cpu s':>7}")
        for variant in variants:
            print(f"{'':4} {variant.label:58} {variant.median:9.3f} {variant.best:7.3f} {variant.cpu:7.3f}")

        rows = []
        for shape in shapes:
            small_files = shape != "large"
            rows += [("P1", f"{shape}: http vs curl -o && tar", f"{shape}-p1-tether", f"{shape}-p1-floor", 1.0),
                     ("P2", f"{shape}: file vs tar xzf", f"{shape}-p2-tether", f"{shape}-p2-floor",
                      1.2 if small_files else 0.8),
                     ("P2", f"{shape}: file vs tar xzf && sync -f", f"{shape}-p2-tether", f"{shape}-p2-durable", None),
                     ("P1", f"{shape}: daemon http vs curl -o && tar", f"{shape}-p1-daemon", f"{shape}-p1-floor", 1.0),
                     ("P2", f"{shape}: daemon file vs tar xzf", f"{shape}-p2-daemon", f"{shape}-p2-floor",
                      1.2 if small_files else 0.8),
                     ("P1", f"{shape}: http vs ansible peer", f"{shape}-p1-tether", f"{shape}-p1-peer", None),
                     ("P2", f"{shape}: file vs ansible peer", f"{shape}-p2-tether", f"{shape}-p2-peer", None),
                     ("P1", f"{shape}: @{args.rate:g} Mbit/s vs curl -o && tar", f"{shape}-p1r-tether",
                      f"{shape}-p1r-floor", 1.0),
                     ("P1", f"{shape}: @{args.rate:g} Mbit/s vs curl | tar", f"{shape}-p1r-tether",
                      f"{shape}-p1r-stream", None)]
        print()
        print(f"{'id':4} {'comparison':40} {'tether s':>9} {'other s':>8} {'ratio':>7} {'min/min':>8} "
              f"{'cpu ratio':>9} {'target':>8}  verdict")
        for ident, text, ours, theirs, target in rows:
            if ours not in by_key or theirs not in by_key:
                continue
            mine, floor = by_key[ours], by_key[theirs]
            ratio = mine.median / floor.median
            target_text = f"<= {target:.1f}x" if target is not None else "context"
            verdict = ("meets" if ratio <= target else "MISSES") if target is not None else "-"
            print(f"{ident:4} {text:40} {mine.median:9.3f} {floor.median:8.3f} {ratio:6.2f}x "
                  f"{mine.best / floor.best:7.2f}x {mine.cpu / floor.cpu:8.2f}x {target_text:>8}  {verdict}")
        print("(medians of wall time; other = the floor, or the Ansible peer in the peer rows; ratio = median/median;")
        print(" min/min = best/best; cpu = user+sys of the command and its children from wait4, the guide on a shared")
        print(" machine)")
        if "py-import" in by_key and "py-bare" in by_key:
            print(f"python start-up with `import controller.cli.main` (what `tether` imports): "
                  f"{by_key['py-import'].median:.3f} s median "
                  f"({by_key['py-bare'].median:.3f} s for a bare interpreter)")
        return 0
    finally:
        if daemon is not None:
            daemon.close()
        for each in servers:
            each.close()
        if args.keep:
            print(f"kept {workdir}")
        else:
            start = time.perf_counter()
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"removed {workdir} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
