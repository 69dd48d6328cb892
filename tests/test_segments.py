"""Reading whole images: the streaming reader agrees with the whole-buffer one, and neither
crashes or hangs on damaged input."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootlab.errors import BadInput
from bootlab.image import compress, cpio
from bootlab.image.entry import Entry, Kind, file, symlink
from bootlab.image.initramfs import read_segments


def cpio_archive(n: int = 0) -> bytes:
    buf = io.BytesIO()
    cpio.write(buf, [Entry(f"d{n}", Kind.DIR, 0o755), file(f"d{n}/f", bytes(range(256)) * (n + 1)),
                     symlink(f"d{n}/l", "f")])
    return buf.getvalue()


def image(*algorithms: str) -> bytes:
    out = b""
    for n, alg in enumerate(algorithms):
        plain = cpio_archive(n)
        out += plain if alg == "none" else compress.compress(alg, plain)
    return out


def summary(data: bytes, keep: bool) -> list[object]:
    return [(s.offset, s.end, s.compression, s.size,
             [(m.name, m.mode, m.size, m.link, m.data_offset) for m in s.members])
            for s in read_segments(data, keep_data=keep)]


@pytest.mark.parametrize("algorithms", [("none",), ("none", "gzip", "zstd"), ("xz", "bzip2", "lzma"),
                                        ("none", "lzo", "lz4")])
def test_streaming_and_whole_readers_agree(algorithms: tuple[str, ...]) -> None:
    data = image(*algorithms)
    assert summary(data, True) == summary(data, False)
    segs = read_segments(data, keep_data=False)
    assert [s.compression or "none" for s in segs] == list(algorithms)
    assert all(m.link == "f" for s in segs for m in s.members if m.kind is Kind.SYMLINK)


def test_debians_initrd_both_ways() -> None:
    img = sorted(Path("/boot").glob("initrd.img-*"))
    if not img:
        pytest.skip("no Debian initrd on this machine")
    data = img[-1].read_bytes()
    assert summary(data, True) == summary(data, False)


@pytest.mark.parametrize("alg", ["none", "zstd"])
@pytest.mark.parametrize("member", [0, 1])
def test_spaces_in_header_fields_are_not_hexadecimal(alg: str, member: int) -> None:
    """bytes.fromhex skips spaces: two of them in place of two digits used to leave twelve and
    a half fields, and a struct.error escaped both readers."""
    plain = bytearray(cpio_archive())
    at = [m.offset for m in cpio.read_archive(bytes(plain))[0]][member] + 20
    plain[at:at + 2] = b"  "
    data = bytes(plain) if alg == "none" else compress.compress(alg, bytes(plain))
    context = "segment 0 (uncompressed): " if alg == "none" else "segment 0 (zstd at offset 0, after decompression): "
    for keep in (True, False):
        with pytest.raises(BadInput, match="not hexadecimal") as e:
            read_segments(data, keep_data=keep)
        assert str(e.value).startswith(context) and str(e.value).count("segment") == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_fuzz_arbitrary_images(data: bytes) -> None:
    for keep in (True, False):
        try:
            read_segments(data, keep_data=keep)
        except BadInput:
            pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["gzip", "zstd", "xz", "lz4", "lzo", "bzip2", "lzma"]),
       st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=8))
def test_fuzz_damaged_multi_segment_images(alg: str, at: int, junk: bytes) -> None:
    data = bytearray(image("none", alg))
    at %= len(data)
    data[at:at + len(junk)] = junk
    for keep in (True, False):
        try:
            read_segments(bytes(data), keep_data=keep)
        except BadInput:
            pass
