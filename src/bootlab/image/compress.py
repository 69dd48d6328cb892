"""The seven compressions the kernel accepts for initramfs segments, in process.

An initramfs is one or more cpio segments, each possibly compressed, concatenated. Reading one
means finding where each compressed stream ends, so `decompress_stream` decodes exactly ONE stream
and says where it stopped. Writing one means producing exactly what Linux 6.1 (init/initramfs.c,
lib/decompress_*.c) can unpack, which is narrower than what the command-line tools accept:

* xz: the kernel's decoder verifies CRC32 or nothing; CRC64/SHA-256 streams are refused.
* lzma: the legacy .lzma ("alone") format; the kernel only recognises it by the bytes 5D 00.
* lz4: the legacy frame (`lz4 -l`), never the modern frame format. It has no end marker: a stream
  runs to the end of the buffer, or to a zero block size (zero padding; the kernel stops there
  too), or to fewer than 4 bytes left. Anything else that follows is read as another block, so
  an lz4 segment can only be followed by zero padding; a truncation that falls exactly on a block
  boundary cannot be detected.
* lzo: the lzop file format; the kernel takes blocks of at most 256 KiB with exactly one 4-byte
  checksum (that of the uncompressed data), so that is what we write. Reading follows lzop.

Each compressor uses its command-line tool's default level, and writes no timestamps or names,
so output is reproducible.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable

from bootlab.lean import TYPE_CHECKING, Record

# bz2, lzma, lz4, lzo and zstandard are imported where used: listing a zstd initrd should not
# pay for loading the other libraries (start-up is a fifth of `initramfs ls`).

ALGORITHMS: tuple[str, ...] = ("gzip", "bzip2", "lzma", "xz", "lzo", "lz4", "zstd")

KERNEL_CONFIG: dict[str, str] = {
    "gzip": "CONFIG_RD_GZIP",
    "bzip2": "CONFIG_RD_BZIP2",
    "lzma": "CONFIG_RD_LZMA",
    "xz": "CONFIG_RD_XZ",
    "lzo": "CONFIG_RD_LZO",
    "lz4": "CONFIG_RD_LZ4",
    "zstd": "CONFIG_RD_ZSTD",
}


class CorruptData(ValueError):
    """A compressed stream is corrupt or truncated; the message says what is wrong, in one line."""


Buffer = bytes | bytearray | memoryview
Sink = Callable[[memoryview], None]
Buffers = Callable[[], bytearray]  # where the next piece is decoded (zstd); see decompress_chunks
PIECE = 1 << 20  # a piece of output: large enough to amortise a call, small enough for L2

# liblzma would otherwise allocate whatever dictionary a (possibly corrupt) header asks for.
_LZMA_MEMLIMIT = 1 << 30

if TYPE_CHECKING:  # (typing is not imported on the way to `initramfs ls`: see bootlab.lean)
    from typing import Protocol

    class _Decoder(Protocol):
        """What zlib, bz2, lzma and zstandard decompression objects have in common."""

        @property
        def eof(self) -> bool: ...

        @property
        def unused_data(self) -> bytes: ...

        def decompress(self, data: Buffer) -> bytes: ...


def _decode_one(name: str, decoder: _Decoder, view: memoryview) -> tuple[bytes, int]:
    """Run a library decoder that stops by itself at the end of one stream (gzip member, bzip2
    stream, xz stream, zstd frame) and keeps what follows as `unused_data`."""
    try:
        out = decoder.decompress(view)
    except _library_errors() as e:
        raise CorruptData(f"corrupt {name} stream: {_reason(e)}") from None
    if not decoder.eof:
        raise CorruptData(f"truncated {name} stream")
    return out, len(view) - len(decoder.unused_data)


_CHUNK = 256 << 10


def _decode_chunks(name: str, decoder: _Decoder, view: memoryview, sink: Sink) -> int:
    """Like _decode_one, but fed 256 KiB at a time and handing each piece of output to `sink`,
    so a reader that only wants headers never holds the whole decompressed segment."""
    pos = 0
    try:
        while not decoder.eof and pos < len(view):
            out = decoder.decompress(view[pos:pos + _CHUNK])
            pos += min(_CHUNK, len(view) - pos)
            if out:
                sink(memoryview(out))
    except _library_errors() as e:
        raise CorruptData(f"corrupt {name} stream: {_reason(e)}") from None
    if not decoder.eof:
        raise CorruptData(f"truncated {name} stream")
    return pos - len(decoder.unused_data)


def _library_errors() -> tuple[type[Exception], ...]:
    """What the decoders raise on bad data. Evaluated only once an exception is under way, so
    a successful read never pays for importing lzma and zstandard here."""
    import lzma

    import zstandard

    return (zlib.error, OSError, EOFError, lzma.LZMAError, zstandard.ZstdError)


_REASONS = {"incorrect data check": "bad CRC", "incorrect length check": "bad length"}


def _reason(e: Exception) -> str:
    """The useful tail of a library's message ("Error -3 while ...: incorrect data check")."""
    text = str(e).rsplit(": ", 1)[-1].strip() or type(e).__name__
    return _REASONS.get(text, text)


