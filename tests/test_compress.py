"""The seven initramfs compressions: round trips, the real command-line tools both ways, stream
boundaries, corruption, and a fuzz test (only results or CorruptData, quickly)."""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import struct
import subprocess
from pathlib import Path
from unittest import mock

import lz4.block
import lzo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bootlab.image import libzstd
from bootlab.image.compress import (
    ALGORITHMS, CODECS, KERNEL_CONFIG, CorruptData, compress, decompress_chunks, decompress_stream,
    detect, zstd_frame_length,
)

_rnd = random.Random(1)
# compressible but not trivial: words and random bytes, like an archive of text and binaries
SAMPLE = b"".join(_rnd.choice([b"alpha ", b"beta ", b"gamma\n", _rnd.randbytes(3)])
                  for _ in range(8000))
MIB = 1 << 20
CHECKED = ("gzip", "bzip2", "lzma", "xz", "lzo", "zstd")  # every alteration is noticed


def big(size: int) -> bytes:
    """`size` bytes, a quarter incompressible, so lzo stores some blocks and compresses others."""
    rnd = random.Random(size)
    text = (SAMPLE * 2)[:64 << 10]
    chunks = [rnd.randbytes(64 << 10) if i % 4 == 0 else text
              for i in range(-(-size // (64 << 10)))]
    return b"".join(chunks)[:size]


BIG = big(17 * MIB + 12345)  # three lz4 blocks, 69 lzo blocks


def tool(*argv: str, data: bytes) -> bytes:
    if shutil.which(argv[0]) is None:
        pytest.skip(f"{argv[0]} is not installed")
    return subprocess.run(argv, input=data, capture_output=True, check=True, timeout=120).stdout


def chunked(algorithm: str, buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[bytes, int]:
    parts: list[bytes] = []
    end = decompress_chunks(algorithm, buf, offset, lambda piece: parts.append(bytes(piece)))
    return b"".join(parts), end


def chunked_without_libzstd(algorithm: str, buf: bytes | bytearray | memoryview,
                            offset: int = 0) -> tuple[bytes, int]:
    """decompress_chunks as it runs where libzstd.so.1 cannot be loaded (zstandard decodes)."""
    with mock.patch.object(libzstd, "library", lambda: None):
        return chunked(algorithm, buf, offset)


def both(algorithm: str, buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[bytes, int]:
    """decompress_stream, checked against decompress_chunks (the reader of `ls` and `extract`)
    and, for zstd, against decompress_chunks without libzstd: the same data and end, or
    CorruptData from all, with the same message from both chunked readers."""
    readers = [chunked] + ([chunked_without_libzstd] if algorithm == "zstd" else [])
    try:
        whole = decompress_stream(algorithm, buf, offset)
    except CorruptData:
        messages = set()
        for read in readers:
            with pytest.raises(CorruptData) as info:
                read(algorithm, buf, offset)
            messages.add(str(info.value))
        assert len(messages) == 1, messages
        raise
    for read in readers:
        assert read(algorithm, buf, offset) == whole
    return whole


def test_tables_agree() -> None:
    assert ALGORITHMS == ("gzip", "bzip2", "lzma", "xz", "lzo", "lz4", "zstd")
    assert tuple(CODECS) == ALGORITHMS
    assert KERNEL_CONFIG == {a: f"CONFIG_RD_{a.upper()}" for a in ALGORITHMS}


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("data", [b"", b"x", SAMPLE], ids=["empty", "one", "sample"])
def test_round_trip(algorithm: str, data: bytes) -> None:
    packed = compress(algorithm, data)
    assert detect(packed) == algorithm
    assert both(algorithm, packed) == (data, len(packed))
    assert both(algorithm, memoryview(packed)) == (data, len(packed))
    assert both(algorithm, bytearray(packed)) == (data, len(packed))
    assert compress(algorithm, data) == packed, "output must be reproducible"


@pytest.mark.parametrize("algorithm", ["lz4", "lzo"])
def test_round_trip_across_blocks(algorithm: str) -> None:
    packed = compress(algorithm, BIG)
    assert both(algorithm, packed) == (BIG, len(packed))


def test_lz4_writes_legacy_blocks_of_8_mib() -> None:
    packed = compress("lz4", BIG)
    assert packed[:4] == struct.pack("<I", 0x184C2102)
    pos, sizes = 4, []
    while pos < len(packed):
        (n,) = struct.unpack_from("<I", packed, pos)
        block = packed[pos + 4:pos + 4 + n]
        sizes.append(len(lz4.block.decompress(block, uncompressed_size=8 * MIB)))
        pos += 4 + n
    assert pos == len(packed)
    assert sizes == [8 * MIB, 8 * MIB, len(BIG) - 16 * MIB]


def test_lzo_output_parses_as_the_kernel_parses_it() -> None:
    """lib/decompress_unlzo.c: it skips the fields of a >= 0x0940 header without looking, takes
    blocks of at most 256 KiB, skips exactly one 4-byte checksum, stores when sizes are equal."""
    packed = compress("lzo", BIG)
    pos = 9
    version, = struct.unpack_from(">H", packed, pos)
    assert version >= 0x0940
    pos += 7 + 1
    flags, = struct.unpack_from(">I", packed, pos)
    assert flags & 0x0000FFFF & ~0xC == 0x1, "only an Adler-32 of uncompressed data (F_ADLER32_D)"
    pos += 4 + 8 + 4
    pos += 1 + packed[pos] + 4
    out, stored = [], 0
    while (dst := struct.unpack_from(">I", packed, pos)[0]) != 0:
        src, = struct.unpack_from(">I", packed, pos + 4)
        assert 0 < src <= dst <= 256 * 1024
        block = packed[pos + 12:pos + 12 + src]
        stored += src == dst
        out.append(block if src == dst else lzo.decompress(block, False, dst))
        pos += 12 + src
    assert b"".join(out) == BIG and pos + 4 == len(packed)
    assert 0 < stored < len(out)


def test_xz_uses_crc32(tmp_path: Path) -> None:
    packed = compress("xz", SAMPLE)
    assert packed[6:8] == b"\x00\x01", "stream flags: check type 1, CRC32"
    if shutil.which("xz"):
        (tmp_path / "s.xz").write_bytes(packed)
        listing = subprocess.run(["xz", "--robot", "-lvv", str(tmp_path / "s.xz")],
                                 capture_output=True, text=True, check=True).stdout
        totals = next(line.split("\t") for line in listing.splitlines()
                      if line.startswith("totals"))
        assert "CRC32" in totals and "CRC64" not in totals


# --- the real tools ---------------------------------------------------------------------------

DECOMPRESSORS = {"gzip": ["gzip", "-dc"], "bzip2": ["bzip2", "-dc"], "lzma": ["lzma", "-dc"],
                 "xz": ["xz", "-dc"], "lzo": ["lzop", "-dc"], "lz4": ["lz4", "-dc"],
                 "zstd": ["zstd", "-dc"]}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_tools_read_ours(algorithm: str) -> None:
    data = BIG if algorithm in ("lz4", "lzo") else SAMPLE
    assert tool(*DECOMPRESSORS[algorithm], data=compress(algorithm, data)) == data
    assert tool(*DECOMPRESSORS[algorithm], data=compress(algorithm, b"")) == b""


TOOL_OUTPUTS = [
    ("gzip", ["gzip", "-c"]), ("gzip", ["gzip", "-9", "-c"]),
    ("bzip2", ["bzip2", "-c"]), ("bzip2", ["bzip2", "-1", "-c"]),
    ("lzma", ["lzma", "-c"]), ("lzma", ["lzma", "-9", "-c"]),
    ("xz", ["xz", "--check=crc32", "-c"]), ("xz", ["xz", "-c"]),
    ("xz", ["xz", "--check=none", "-c"]),
    ("lzo", ["lzop", "-c"]), ("lzo", ["lzop", "-9", "-c"]), ("lzo", ["lzop", "-1", "-c"]),
    ("lzo", ["lzop", "--crc32", "-c"]), ("lzo", ["lzop", "--no-checksum", "-c"]),
    ("lz4", ["lz4", "-l", "-c"]), ("lz4", ["lz4", "-l", "-9", "-c"]),
    ("zstd", ["zstd", "-c"]), ("zstd", ["zstd", "-19", "-c"]),
    ("zstd", ["zstd", "--no-check", "-c"]),
]


@pytest.mark.parametrize(("algorithm", "argv"), TOOL_OUTPUTS, ids=" ".join)
def test_we_read_tools(algorithm: str, argv: list[str]) -> None:
    for data in (b"", SAMPLE):
        packed = tool(*argv, data=data)
        assert detect(packed) == algorithm
        assert both(algorithm, packed) == (data, len(packed))


@pytest.mark.parametrize(("algorithm", "argv"), [("lz4", ["lz4", "-l", "-c"]),
                                                 ("lzo", ["lzop", "-c"])])
def test_we_read_tools_across_blocks(algorithm: str, argv: list[str]) -> None:
    packed = tool(*argv, data=BIG)
    assert both(algorithm, packed) == (BIG, len(packed))


def test_we_read_lzop_header_with_file_name(tmp_path: Path) -> None:
    if shutil.which("lzop") is None:
        pytest.skip("lzop is not installed")
    (tmp_path / "a-file-name.cpio").write_bytes(SAMPLE)
    packed = subprocess.run(["lzop", "-c", "a-file-name.cpio"], cwd=tmp_path,
                            capture_output=True, check=True).stdout
    assert b"a-file-name.cpio" in packed[:64]
    assert both("lzo", packed) == (SAMPLE, len(packed))


# --- stream boundaries ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "lz4"])
def test_two_streams_one_after_the_other(algorithm: str) -> None:
    first, second = compress(algorithm, SAMPLE), compress(algorithm, b"second segment")
    buf = first + second
    assert both(algorithm, buf) == (SAMPLE, len(first))
    assert both(algorithm, buf, len(first)) == (b"second segment", len(buf))


def test_lz4_streams_run_together_unless_separated_by_zeros() -> None:
    """Like the kernel: a repeated magic is skipped, a zero block size ends the stream."""
    first, second = compress("lz4", SAMPLE), compress("lz4", b"second segment")
    assert both("lz4", first + second) == (SAMPLE + b"second segment",
                                                        len(first + second))
    buf = first + bytes(8) + second
    assert both("lz4", buf) == (SAMPLE, len(first))
    assert both("lz4", buf, len(first) + 8) == (b"second segment", len(buf))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("tail", [bytes(512), bytes(4) + b"070701 a cpio that follows"],
                         ids=["padding", "padding+cpio"])
def test_what_follows_a_stream_is_left_alone(algorithm: str, tail: bytes) -> None:
    packed = compress(algorithm, SAMPLE)
    assert both(algorithm, packed + tail) == (SAMPLE, len(packed))
    assert both(algorithm, b"junk" + packed + tail, 4) == (SAMPLE, 4 + len(packed))


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "lz4"])
def test_junk_right_after_a_stream_is_left_alone(algorithm: str) -> None:
    packed = compress(algorithm, SAMPLE)
    assert both(algorithm, packed + b"JUNK!" * 9) == (SAMPLE, len(packed))


def test_junk_right_after_lz4_is_read_as_a_block() -> None:
    """Legacy lz4 has no end marker: the kernel fails the same way ("Decoding failed")."""
    with pytest.raises(CorruptData, match="lz4 block"):
        both("lz4", compress("lz4", SAMPLE) + b"JUNK!" * 9)


# --- corruption -------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_truncated_streams_raise(algorithm: str) -> None:
    packed = compress(algorithm, SAMPLE)
    # lz4: a cut inside the first block size field reads as the end of an empty stream
    cuts = range(8 if algorithm == "lz4" else 0, len(packed), 1 if len(packed) < 4000 else 7)
    for cut in [*cuts, len(packed) - 1]:
        with pytest.raises(CorruptData):
            both(algorithm, packed[:cut])


@pytest.mark.parametrize("algorithm", ["lz4", "lzo"])
def test_truncated_block_is_detected(algorithm: str) -> None:
    packed = compress(algorithm, BIG)
    with pytest.raises(CorruptData, match="truncated"):
        both(algorithm, packed[:len(packed) // 2])


@pytest.mark.parametrize("algorithm", CHECKED)
def test_bit_flips_raise_or_change_nothing(algorithm: str) -> None:
    """A flip is detected, or lands on a bit the format ignores; never silently wrong data."""
    packed = compress(algorithm, SAMPLE)
    detected = 0
    for pos in range(0, len(packed), 5):
        altered = bytearray(packed)
        altered[pos] ^= 1 << (pos % 8)
        try:
            out, _ = both(algorithm, altered)
        except CorruptData as e:
            assert "\n" not in str(e)
            detected += 1
        else:
            assert out == SAMPLE, f"flip at {pos} gave wrong data silently"
    assert detected > len(packed) // 5 * 0.9


def test_lz4_bad_block_size_is_detected() -> None:
    packed = compress("lz4", SAMPLE)
    for bit in range(32):
        altered = bytearray(packed)
        altered[4 + bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(CorruptData):
            both("lz4", altered)


def test_lz4_block_larger_than_8_mib_is_refused() -> None:
    block = lz4.block.compress(bytes(8 * MIB + 1), store_size=False)
    with pytest.raises(CorruptData, match="lz4"):
        both("lz4", compress("lz4", b"") + struct.pack("<I", len(block)) + block)


@pytest.mark.parametrize(("algorithm", "where", "message"), [
    ("gzip", -8, "corrupt gzip stream: bad CRC"),  # the trailer's CRC32
    ("lzo", 38 + 8, "bad lzo checksum"),  # the first block's Adler-32
    ("xz", -20, "corrupt xz stream"), ("zstd", -20, "corrupt zstd stream"),
    ("bzip2", -20, "corrupt bzip2 stream"), ("lzma", -20, "lzma stream")])
def test_messages_say_what_is_wrong(algorithm: str, where: int, message: str) -> None:
    packed = bytearray(compress(algorithm, SAMPLE))
    packed[where] ^= 0x10
    with pytest.raises(CorruptData, match=message):
        both(algorithm, packed)


def test_bad_lzo_header_checksum() -> None:
    packed = bytearray(compress("lzo", SAMPLE))
    packed[20] ^= 1  # inside the mode field
    with pytest.raises(CorruptData, match="header checksum"):
        both("lzo", packed)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_wrong_place_raises(algorithm: str) -> None:
    packed = compress(algorithm, SAMPLE)
    for buf, offset in [(packed, len(packed)), (packed, len(packed) + 1), (b"070701", 0),
                        (b"", 0), (packed, 1)]:
        with pytest.raises(CorruptData):
            both(algorithm, buf, offset)


def test_unknown_algorithm_is_a_plain_value_error() -> None:
    with pytest.raises(ValueError, match="unknown compression") as info:
        decompress_stream("brotli", b"")
    assert not isinstance(info.value, CorruptData)
    with pytest.raises(ValueError, match="unknown compression"):
        compress("lzf", b"")


# --- zstd: where a frame ends, without decoding it ---------------------------------------------


ZSTD_FRAMES = [
    ("zstd", ["zstd", "-c"], SAMPLE),  # compressed blocks, XXH64 checksum
    ("zstd", ["zstd", "--no-check", "-c"], SAMPLE),
    ("zstd", ["zstd", "-c"], bytes(1 << 20)),  # RLE blocks
    ("zstd", ["zstd", "-c"], random.Random(2).randbytes(300_000)),  # raw (stored) blocks
    ("zstd", ["zstd", "-c"], b""),  # one empty last block
    ("zstd", ["zstd", "-c"], b"x"),  # single segment, 1-byte content size
]


@pytest.mark.parametrize(("algorithm", "argv", "data"), ZSTD_FRAMES,
                         ids=["checksum", "no-check", "rle", "raw", "empty", "one-byte"])
def test_zstd_frame_length_is_where_the_decoder_stops(algorithm: str, argv: list[str], data: bytes) -> None:
    packed = tool(*argv, data=data)
    tail = b"\0" * 8 + b"070701"
    assert zstd_frame_length(memoryview(packed + tail)) == len(packed)
    assert both("zstd", packed + tail) == (data, len(packed))


def test_zstd_frame_length_of_our_own_and_content_size_fields() -> None:
    import zstandard

    for size in (0, 1, 255, 256, 65_791, 1 << 20):  # 1-, 2-, 4-byte content size fields
        data = SAMPLE[:size] if size <= len(SAMPLE) else big(size)
        for packed in (compress("zstd", data),
                       zstandard.ZstdCompressor(write_content_size=False).compress(data),
                       zstandard.ZstdCompressor(write_dict_id=True, write_checksum=True).compress(data)):
            assert zstd_frame_length(memoryview(packed)) == len(packed)


def test_zstd_frame_length_refuses_what_is_not_a_whole_frame() -> None:
    packed = compress("zstd", SAMPLE)
    for cut in range(0, len(packed), 3):
        with pytest.raises(CorruptData, match="truncated"):
            zstd_frame_length(memoryview(packed[:cut]))
    reserved = bytearray(packed)
    reserved[4] |= 0x08
    with pytest.raises(CorruptData, match="reserved bit"):
        zstd_frame_length(memoryview(bytes(reserved)))


def test_libzstd_is_found() -> None:
    """The quick reader is the one tested and timed: scripts/ensure-deps installs zstd, whose
    libzstd1 provides libzstd.so.1."""
    assert libzstd.library() is not None


def test_libzstd_decodes_into_the_buffers_it_is_given() -> None:
    """Pieces fill each buffer (as readahead's pool hands them out), and an empty buffer stops
    the decoding: readahead's way of telling a worker that the reader gave up."""
    lib = libzstd.library()
    assert lib is not None
    packed = memoryview(compress("zstd", BIG))
    pool = [bytearray(MIB), bytearray(MIB - 1)]
    handed: list[bytearray] = []
    parts: list[bytes] = []

    def buffers() -> bytearray:
        handed.append(pool[len(handed) % 2])
        return handed[-1]

    def sink(piece: memoryview) -> None:
        assert piece.obj is handed[-1]
        parts.append(bytes(piece))

    libzstd.decode_frame(lib, packed, sink, buffers)
    assert b"".join(parts) == BIG
    assert all(len(p) in (MIB, MIB - 1) for p in parts[:-1])
    parts.clear()
    libzstd.decode_frame(lib, packed, parts.append, lambda: bytearray(0))
    assert parts == []


def test_libzstd_reads_a_writable_buffer_in_place_and_leaves_it_as_it_was() -> None:
    """map_image maps files copy-on-write so that ctypes can take the address; nothing must be
    written through it."""
    packed = bytearray(compress("zstd", SAMPLE))
    before = bytes(packed)
    assert chunked("zstd", packed) == (SAMPLE, len(packed))
    assert packed == before


# --- detect -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("head", "algorithm"), [
    (b"\x1f\x8b\x08\0", "gzip"), (b"BZh9", "bzip2"), (b"\x5d\0\0\x80\0", "lzma"),
    (b"\xfd7zXZ\0\0\x01", "xz"), (b"\x89LZO\0\r\n\x1a\n\x10", "lzo"), (b"\x02\x21\x4c\x18", "lz4"),
    (b"\x28\xb5\x2f\xfd\0", "zstd"),
    (b"070701000", None), (b"", None), (bytes(16), None), (b"\x1f", None),
    (b"\x04\x22\x4d\x18", None),  # the modern lz4 frame, which the kernel does not take
    (b"\x89LZO", None), (b"BZ", None), (b"MZ\x90\0", None),
])
def test_detect(head: bytes, algorithm: str | None) -> None:
    assert detect(head) == algorithm
    assert detect(memoryview(head + b"more")) == algorithm


# --- fuzz -------------------------------------------------------------------------------------

FUZZ = settings(max_examples=200, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
VALID = {a: compress(a, SAMPLE[:3000]) for a in ALGORITHMS}


def _returns_or_corrupt(algorithm: str, buf: bytes, offset: int = 0) -> None:
    try:
        out, end = both(algorithm, buf, offset)
    except CorruptData as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert isinstance(out, bytes) and offset < end <= len(buf)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_arbitrary_bytes(algorithm: str, junk: bytes, with_magic: bool) -> None:
    _returns_or_corrupt(algorithm, (CODECS[algorithm].magic if with_magic else b"") + junk)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@FUZZ
@given(st.data())
def test_fuzz_mutated_streams(algorithm: str, data: st.DataObject) -> None:
    buf = bytearray(VALID[algorithm])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        match data.draw(st.sampled_from(["set", "flip", "insert", "delete", "cut"])):
            case "set":
                buf[pos] = data.draw(st.integers(0, 255))
            case "flip":
                buf[pos] ^= 1 << data.draw(st.integers(0, 7))
            case "insert":
                buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
            case "delete":
                del buf[pos:pos + data.draw(st.integers(1, 8))]
            case "cut":
                del buf[pos:]
        if not buf:
            break
    _returns_or_corrupt(algorithm, bytes(buf))


# --- the real kernel --------------------------------------------------------------------------


def _cpio(entries: list, first_ino: int) -> bytes:
    from bootlab.image import cpio
    from bootlab.image.entry import Tree

    tree = Tree()
    tree.extend(entries)
    out = io.BytesIO()
    cpio.write(out, tree.sorted(), first_ino=first_ino)
    return out.getvalue()


def _boot(kernel: Path, initrd: bytes, tmp_path: Path) -> str:
    """Boot `initrd` as it is; its /init prints a sha256 per /payload file and reboots."""
    from bootlab import VM

    (tmp_path / "initrd.img").write_bytes(initrd)
    log = tmp_path / "console.log"
    machine = VM(kernel, accel="tcg", initrd=tmp_path / "initrd.img", console_log=log).machine()
    subprocess.run(machine.argv(), stdin=subprocess.DEVNULL, capture_output=True, timeout=300)
    return log.read_text(errors="replace")


def _hashes(console: str) -> dict[str, str]:
    return {line.split()[2]: line.split()[1] for line in console.splitlines()
            if line.startswith("HASH ") and len(line.split()) == 3}


@pytest.fixture(scope="module")
def base_cpio() -> bytes:
    from bootlab.image import busybox
    from bootlab.image.entry import file

    init = b"#!/bin/sh\nfor f in /payload/*; do echo \"HASH $(sha256sum $f)\"; done\nreboot -f\n"
    return _cpio([*busybox.entries(busybox.find_busybox()), file("init", init, 0o755)], 1)


@pytest.mark.vm
def test_kernel_unpacks_every_algorithm(kernel: Path, base_cpio: bytes, tmp_path: Path) -> None:
    """One boot, eight segments: busybox and /init, then one payload per algorithm (lz4 last:
    it must be, or be followed by zero padding). lz4 and lzo payloads span several blocks."""
    from bootlab.image.entry import file

    order = ["gzip", "bzip2", "lzma", "xz", "lzo", "zstd", "lz4"]
    segments, expected = [compress("gzip", base_cpio)], {}
    for i, algorithm in enumerate(order):
        data = BIG if algorithm in ("lz4", "lzo") else algorithm.encode() * 1000
        expected[f"/payload/{algorithm}"] = hashlib.sha256(data).hexdigest()
        payload = _cpio([file(f"payload/{algorithm}", data)], 100_000 * (i + 1))
        segments.append(compress(algorithm, payload))
    console = _boot(kernel, b"".join(segments), tmp_path)
    assert "Initramfs unpacking failed" not in console, console[-3000:]
    assert _hashes(console) == expected, console[-3000:]


@pytest.mark.vm
@pytest.mark.parametrize("padding", [4, 0])
def test_kernel_and_we_agree_on_what_follows_lz4(kernel: Path, base_cpio: bytes, tmp_path: Path,
                                                 padding: int) -> None:
    """Zero padding ends a legacy lz4 stream for both; without it, the next segment is junk."""
    from bootlab.image.entry import file

    first = compress("lz4", base_cpio)
    initrd = first + bytes(padding) + compress("gzip", _cpio([file("payload/after", b"x")], 9999))
    console = _boot(kernel, initrd, tmp_path)
    if padding:
        assert both("lz4", initrd)[1] == len(first)
        assert "/payload/after" in _hashes(console), console[-3000:]
    else:
        with pytest.raises(CorruptData):
            both("lz4", initrd)
        assert "Initramfs unpacking failed: Decoding failed" in console, console[-3000:]
