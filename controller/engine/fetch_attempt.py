"""One attempt at getting the artifact into a new deployment directory: download it (or mirror and
archive a git source), extract it into staging, verify it, and move its entries into the directory the
engine made (controller/engine/reconciling.py calls these, retrying a failed attempt).

The staging directory is removed whatever happens; the entries move into place only after the
artifact is verified, through descriptors of the directory the engine made.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
from collections.abc import Callable, Mapping

from controller import errors, fsutil, nofollow
from controller.artifacts import archives, extracting, fetching
from controller.artifacts import cache as artifact_cache
from controller.manifests import model
from controller.tree import owners, records


def fetch(fetcher: fetching.Fetcher, cache: artifact_cache.Entry, checkpoint: Callable[[str], None],
          on_progress: Callable[[str, str, archives.Budget], None] | None,
          app: model.Application, deployment: str, owner: owners.Owner, url: str,
          headers: Mapping[str, str], made: os.stat_result,
          cancel: threading.Event | None = None, extracted: extracting.Made | None = None,
          flush: Callable[[], None] = lambda: None) -> tuple[str, int]:
    """One attempt: download and extract into staging, verify, move into place; (sha256, bytes). `extracted`
    receives what extraction made, with the files' digests; `cache` keeps a copy of the artifact (the caller
    stores it once the deployment is durable)."""
    assert app.source is not None
    if extracted is not None:
        extracted.clear()  # a failed attempt's tree is gone
    source = app.source
    stage = tempfile.mkdtemp(prefix=deployment + "-", dir=records.staging_dir(app.path))
    try:
        with cache.writer() as sink, fetcher.open(url, headers, max_bytes=source.limits.max_bytes, sink=sink,
                                                  cancel=cancel, stall_seconds=source.stall_seconds) as download:
            progress = on_progress
            budget = archives.Budget(source.limits, lambda: download.received,
                                     None if progress is None else lambda counted: progress(app.name, deployment,
                                                                                            counted))
            body: archives.Readable = download if progress is None else _Ticking(download, budget)
            root = extracting.extract(body, stage, fmt=source.format, strip=source.strip_components,
                                      budget=budget, owner=owner, spool_dir=records.staging_dir(app.path),
                                      checkpoint=checkpoint, deb_root=source.deb_root, made=extracted,
                                      flush=flush)
            download.drain()
            digest, size = download.hexdigest(), download.received
            if source.sha256 is not None and digest != source.sha256:
                raise errors.ChecksumMismatch(
                    f"the artifact from {fetching.redact_url(url)} has sha256 {digest}, not {source.sha256} as "
                    "source.sha256 says; check the artifact and the manifest"
                )
            cache.keep()
        _move_entries(root, os.path.join(app.path, deployment), made)
    finally:
        fsutil.remove_tree(stage)
    return digest, size


def fetch_git(state_dir: str, environ: Mapping[str, str], checkpoint: Callable[[str], None],
              app: model.Application, deployment: str, owner: owners.Owner, headers: Mapping[str, str],
              made: os.stat_result, cancel: threading.Event | None = None,
              extracted: extracting.Made | None = None,
              flush: Callable[[], None] = lambda: None) -> tuple[str, int, str]:
    """One attempt for a git source: mirror, resolve, verify, extract, move into place; (sha256, bytes, commit)."""
    from controller.artifacts import git_source  # with git_runner, git_mirror, git_archive and git_verify

    if extracted is not None:
        extracted.clear()  # a failed attempt's tree is gone
    stage = tempfile.mkdtemp(prefix=deployment + "-", dir=records.staging_dir(app.path))
    try:
        done = git_source.deploy(state_dir, app, deployment, stage, owner=owner,
                                 spool_dir=records.staging_dir(app.path), headers=headers, environ=environ,
                                 cancel=cancel, checkpoint=checkpoint, extracted=extracted, flush=flush)
        _move_entries(done.root, os.path.join(app.path, deployment), made)
    finally:
        fsutil.remove_tree(stage)
    return done.sha256, done.size, done.commit


@dataclasses.dataclass(frozen=True)
class _Ticking:
    """The download as the extractor reads it, telling the budget's progress listener of each read: the bytes
    received count even while the decompressor waits for a whole buffer."""

    download: fetching.Download
    budget: archives.Budget

    def read(self, size: int = -1, /) -> bytes:
        data = self.download.read(size)
        if self.budget.progress is not None:
            self.budget.progress(self.budget)
        return data or b""


def _move_entries(root: str, target: str, made: os.stat_result) -> None:
    """Move the extracted entries into the deployment directory tether made (`made`), through descriptors:
    its user's hooks may have changed what is inside it, but never where the entries go."""
    with nofollow.walk(root, [], None, make=False) as source, nofollow.walk(target, [], None, make=False) as into:
        st = os.fstat(into)
        if (st.st_dev, st.st_ino) != (made.st_dev, made.st_ino):
            raise errors.PermanentError(f"{target} is no longer the directory tether made for this deployment; "
                                        "something replaced it during the pass")
        for name in sorted(os.listdir(source)):
            if nofollow.exists(name, into) is not None:
                raise errors.PermanentError(f"{os.path.join(target, name)} already exists (made by a beforeDeploy "
                                            "hook?) and the artifact ships it too")
            os.rename(name, name, src_dir_fd=source, dst_dir_fd=into)