# --- gzip, bzip2, lzma, xz, zstd: the standard library and zstandard do the work -------------


def _gzip_compress(data: bytes) -> bytes:
    # zlib writes a gzip header with mtime 0 and no name: reproducible. Level 6, like gzip(1).
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


def _bzip2_compress(data: bytes) -> bytes:
    import bz2

    return bz2.compress(data, 9)


def _bzip2_decoder() -> _Decoder:
    import bz2

    return bz2.BZ2Decompressor()


def _xz_compress(data: bytes) -> bytes:
    import lzma

    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)


def _xz_decoder() -> _Decoder:
    import lzma

    return lzma.LZMADecompressor(lzma.FORMAT_XZ, memlimit=_LZMA_MEMLIMIT)


def _lzma_compress(data: bytes) -> bytes:
    import lzma

    return lzma.compress(data, format=lzma.FORMAT_ALONE)


def _lzma_decoder() -> _Decoder:
    import lzma

    return lzma.LZMADecompressor(lzma.FORMAT_ALONE, memlimit=_LZMA_MEMLIMIT)


def _zstd_compress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)


# --- zstd: libzstd (or else zstandard) decodes; we find where the frame ends ------------------

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_frame_length(view: memoryview) -> int:
    """The length of the zstd frame at view[0], from its header and block headers (RFC 8878,
    section 3.1.1), without decoding anything.

    zstandard's fastest reader (`readinto` a reused buffer) wants the frame's exact bytes: it
    fails on whatever follows the frame, and says nothing when the frame is cut short. Walking
    the block headers (a few hundred for a 30 MB initrd) answers both up front."""
    n = len(view)
    if n < 6:
        raise CorruptData("truncated zstd frame header")
    descriptor = view[4]
    if descriptor & 0x08:
        raise CorruptData("corrupt zstd frame header (reserved bit set)")
    single_segment = descriptor >> 5 & 1
    size_field = (single_segment, 2, 4, 8)[descriptor >> 6]  # Frame_Content_Size
    dict_field = (0, 1, 2, 4)[descriptor & 3]
    pos = 5 + (not single_segment) + dict_field + size_field  # window descriptor unless single
    while True:
        if pos + 3 > n:
            raise CorruptData("truncated zstd stream")
        block = int.from_bytes(view[pos:pos + 3], "little")
        kind, size = block >> 1 & 3, block >> 3
        if kind == 3:
            raise CorruptData("corrupt zstd stream (reserved block type)")
        pos += 3 + (1 if kind == 1 else size)  # an RLE block stores its byte once
        if block & 1:  # Last_Block
            break
    pos += 4 * (descriptor >> 2 & 1)  # Content_Checksum
    if pos > n:
        raise CorruptData("truncated zstd stream")
    return pos


def _zstd_decompress(view: memoryview) -> tuple[bytes, int]:
    import zstandard

    return _decode_one("zstd", zstandard.ZstdDecompressor().decompressobj(), view)


