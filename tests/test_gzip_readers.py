"""gzip through isal (when installed) and through zlib: the same bytes, and the same refusals."""

from __future__ import annotations

import gzip
import io
import sys

import pytest

from controller import errors
from controller.artifacts import archives
from controller.manifests import model

PAYLOAD = bytes(range(256)) * 4000
GOOD = gzip.compress(PAYLOAD)
READERS = [False, *([True] if archives.isal_available() else [])]


def _read(data: bytes, isal: bool) -> bytes:
    stream = archives.Metered(archives.decompressed(io.BytesIO(data), "tar.gz", isal=isal),  # type: ignore[arg-type]
                              archives.Budget(model.Limits(), lambda: len(data)))
    out = b""
    while chunk := stream.read(65536):
        out += chunk
    return out


def test_isal_is_installed_where_the_tests_run_unless_they_run_on_debian_12_libraries() -> None:
    # the test venv installs tether[test], which has isal; the Debian 12 venv has only Debian's packages
    assert archives.isal_available() or "debian12" in sys.prefix


@pytest.mark.parametrize("isal", READERS)
@pytest.mark.parametrize("data", [GOOD, GOOD + GOOD, GOOD + b"\0" * 10], ids=["one member", "two members", "padding"])
def test_a_valid_gzip_stream_reads_the_same_either_way(isal: bool, data: bytes) -> None:
    assert _read(data, isal) == PAYLOAD * (2 if data == GOOD + GOOD else 1)


@pytest.mark.parametrize("isal", READERS)
@pytest.mark.parametrize("data", [GOOD[:-10], GOOD[:40], GOOD + b"junk", GOOD[:-8] + b"\0\0\0\0" + GOOD[-4:],
                                  GOOD[:-4] + b"\1\0\0\0", b"\x1f\x8b" + b"\xff" * 100],
                         ids=["truncated", "truncated early", "trailing junk", "bad CRC", "bad length", "garbage"])
def test_a_damaged_gzip_stream_is_an_archive_error_either_way(isal: bool, data: bytes) -> None:
    with pytest.raises(errors.ArchiveError):
        _read(data, isal)
