"""tether's tar reader refuses what tar implementations read differently, and stays linear on hostile headers."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

from controller import errors
from controller.artifacts import archives, extracting, member_names, members, tar_reader
from controller.manifests import model
from tests import support
from tests.test_hostile_archives import _block, _file, _header, _pax

END = b"\0" * 1024


def _long(kind: bytes, text: str) -> bytes:
    body = text.encode() + b"\0"
    return _header("././@LongLink", len(body), kind) + _block(body)


def _global(records: dict[str, bytes]) -> bytes:
    return _retype(_pax(records), b"g")


def _retype(header_and_body: bytes, kind: bytes) -> bytes:
    header = bytearray(header_and_body[:512])
    header[156:157] = kind
    header[148:156] = b" " * 8
    header[148:156] = f"{sum(header):06o}\0 ".encode()
    return bytes(header) + header_and_body[512:]


def _entries(data: bytes) -> list[members.Entry]:
    found = []
    for entry in tar_reader.entries(io.BytesIO(data)):
        if entry.data is not None:
            with entry.data() as source:
                source.read(-1)
        found.append(entry)
    return found


@pytest.mark.parametrize("headers", [
    [_long(b"L", "site/index.php"), _pax({"path": b"site/README.txt"})],
    [_pax({"path": b"site/README.txt"}), _long(b"L", "site/index.php")],
    [_long(b"L", "site/a"), _long(b"L", "site/b")],
    [_pax({"size": b"1"}), _pax({"size": b"2"})],
    [_long(b"K", "a"), _pax({"linkpath": b"b"})],
], ids=["long name then pax path", "pax path then long name", "two long names", "two pax sizes", "two link targets"])
def test_two_headers_that_set_the_same_field_of_a_member_are_refused(headers: list[bytes]) -> None:
    with pytest.raises(errors.ArchiveError, match="both set its"):
        _entries(b"".join(headers) + _file("site/x", b"x") + END)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE])
def test_a_link_or_directory_header_with_data_after_it_is_refused(kind: bytes) -> None:
    hidden = _file("site/hidden.php", b"<?php evil();")  # what tarfile would read as the next member
    data = _header("site/thing", len(hidden), kind, linkname="site/ok") + hidden + _file("site/ok", b"x") + END

    with pytest.raises(errors.ArchiveError, match="bytes of data"):
        _entries(data)


def test_an_old_style_directory_with_data_after_it_is_refused() -> None:
    hidden = _file("site/hidden.php", b"<?php evil();")
    with pytest.raises(errors.ArchiveError, match="dir with"):
        _entries(_header("site/d/", len(hidden), tarfile.AREGTYPE) + hidden + END)


def test_a_pax_global_header_may_set_only_the_modification_time() -> None:
    data = _global({"mtime": b"12345", "comment": b"v1", "SCHILY.xattr.x": b"y"}) + _file("site/a", b"a") + END
    assert [(entry.name, entry.mtime) for entry in _entries(data)] == [("site/a", 12345.0)]
    for key in ("path", "linkpath", "size"):
        with pytest.raises(errors.ArchiveError, match="global header"):
            _entries(_global({key: b"1"}) + _file("site/a", b"a") + END)


def test_an_archive_of_global_headers_alone_has_no_members_but_one_that_ends_after_a_member_s_header_is_refused(
        ) -> None:
    # `git archive` of an empty commit writes its pax global header (the commit id), then the end blocks.
    assert _entries(_global({"comment": b"0" * 40}) + END) == []
    assert _entries(_global({"comment": b"a"}) + _global({"mtime": b"1"}) + END) == []
    for describing in (_pax({"path": b"site/a"}), _long(b"L", "site/a"), _global({"mtime": b"1"}) + _long(b"K", "b")):
        with pytest.raises(errors.ArchiveError, match="without the member it describes"):
            _entries(describing + END)


def test_a_member_s_own_pax_mtime_wins_over_the_global_one() -> None:
    data = _global({"mtime": b"5"}) + _pax({"mtime": b"7.5"}) + _file("site/a", b"a") + _file("site/b", b"b") + END
    assert [entry.mtime for entry in _entries(data)] == [7.5, 5.0]


def test_bytes_345_to_500_are_a_name_prefix_only_under_posix_ustar_magic() -> None:
    def with_prefix(magic: bytes) -> bytes:
        header = bytearray(_header("index.html", 1))
        header[257:265], header[345:350] = magic, b"admin"
        return _retype(bytes(header), b"0") + _block(b"x")

    assert [e.name for e in _entries(with_prefix(b"ustar\x0000") + END)] == ["admin/index.html"]
    assert [e.name for e in _entries(with_prefix(b"ustar  \x00") + END)] == ["index.html"]  # old GNU: times there
    assert [e.name for e in _entries(with_prefix(b"\0" * 8) + END)] == ["index.html"]  # v7


def test_a_lone_header_before_the_end_of_the_stream_is_truncation_not_an_empty_archive() -> None:
    for lone in (_pax({"path": b"site/a"}), _long(b"L", "site/a")):
        with pytest.raises(errors.ArchiveError, match="truncated"):
            _entries(lone)
    with pytest.raises(errors.ArchiveError, match="empty"):
        _entries(b"")


def test_pax_records_tether_does_not_use_are_not_kept_so_a_large_global_header_costs_once() -> None:
    many = {f"k{index:06d}": b"v" for index in range(20_000)}
    data = _global({**many, "mtime": b"3"}) + b"".join(
        _pax(dict(list(many.items())[:50])) + _file(f"site/f{index}", b"x") for index in range(200)) + END
    reader = tar_reader._Reader(io.BytesIO(data))
    assert len(list(reader.entries())) == 200
    assert reader._globals == {"mtime": 3.0}


def _symlink_chain(count: int) -> bytes:
    detour = "x/../" * 200
    parts = [_header("site/x", 0, tarfile.DIRTYPE)]
    for index in range(count):
        parts.append(_pax({"linkpath": f"{detour}s{index + 1}".encode()})
                     + _header(f"site/s{index}", 0, tarfile.SYMTYPE, linkname="placeholder"))
    return b"".join(parts) + _file(f"site/s{count}", b"end") + END


def test_checking_an_archive_s_symlinks_is_bounded_in_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _symlink_chain(30)
    fine, bounded = tmp_path / "fine", tmp_path / "bounded"
    fine.mkdir()
    bounded.mkdir()
    budget = archives.Budget(model.Limits(), lambda: len(data))
    extracting.extract(io.BytesIO(data), str(fine), fmt="tar", strip=None, owner=None, budget=budget,
                       spool_dir=str(tmp_path))
    monkeypatch.setattr(member_names, "MAX_LINK_STEPS", 500)

    with pytest.raises(errors.ArchiveError, match="steps to resolve"):
        extracting.extract(io.BytesIO(data), str(bounded), fmt="tar", strip=None, owner=None,
                           budget=archives.Budget(model.Limits(), lambda: len(data)), spool_dir=str(tmp_path))


@pytest.mark.parametrize("size", [b"-1536", b"-1", b"+5", b" 5", b"1_0", "\u0663".encode(), b"1.0", b"0x10"])
def test_a_pax_size_that_is_not_plain_decimal_digits_is_refused(size: bytes) -> None:
    data = _pax({"size": size}) + _file("site/a.txt", b"x" * 512) + _file("site/b.txt", b"b") + END
    with pytest.raises(errors.ArchiveError, match="is not a number"):
        _entries(data)


@pytest.mark.parametrize("mtime,expected", [(b"5", 5.0), (b"-5", -5.0), (b"1.25", 1.25), (b"1e-05", 1e-05)])
def test_a_pax_mtime_is_read_as_tar_writers_write_it(mtime: bytes, expected: float) -> None:
    assert [e.mtime for e in _entries(_pax({"mtime": mtime}) + _file("site/a", b"a") + END)] == [expected]


@pytest.mark.parametrize("block", [bytes(512), b"\xff" * 512, b"\x80" * 512, bytes(range(256)) * 2,
                                   *(random.Random(seed).randbytes(512) for seed in range(200))])
def test_the_header_checksum_sum_is_the_plain_sum_of_the_bytes(block: bytes) -> None:
    assert tar_reader.byte_sum(block) == sum(block)


@pytest.mark.parametrize("where", [0, 100, 147, 156, 157, 300, 511])
def test_a_header_with_one_byte_changed_fails_its_checksum(where: int) -> None:
    data = bytearray(support.tar_bytes([support.Member("site/index.html", b"x")], compression=""))
    data[where] ^= 0x01

    with pytest.raises(errors.ArchiveError, match="checksum"):
        _entries(bytes(data))


class _Trickle(io.RawIOBase):
    """A stream that returns at most `step` bytes a read, so that members straddle the reader's buffer."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        count = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._pos:self._pos + count]
        self._pos += len(chunk)
        return chunk


@pytest.mark.parametrize("step", [511, 512, 4096, 100_000, tar_reader.CHUNK])
def test_a_member_s_content_given_with_its_header_is_exactly_its_data(step: int) -> None:
    rng = random.Random(step)
    sizes = [0, 1, 511, 512, 513, 4095, 65_536, 300_000, *(rng.randrange(0, 20_000) for _ in range(200))]
    payloads = {f"site/f{index}": rng.randbytes(size) for index, size in enumerate(sizes)}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, payload in payloads.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    given = 0
    for index, entry in enumerate(tar_reader.entries(_Trickle(out.getvalue(), step))):
        expected = payloads[entry.name]
        if entry.content is not None:
            given += 1
            assert bytes(entry.content) == expected
        if index % 2:  # every other member read through `data` too, content given or not: the same bytes
            assert entry.data is not None
            with entry.data() as source:
                read = b"".join(iter(lambda: bytes(source.read(7000)), b""))
            assert read == expected
    if step >= 100_000:
        assert given > len(payloads) // 2  # the shortcut is taken, not only correct
