"""A zip's central directory, checked against the limits before zipfile reads it.

zipfile reads the whole central directory into memory and makes an object of
every entry in it, whatever the end record claims; a small file can list
millions. `check` reads the end record zipfile will use, bounds the size of
the directory, and counts its entries by streaming them, before that happens.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable
from typing import Any

from controller import errors
from controller.manifests import model

ENTRY = struct.Struct("<4s4B4HL2L5H2L")  # a central directory entry, as zipfile.structCentralDir
ENTRY_SIGNATURE = b"PK\x01\x02"
ZIP64_END = b"PK\x06\x06"
ZIP64_RECORDS = 56 + 20  # the zip64 end record and its locator, which zipfile expects right before the end record
BASE_BYTES = 16 * 1024 * 1024  # central directory bytes allowed whatever maxMembers says ...
BYTES_PER_MEMBER = 512  # ... plus this much per member allowed (a typical entry takes 100-200)

# zipfile's own reader of the end records, so that tether checks exactly the directory zipfile will read.
_end_record: Callable[[Any], list[Any] | None] = zipfile._EndRecData  # type: ignore[attr-defined]


def check(path: str, limits: model.Limits) -> None:
    """Refuse a zip whose central directory is larger than the limits allow, before it is read."""
    with open(path, "rb") as handle:
        end = _end_record(handle)
        if not end:
            return  # zipfile says it is not a zip file
        _, _, _, _, count, size, _, _, _, location = end[:10]
        if count > limits.max_members:
            raise errors.ArchiveError(
                f"the zip's central directory lists {count} members, more than limits.maxMembers "
                f"{limits.max_members}; raise the limit if this is expected")
        allowed = BASE_BYTES + BYTES_PER_MEMBER * limits.max_members
        if size > allowed:
            raise errors.ArchiveError(
                f"the zip's central directory is {size} bytes, more than tether reads for limits.maxMembers "
                f"{limits.max_members} ({allowed} bytes); raise maxMembers if this artifact really is that large")
        start = location - size - (ZIP64_RECORDS if end[0] == ZIP64_END else 0)
        if start < 0:
            return  # zipfile refuses it
        handle.seek(start)
        total = members = 0
        while total < size:
            head = handle.read(ENTRY.size)
            if len(head) != ENTRY.size or head[:4] != ENTRY_SIGNATURE:
                return  # zipfile refuses it
            fields = ENTRY.unpack(head)
            members += 1
            if members > limits.max_members:
                raise errors.ArchiveError(
                    f"the zip's central directory has more than {limits.max_members} members (limits.maxMembers); "
                    "raise the limit if this is expected")
            rest = fields[12] + fields[13] + fields[14]  # name, extra field and comment lengths
            handle.seek(rest, 1)
            total += ENTRY.size + rest
