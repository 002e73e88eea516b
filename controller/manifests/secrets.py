"""Header values from the manifest: literals, files and environment variables.

Values are resolved just before a download and live only in memory; no
message built here contains one. A `fromFile` secret must be a regular file
(a symlink to one is followed, as Kubernetes-style secret mounts and config
management use them); a FIFO, socket, device or directory is refused without
being read, so it can never hang a pass that holds the application's lock.

:class:`Cleaner` is the scrubber for text a server supplies: it redacts every
secret sent with a request in any form a server may echo it (as sent, the
credentials after the auth scheme, Basic decoded, URL-encoded, base64, escaped;
case-insensitively), drops control characters and bounds the length.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import os
import re
import stat
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping

from controller import errors, fsutil
from controller.manifests import model

MAX_SECRET_BYTES = 64 * 1024
SERVER_TEXT_CHARS = 200  # a reason phrase, header or body excerpt quoted in an error
MESSAGE_CHARS = 2000
MIN_SCRUBBED = 4  # shorter values are not scrubbed: they would blank out ordinary words

def resolve(headers: Mapping[str, model.HeaderValue], environ: Mapping[str, str]) -> dict[str, str]:
    """The header values to send; raise PermanentError naming the source, never the value."""
    resolved = {}
    for name, value in headers.items():
        if value.from_file is not None:
            resolved[name] = read_file(f"header {name}", value.from_file)
        elif value.from_env is not None:
            if value.from_env not in environ:
                raise errors.PermanentError(
                    f"header {name} reads the environment variable {value.from_env}, which is not set; "
                    "set it in tether's service environment"
                )
            resolved[name] = environ[value.from_env]
        else:
            resolved[name] = value.literal or ""
        if any(c in resolved[name] for c in "\r\n\0"):
            raise errors.PermanentError(f"the value of header {name} contains a line break or NUL; fix its source")
    return resolved


def read_file(what: str, path: str) -> str:
    """Read a secret file (for `what`, e.g. "header Authorization") without ever blocking: O_NONBLOCK, and only
    a regular file is read. Its text, stripped; line breaks inside are kept (an ssh key has them)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        try:
            kind = fsutil.kind(os.stat(path).st_mode)
        except OSError:
            kind = ""
        if kind:  # e.g. a socket: open(2) fails with ENXIO
            raise _not_regular(what, path, kind) from None
        raise errors.PermanentError(
            f"{what} reads {path}, which cannot be read ({exc.strerror}); create it or fix its permissions"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(what, path, fsutil.kind(st.st_mode))
        if st.st_size > MAX_SECRET_BYTES:
            raise _too_large(what, path)
        data = fsutil.read_at_most(fd, MAX_SECRET_BYTES)
    except OSError as exc:
        raise errors.PermanentError(f"{what} reads {path}, which cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if data is None:
        raise _too_large(what, path)
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise errors.PermanentError(f"{what} reads {path}, which is not UTF-8 text") from None


def _not_regular(what: str, path: str, kind: str) -> errors.PermanentError:
    return errors.PermanentError(
        f"{what} reads {path}, which is {kind}, not a regular file; tether reads secrets only from "
        "regular files (a symlink to one is fine)"
    )


def _too_large(what: str, path: str) -> errors.PermanentError:
    return errors.PermanentError(f"{what} reads {path}, which is larger than 64 KiB; is it the right file?")


def _forms(value: str) -> Iterable[str]:
    """`value` and the parts of it a server may echo: the credentials after an auth scheme, and for
    Basic the decoded user:password and the password alone."""
    yield value
    scheme, _, credentials = value.strip().partition(" ")
    credentials = credentials.strip()
    if not credentials:
        return
    yield credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return
        yield decoded
        yield decoded.partition(":")[2]


def _encodings(value: str) -> Iterable[str]:
    """How `value` may look when a server reflects it: as sent, URL-encoded, base64, escaped."""
    yield value
    yield urllib.parse.quote(value, safe="")
    yield urllib.parse.quote_plus(value)
    yield base64.b64encode(value.encode()).decode()
    yield json.dumps(value)[1:-1]
    yield repr(value)[1:-1]
    yield repr(value.encode("utf-8", "replace"))[2:-1]
    import html  # here: only an application with secrets needs it

    yield html.escape(value)


def pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern matching every form of every secret value, longest first."""
    found = {encoded for value in values for form in _forms(value) for encoded in _encodings(form)
             if len(encoded) >= MIN_SCRUBBED}
    if not found:
        return None
    return re.compile("|".join(re.escape(text) for text in sorted(found, key=len, reverse=True)), re.IGNORECASE)


def scrub(text: str, values: Mapping[str, str] | Iterable[str]) -> str:
    """`text` with every secret value (in any form a server may echo it) replaced, for foreign output."""
    found = pattern(values.values() if isinstance(values, Mapping) else values)
    return text if found is None else found.sub("<redacted>", text)


def url_secrets(url: str) -> list[str]:
    """Credentials carried by a URL: its password and query values (redact_url hides them too)."""
    parts = urllib.parse.urlsplit(url)
    values = [value for _, value in urllib.parse.parse_qsl(parts.query)]
    return values + ([parts.password] if parts.password else [])


@dataclasses.dataclass(frozen=True)
class Cleaner:
    """Makes server-supplied text safe to show: secrets redacted, control characters dropped, bounded."""

    secret: re.Pattern[str] | None = None

    @classmethod
    def of(cls, values: Iterable[str]) -> Cleaner:
        return cls(pattern(values))

    def text(self, text: str, limit: int = SERVER_TEXT_CHARS) -> str:
        if self.secret is not None:
            text = self.secret.sub("<redacted>", text)
        text = "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in text)
        return text if len(text) <= limit else text[:limit] + "..."

    def error(self, exc: BaseException) -> str:
        """A protocol error of the server's making, e.g. BadStatusLine quoting the status line."""
        return self.text(f"{type(exc).__name__} {exc}")

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """The one place fetch errors leave: each is cleaned, and its cause (raw server text) dropped."""
        try:
            yield
        except errors.TetherError as exc:
            exc.message = self.text(exc.message, MESSAGE_CHARS)
            exc.args = (exc.message,)
            exc.__cause__ = exc.__context__ = None
            raise