def _zstd_chunks(view: memoryview, sink: Sink, buffers: Buffers) -> int:
    """The reader of `ls` and `extract`: the system's libzstd where it loads, as it is quicker
    to start and to decode (see libzstd), else zstandard. Both verify the frame's checksum."""
    from bootlab.image import libzstd

    end = zstd_frame_length(view)
    lib = libzstd.library()
    if lib is not None:
        try:
            libzstd.decode_frame(lib, view[:end], sink, buffers)
        except libzstd.DecodeError as e:
            raise CorruptData(f"corrupt zstd stream: {e}") from None
        except libzstd.Truncated:
            raise CorruptData("truncated zstd stream") from None
        return end
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(view[:end], read_across_frames=False)
    try:
        while got := reader.readinto(buf := buffers()):
            sink(memoryview(buf)[:got])
    except zstandard.ZstdError as e:
        raise CorruptData(f"corrupt zstd stream: {_reason(e)}") from None
    return end


# --- lz4 legacy frame ------------------------------------------------------------------------

_LZ4_MAGIC_NUMBER = 0x184C2102
_LZ4_MAGIC = _LZ4_MAGIC_NUMBER.to_bytes(4, "little")
_LZ4_BLOCK = 8 << 20  # each block decompresses to at most 8 MiB


def _lz4_compress(data: bytes) -> bytes:
    import lz4.block

    view = memoryview(data)
    parts = [_LZ4_MAGIC]
    for start in range(0, len(view), _LZ4_BLOCK):
        block = lz4.block.compress(view[start:start + _LZ4_BLOCK], store_size=False)
        parts += [struct.pack("<I", len(block)), block]
    return b"".join(parts)


def _lz4_decompress(view: memoryview) -> tuple[bytes, int]:
    """Blocks until the end of the buffer, a zero size, or fewer than 4 bytes (see module doc).
    A repeated magic is skipped, as the kernel does, so `cat a.lz4 b.lz4` is one stream."""
    import lz4.block

    parts: list[bytes] = []
    pos = len(_LZ4_MAGIC)
    while len(view) - pos >= 4:
        size = int.from_bytes(view[pos:pos + 4], "little")
        if size == 0:
            break
        pos += 4
        if size == _LZ4_MAGIC_NUMBER:
            continue
        if size > len(view) - pos:
            raise CorruptData(f"truncated lz4 block ({size} bytes announced, "
                              f"{len(view) - pos} left)")
        try:
            parts.append(lz4.block.decompress(view[pos:pos + size], uncompressed_size=_LZ4_BLOCK))
        except lz4.block.LZ4BlockError:
            raise CorruptData("corrupt lz4 block (or one larger than 8 MiB)") from None
        pos += size
    return b"".join(parts), pos


# --- lzo: the lzop file format around LZO1X blocks (python-lzo, i.e. liblzo2) ----------------

_LZOP_MAGIC = b"\x89LZO\x00\r\n\x1a\n"
_LZOP_BLOCK = 256 << 10  # the kernel's limit, and lzop's block size
_LZOP_MAX_BLOCK = 64 << 20  # lzop's own limit when reading
# header flags
_ADLER32_D, _ADLER32_C, _STDIN, _STDOUT = 0x1, 0x2, 0x4, 0x8
_H_EXTRA_FIELD, _CRC32_D, _CRC32_C, _H_FILTER, _H_CRC32 = 0x40, 0x100, 0x200, 0x800, 0x1000
_OS_UNIX = 0x03000000
_LZO_LIB_VERSION = 0x20A0  # liblzo2 2.10; informative only, fixed so that output is reproducible
_LZO1X_METHODS = (1, 2, 3)  # LZO1X-1, LZO1X-1(15), LZO1X-999: one bitstream


def _lzo_compress(data: bytes) -> bytes:
    """lzop-compatible output: version 0x1040 header (the kernel's parser assumes >= 0x0940),
    LZO1X-1 blocks of 256 KiB, each with only an Adler-32 of its uncompressed data."""
    import lzo

    flags = _OS_UNIX | _STDIN | _STDOUT | _ADLER32_D
    # version, lib version, version needed, method (LZO1X-1), level (lzop's default writes 5),
    # flags, mode, mtime low, mtime high, name length
    fields = struct.pack(">HHHBBIIIIB", 0x1040, _LZO_LIB_VERSION, 0x0940, 1, 5, flags, 0, 0, 0, 0)
    parts = [_LZOP_MAGIC, fields, struct.pack(">I", zlib.adler32(fields))]
    view = memoryview(data)
    for start in range(0, len(view), _LZOP_BLOCK):
        block = view[start:start + _LZOP_BLOCK]
        packed = lzo.compress(bytes(block), 1, False)
        if len(packed) >= len(block):
            packed = bytes(block)  # stored; the reader tells by equal sizes
        parts += [struct.pack(">III", len(block), len(packed), zlib.adler32(block)), packed]
    parts.append(b"\0\0\0\0")
    return b"".join(parts)


