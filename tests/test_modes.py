"""controller.artifacts.modes against tarfile.data_filter, over every mode and every member type."""

from __future__ import annotations

import stat
import tarfile

import pytest

from controller import errors
from controller.artifacts import modes

TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}
SPECIAL = {"character device": tarfile.CHRTYPE, "block device": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}
data_filter = getattr(tarfile, "data_filter", None)
needs_filter = pytest.mark.skipif(data_filter is None, reason="this Python's tarfile has no data_filter")


def _member(kind: int, mode: int, tmp_path: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo("a/member")
    info.type, info.mode = kind, mode
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "a/other" if kind == tarfile.LNKTYPE else "other"
    return info


@needs_filter
@pytest.mark.parametrize("kind", sorted(TYPES))
def test_the_mode_arithmetic_equals_tarfiles_data_filter_for_every_mode_of_every_member_type(kind: str,
                                                                                            tmp_path: object) -> None:
    assert data_filter is not None
    differences = []
    for mode in range(0o10000):
        expected = data_filter(_member(TYPES[kind], mode, str(tmp_path)), str(tmp_path)).mode
        if modes.filtered(kind, mode) != expected:
            differences.append(f"{mode:04o}: tether {modes.filtered(kind, mode)!r}, data_filter {expected!r}")
    assert differences == []


@needs_filter
@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_a_special_member_that_data_filter_refuses_is_refused_whatever_its_mode(kind: str, tmp_path: object) -> None:
    assert data_filter is not None
    for mode in range(0, 0o10000, 0o111):
        with pytest.raises(tarfile.FilterError):
            data_filter(_member(SPECIAL[kind], mode, str(tmp_path)), str(tmp_path))
        with pytest.raises(errors.ArchiveError, match="special file"):
            modes.filtered(kind, mode)


def test_the_mode_on_disk_never_has_setuid_setgid_sticky_or_group_and_other_write_and_the_owner_can_read() -> None:
    for kind in modes.KINDS:
        for mode in range(0o10000):
            result = modes.on_disk(kind, mode)
            assert result & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o022) == 0, (kind, oct(mode))
            assert result & 0o400, (kind, oct(mode))
            if kind == "dir":
                assert result == 0o755, oct(mode)


def test_a_mode_of_zero_gives_the_default_mode() -> None:
    assert modes.on_disk("file", 0) == 0o644
    assert modes.on_disk("dir", 0) == 0o755
