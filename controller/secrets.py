"""Header values from the manifest: literals, files and environment variables.

Values are resolved just before a download and live only in memory; no
message built here contains one.
"""

from __future__ import annotations

from collections.abc import Mapping

from controller import errors, manifests

MAX_SECRET_BYTES = 64 * 1024


def resolve(headers: Mapping[str, manifests.HeaderValue], environ: Mapping[str, str]) -> dict[str, str]:
    """The header values to send; raise PermanentError naming the source, never the value."""
    resolved = {}
    for name, value in headers.items():
        if value.from_file is not None:
            resolved[name] = _from_file(name, value.from_file)
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


def _from_file(name: str, path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise errors.PermanentError(
            f"header {name} reads {path}, which cannot be read ({exc.strerror}); create it or fix its permissions"
        ) from exc
    if len(data) > MAX_SECRET_BYTES:
        raise errors.PermanentError(f"header {name} reads {path}, which is larger than 64 KiB; is it the right file?")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise errors.PermanentError(f"header {name} reads {path}, which is not UTF-8 text") from exc


def scrub(text: str, values: Mapping[str, str]) -> str:
    """`text` with every secret value replaced, for anything built from foreign output."""
    for value in values.values():
        if len(value) >= 4:
            text = text.replace(value, "<redacted>")
    return text