class _Cursor:
    """Bounds-checked reads from a memoryview: running off the end is a truncated stream."""

    def __init__(self, view: memoryview, what: str) -> None:
        self.view, self.pos, self.what = view, 0, what

    def take(self, n: int) -> memoryview:
        if n > len(self.view) - self.pos:
            raise CorruptData(f"truncated {self.what}")
        self.pos += n
        return self.view[self.pos - n:self.pos]

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")


def _lzo_checksum(flags: int, adler: int, crc: int, data: memoryview | bytes) -> tuple[int, ...]:
    """The checksums present per `flags`, in file order (Adler-32 before CRC-32)."""
    return tuple(f(data) for flag, f in ((adler, zlib.adler32), (crc, zlib.crc32)) if flags & flag)


def _lzo_decompress(view: memoryview) -> tuple[bytes, int]:
    import lzo

    cur = _Cursor(view, "lzo header")
    cur.take(len(_LZOP_MAGIC))
    version = cur.uint(2)
    if version < 0x0900:
        raise CorruptData(f"unsupported lzop version {version:#x}")
    new = version >= 0x0940
    cur.uint(2 + 2 * new)  # library version [, version needed to extract]
    method = cur.uint(1)
    cur.take(new)  # level
    flags = cur.uint(4)
    if method not in _LZO1X_METHODS:
        raise CorruptData(f"unsupported lzo method {method}")
    if flags & _H_FILTER:
        raise CorruptData("lzop filters are not supported")
    cur.take(4 + 4 + 4 * new)  # mode, mtime low [, mtime high]
    cur.take(cur.uint(1))  # file name
    header_sum = (zlib.crc32 if flags & _H_CRC32 else zlib.adler32)(view[9:cur.pos])
    if cur.uint(4) != header_sum:
        raise CorruptData("bad lzo header checksum")
    if flags & _H_EXTRA_FIELD:
        cur.take(cur.uint(4) + 4)  # extra field and its checksum

    parts: list[bytes | memoryview] = []
    cur.what = "lzo stream"
    while dst_len := cur.uint(4):
        src_len = cur.uint(4)
        if dst_len > _LZOP_MAX_BLOCK:
            raise CorruptData(f"lzo block too large ({dst_len} bytes)")
        if not 0 < src_len <= dst_len:
            raise CorruptData(f"bad lzo block sizes ({src_len} -> {dst_len})")
        n_d = bin(flags & (_ADLER32_D | _CRC32_D)).count("1")
        n_c = bin(flags & (_ADLER32_C | _CRC32_C)).count("1") if src_len < dst_len else 0
        sums_d = struct.unpack(f">{n_d}I", cur.take(4 * n_d))
        sums_c = struct.unpack(f">{n_c}I", cur.take(4 * n_c))
        packed = cur.take(src_len)
        if src_len == dst_len:
            block: bytes | memoryview = packed
        else:
            if sums_c != _lzo_checksum(flags, _ADLER32_C, _CRC32_C, packed):
                raise CorruptData("bad lzo checksum (compressed block)")
            try:
                block = lzo.decompress(bytes(packed), False, dst_len)
            except lzo.error:
                raise CorruptData("corrupt lzo block") from None
            if len(block) != dst_len:
                raise CorruptData("corrupt lzo block (wrong decompressed size)")
        if sums_d != _lzo_checksum(flags, _ADLER32_D, _CRC32_D, block):
            raise CorruptData("bad lzo checksum")
        parts.append(block)
    return b"".join(parts), cur.pos


# --- the table ------------------------------------------------------------------------------


class Codec(Record):
    """One algorithm: the bytes that identify it, and how to write and read one stream."""

    name: str
    magic: bytes
    compress: Callable[[bytes], bytes]
    # one stream at the start of the view -> (data, bytes consumed); raises CorruptData
    decompress: Callable[[memoryview], tuple[bytes, int]]
    # the same, handing the output to a sink piece by piece -> bytes consumed; None where we
    # decode whole streams ourselves (lzo, lz4: their blocks are small anyway)
    chunks: Callable[[memoryview, Sink, Buffers], int] | None = None


