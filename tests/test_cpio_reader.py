"""The cpio reader: our archives, GNU cpio's archives, and every way an archive can be broken."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootlab.image import cpio
from bootlab.image.cpio import CpioError, read_archive
from bootlab.image.entry import Entry, Kind, file, symlink


def archive(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    cpio.write(buf, entries)
    return buf.getvalue()


SAMPLE = [file("a", b"hello"), symlink("b", "a"), Entry("c", Kind.CHAR, 0o600, rdev=(5, 1)),
          Entry("d", Kind.DIR, 0o755), file("d/e", b"x" * 5000, 0o755)]


def test_reads_back_what_we_write() -> None:
    data = archive(SAMPLE)
    members, end = read_archive(data)
    assert end == len(data)
    assert [m.name for m in members] == ["a", "b", "c", "d", "d/e"]
    assert [m.kind for m in members] == [Kind.FILE, Kind.SYMLINK, Kind.CHAR, Kind.DIR, Kind.FILE]
    assert data[members[0].data_offset:members[0].data_offset + 5] == b"hello"
    assert (members[2].rdevmajor, members[2].rdevminor) == (5, 1)
    assert members[4].perm == 0o755 and members[4].size == 5000


def test_reads_gnu_cpio_output_with_hardlinks(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t/one").write_bytes(b"shared")
    (tmp_path / "t/two").hardlink_to(tmp_path / "t/one")
    (tmp_path / "t/ln").symlink_to("one")
    out = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], input=b"t\nt/ln\nt/one\nt/two\n",
                         cwd=tmp_path, capture_output=True, check=True).stdout
    members, _ = read_archive(out)
    by = {m.name: m for m in members}
    assert by["t/one"].nlink == 2 and by["t/one"].ino == by["t/two"].ino
    assert by["t/one"].size + by["t/two"].size == 6  # the data is on one of the names


def test_our_hardlinks_carry_data_on_the_last_name(tmp_path: Path) -> None:
    data = archive([file("x", b"payload"), Entry("y", Kind.FILE, hardlink_of="x")])
    members, _ = read_archive(data)
    assert [(m.name, m.size, m.nlink) for m in members] == [("x", 0, 2), ("y", 7, 2)]
    assert members[0].ino == members[1].ino
    subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "x").read_bytes() == b"payload"
    assert (tmp_path / "x").stat().st_ino == (tmp_path / "y").stat().st_ino


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:50], "truncated"),
    (lambda d: d[:-20], "truncated"),
    (lambda d: d[: d.index(b"hello") + 2], "truncated"),
    (lambda d: b"070707" + d[6:], "old-format"),
    (lambda d: b"NOTCPIO" + d[7:], "bad cpio magic"),
    (lambda d: d[:6] + b"ZZZZZZZZ" + d[14:], "not hexadecimal"),
    (lambda d: d[:8] + b"  " + d[10:], "not hexadecimal"),  # bytes.fromhex would skip the spaces
    (lambda d: d[:94] + b"00000000" + d[102:], "empty name"),
    (lambda d: d[:94] + b"FFFFFFFF" + d[102:], "truncated"),
    (lambda d: d[:14 + 8 * 5] + b"7FFFFFFF" + d[14 + 8 * 6:], "truncated"),
])
def test_malformed_archives_raise_one_clear_error(mutate, message: str) -> None:
    with pytest.raises(CpioError, match=message):
        read_archive(mutate(archive(SAMPLE)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        read_archive(data)
    except CpioError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=400), st.integers(min_value=0, max_value=255))
def test_fuzz_single_byte_corruption(pos: int, value: int) -> None:
    data = bytearray(archive(SAMPLE))
    data[pos % len(data)] = value
    try:
        members, end = read_archive(bytes(data))
        assert end <= len(data)
        for m in members:
            assert m.data_offset + m.size <= len(data)
    except CpioError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=103), st.text(alphabet=" \t\n0123456789abcdefABCDEF+-_xX", min_size=1, max_size=4))
def test_fuzz_header_fields_with_text_a_hex_parser_might_accept(at: int, text: str) -> None:
    """Random bytes seldom look like hex; these do: spaces (bytes.fromhex skips them), signs,
    underscores and 0x (int() takes those). Both readers agree: the same entries, or a CpioError."""
    data = bytearray(archive(SAMPLE))
    data[6 + at:6 + at + len(text)] = text.encode()  # within the first header's fields (and name)
    outcomes = []
    for read in (_whole_read, _stream_read):
        try:
            outcomes.append([(m.name, m.mode, m.size, m.link) for m in read(bytes(data))])
        except CpioError:
            outcomes.append(None)
    assert outcomes[0] == outcomes[1]


def _whole_read(data: bytes) -> list[cpio.Member]:
    return read_archive(data)[0]


def _stream_read(data: bytes) -> list[cpio.Member]:
    parser = cpio.StreamParser()
    for i in range(0, len(data), 7):  # small pieces: headers split across them
        parser.feed(data[i:i + 7])
    parser.close()
    return parser.members
