"""What validation made of each manifest, kept in the state dir between daemon starts (design section 9, P4).

Reading and validating 1000 manifests costs over a second of CPU (PyYAML's composer, then jsonschema), and
a daemon that restarts on a node where nothing changed would spend it on every start. The daemon keeps the
validated document of each manifest (defaults filled in) and the line of each JSON pointer in
`<state-dir>/validated-manifests.json`, by the sha256 of the manifest's bytes. A manifest whose bytes are not
in the cache is read and validated as always; the application is built from the cached document by the
same code as from a fresh one, and the checks across manifests run on every scan.

The file is derived data that tether never trusts blindly (design section 13):

- it holds a format, and a key made of everything that decides what validation makes of the same bytes:
  tether's version, the Python, PyYAML and jsonschema versions, the schemas and the source of the modules
  that parse and validate. Another key (an upgrade, a changed schema) or format: the whole file is ignored
  and rebuilt;
- a sha256 of its entries guards against a torn or damaged file; a file that is not a regular file owned
  by root (or tether's user), or that group or others may write, is ignored too;
- an entry that does not have the expected shape, or from which the application cannot be built, is
  re-read from the manifest.

Writing it never fails a scan: a full disk or a read-only state dir costs a warning, and the next start
validates again. It is written without fsync: after a crash it may be old or torn, and is then ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import sys
import urllib.parse
from typing import Any

import yaml

from controller import __version__, fsutil
from controller.manifests import documents, validation

log = logging.getLogger(__name__)
FORMAT = 1
Entry = tuple[dict[str, Any], dict[str, int], str]  # validated document, line of each JSON pointer, schema name


def cache_path(state_dir: str) -> str:
    return os.path.join(state_dir, "validated-manifests.json")


def _source(module: Any) -> bytes:
    try:
        with open(module.__file__, "rb") as handle:
            return handle.read()
    except (OSError, TypeError):
        return b""


def validation_key() -> str:
    """A digest of everything that decides what validation makes of a manifest's bytes."""
    # Imported here, not above: 5 ms (email, zipfile...) that a command which never reads the cache, such as
    # `tether reconcile`, would spend at every start.
    import importlib.metadata
    digest = hashlib.sha256(f"{FORMAT} {__version__} {sys.version} {yaml.__version__}".encode())
    try:
        digest.update(importlib.metadata.version("jsonschema").encode())
    except importlib.metadata.PackageNotFoundError:
        digest.update(b"jsonschema unknown")
    for name in sorted(validation.KIND_TO_SCHEMA.values()):
        digest.update(validation.schema_text(name).encode())
    digest.update(_source(documents) + _source(validation))
    return digest.hexdigest()


def _holds_secret(document: dict[str, Any]) -> bool:
    """Whether the manifest carries a secret in itself: a literal HTTP header value, or credentials or a query
    (a presigned URL's signature, say) in an artifact or repository URL."""
    source = document.get("spec", {}).get("source") if isinstance(document.get("spec"), dict) else None
    if not isinstance(source, dict):
        return False
    git: dict[str, Any] = source["git"] if isinstance(source.get("git"), dict) else {}
    for url in (source.get("url"), git.get("url")):
        if isinstance(url, str) and ("@" in urllib.parse.urlsplit(url).netloc or "?" in url or "#" in url):
            return True
    return any(isinstance(value, str) for headers in (source.get("headers"), git.get("headers"))
               if isinstance(headers, dict) for value in headers.values())


def _entry(value: Any) -> Entry | None:
    """A cached entry if it has the shape `put` writes."""
    if not (isinstance(value, list) and len(value) == 3):
        return None
    document, lines, schema_name = value
    if not (isinstance(document, dict) and isinstance(lines, dict) and isinstance(document.get("kind"), str)
            and validation.KIND_TO_SCHEMA.get(document["kind"]) == schema_name
            and all(isinstance(k, str) and type(v) is int for k, v in lines.items())):
        return None  # the schema name must be the one the document's kind selects
    return document, lines, schema_name


class Store:
    """The cache file of one state dir, as the daemon's scans use it (one thread)."""

    def __init__(self, state_dir: str, key: str | None = None, euid: int | None = None) -> None:
        self.path = cache_path(state_dir)
        self.key = validation_key() if key is None else key
        self.euid = os.geteuid() if euid is None else euid
        self._entries: dict[str, Any] | None = None  # digest -> entry as read or put; None until loaded
        self._used: set[str] = set()
        self._dirty = False
        self._failed = False  # a write failed: said once
        self.hits = self.misses = 0  # for tests and benchmarks

    def _load(self) -> dict[str, Any]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def _read(self) -> dict[str, Any]:
        try:
            data, st = fsutil.read_bytes_stat(self.path)
        except OSError:
            return {}
        if st is not None and (not stat.S_ISREG(st.st_mode) or documents.insecure_reason(self.path, st, self.euid)):
            log.warning("Ignoring the manifest cache %s: it is not a regular file that only root may write; "
                        "tether validates every manifest and writes it again.", self.path)
            return {}
        header, _, body = (data or b"").partition(b"\n")
        try:
            head = json.loads(header)
            if not (isinstance(head, dict) and head.get("format") == FORMAT and head.get("key") == self.key
                    and head.get("sha256") == hashlib.sha256(body).hexdigest()):
                return {}
            entries = json.loads(body)
        except (ValueError, RecursionError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def begin(self) -> None:
        """A scan starts: the entries it does not use are dropped when it ends (`save`)."""
        self._used = set()

    def get(self, digest: str) -> Entry | None:
        """What validation made of the manifest whose bytes have this sha256, if cached."""
        entry = _entry(self._load().get(digest))
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        self._used.add(digest)
        return entry

    def touch(self, digest: str) -> None:
        """The scan used this manifest (from the daemon's memory): keep its entry."""
        self._used.add(digest)

    def put(self, digest: str, document: dict[str, Any], lines: dict[str, int], schema_name: str) -> None:
        """Remember a validated document, unless JSON cannot hold it exactly (YAML dates, integer keys) or it
        carries a secret (_holds_secret): a secret stays where the operator put it, in the manifest alone."""
        if _holds_secret(document):
            return
        value = [document, lines, schema_name]
        try:
            if json.loads(json.dumps(value, allow_nan=False)) != value:
                return
        except (TypeError, ValueError, RecursionError):
            return
        self._load()[digest] = value
        self._used.add(digest)
        self._dirty = True

    def save(self) -> None:
        """Write the entries this scan used, if that changes the file; never raise."""
        entries = self._load()
        if not self._dirty and set(entries) <= self._used:
            return
        kept = {digest: entries[digest] for digest in sorted(self._used) if digest in entries}
        try:
            body = json.dumps(kept, separators=(",", ":"), sort_keys=True).encode()
            header = json.dumps({"format": FORMAT, "key": self.key, "sha256": hashlib.sha256(body).hexdigest()})
            fsutil.atomic_write(self.path, header.encode() + b"\n" + body, 0o600, durable=False)
        except Exception as exc:  # a cache: the scan goes on without it
            (log.debug if self._failed else log.warning)(
                "Cannot write the manifest cache %s (%s); the next start validates every manifest again.",
                self.path, exc)
            self._failed = True
            return
        self._entries, self._dirty = kept, False