def _library(name: str, decoder: Callable[[], _Decoder]) -> tuple[
        Callable[[memoryview], tuple[bytes, int]], Callable[[memoryview, Sink, Buffers], int]]:
    """(decompress, chunks) for a library decoder that finds the end of its stream itself."""
    return (lambda v: _decode_one(name, decoder(), v),
            lambda v, sink, _buffers: _decode_chunks(name, decoder(), v, sink))


CODECS: dict[str, Codec] = {c.name: c for c in (
    Codec("gzip", b"\x1f\x8b\x08", _gzip_compress, *_library("gzip", lambda: zlib.decompressobj(31))),
    Codec("bzip2", b"BZh", _bzip2_compress, *_library("bzip2", _bzip2_decoder)),
    # .lzma has no magic; these are the two bytes the kernel looks for (lc=3 lp=0 pb=2 and a
    # dictionary size whose low byte is 0), which every lzma(1) preset writes.
    Codec("lzma", b"\x5d\x00", _lzma_compress, *_library("lzma", _lzma_decoder)),
    Codec("xz", b"\xfd7zXZ\x00", _xz_compress, *_library("xz", _xz_decoder)),
    Codec("lzo", _LZOP_MAGIC, _lzo_compress, _lzo_decompress),
    Codec("lz4", _LZ4_MAGIC, _lz4_compress, _lz4_decompress),
    Codec("zstd", _ZSTD_MAGIC, _zstd_compress, _zstd_decompress, _zstd_chunks),
)}


def _codec(algorithm: str) -> Codec:
    try:
        return CODECS[algorithm]
    except KeyError:
        raise ValueError(f"unknown compression {algorithm!r}; "
                         f"known: {', '.join(ALGORITHMS)}") from None


def detect(data: Buffer) -> str | None:
    """The algorithm whose magic `data` starts with, or None (plain cpio, padding, junk)."""
    head = bytes(data[:9])
    return next((c.name for c in CODECS.values() if head.startswith(c.magic)), None)


def compress(algorithm: str, data: bytes) -> bytes:
    """One stream of `algorithm` that Linux 6.1 unpacks as an initramfs segment."""
    return _codec(algorithm).compress(data)


def decompress_stream(algorithm: str, buf: Buffer, offset: int = 0) -> tuple[bytes, int]:
    """Decompress the ONE stream at buf[offset:]; return (data, offset just past its end).

    Whatever follows (another segment, padding, junk) is left for the caller. Corrupt or
    truncated input raises CorruptData, never anything else.
    """
    codec = _codec(algorithm)
    view = memoryview(buf).cast("B")
    if not 0 <= offset <= len(view):
        raise CorruptData(f"offset {offset} is outside the {len(view)}-byte buffer")
    view = view[offset:]
    if view[:len(codec.magic)] != codec.magic:
        what = "end of data" if not len(view) else f"starts with {bytes(view[:4]).hex(' ')}"
        raise CorruptData(f"no {algorithm} stream at offset {offset} ({what})")
    data, used = codec.decompress(view)
    return data, offset + used


def decompress_chunks(algorithm: str, buf: Buffer, offset: int, sink: Sink,
                      buffers: Buffers | None = None) -> int:
    """Decompress the ONE stream at buf[offset:], handing the output to `sink` piece by piece;
    return the offset just past the stream. Same errors as decompress_stream.

    zstd decodes each piece into a buffer from `buffers()`; by default one buffer, reused, so
    the sink must copy what it keeps. A reader on another thread passes buffers from a pool and
    takes them back once consumed (see readahead)."""
    codec = _codec(algorithm)
    if codec.chunks is None:
        data, end = decompress_stream(algorithm, buf, offset)
        sink(memoryview(data))
        return end
    view = memoryview(buf).cast("B")
    if view[offset:offset + len(codec.magic)] != codec.magic:
        raise CorruptData(f"no {algorithm} stream at offset {offset}")
    if buffers is None:
        one = bytearray(PIECE)
        buffers = lambda: one
    return offset + codec.chunks(view[offset:], sink, buffers)
