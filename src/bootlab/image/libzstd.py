"""Decoding one zstd frame with the system's libzstd, called through ctypes.

Reading a zstd initrd is almost all decoding, and `initramfs ls` is decoding plus start-up.
Measured on Debian's initrd (31 MB, 126 MB unpacked): Debian's libzstd.so.1 decodes it in
4 ms less than the zstandard package's bundled copy, and loading ctypes and the library takes
3 ms less than importing zstandard (which imports platform and typing). zstandard still writes
our zstd segments and decodes whole ones in one call (compress.decompress_stream); it also
reads piece by piece wherever libzstd.so.1 cannot be loaded.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

_SONAME = "libzstd.so.1"


class _Buffer(ctypes.Structure):
    """ZSTD_inBuffer and ZSTD_outBuffer, which share one layout: where, how big, how far."""

    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class DecodeError(Exception):
    """libzstd refused the data; the message is its reason (ZSTD_getErrorName)."""


class Truncated(Exception):
    """The input ended before the frame did."""


_lib: ctypes.CDLL | None = None
_tried = False


def library() -> ctypes.CDLL | None:
    """libzstd with the prototypes we call, or None where it cannot be loaded."""
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            lib = ctypes.CDLL(_SONAME)
        except OSError:
            return None
        lib.ZSTD_createDStream.argtypes, lib.ZSTD_createDStream.restype = [], ctypes.c_void_p
        lib.ZSTD_freeDStream.argtypes, lib.ZSTD_freeDStream.restype = [ctypes.c_void_p], ctypes.c_size_t
        lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Buffer), ctypes.POINTER(_Buffer)]
        lib.ZSTD_decompressStream.restype = ctypes.c_size_t
        lib.ZSTD_isError.argtypes, lib.ZSTD_isError.restype = [ctypes.c_size_t], ctypes.c_uint
        lib.ZSTD_getErrorName.argtypes, lib.ZSTD_getErrorName.restype = [ctypes.c_size_t], ctypes.c_char_p
        _lib = lib
    return _lib


def decode_frame(lib: ctypes.CDLL, frame: memoryview, sink: Callable[[memoryview], None],
                 buffers: Callable[[], bytearray]) -> None:
    """Decode `frame`, exactly one zstd frame, into buffers from `buffers()`, handing each filled
    part to `sink`. The content checksum, when the frame has one, is verified (libzstd's default).

    An empty buffer from `buffers()` stops the decoding early (a reader that gave up).
    Raises DecodeError or Truncated."""
    # ctypes takes the address of writable memory only; image files are mapped copy-on-write
    # (initramfs.map_image), so this copy is for bytes objects: pipes and tests.
    source = frame if not frame.readonly else memoryview(bytearray(frame))
    source_array = (ctypes.c_char * len(source)).from_buffer(source)
    given = _Buffer(ctypes.addressof(source_array), len(source), 0)
    stream = lib.ZSTD_createDStream()
    if not stream:
        raise MemoryError("ZSTD_createDStream failed")
    try:
        while len(buf := buffers()):
            target = (ctypes.c_char * len(buf)).from_buffer(buf)
            out = _Buffer(ctypes.addressof(target), len(buf), 0)
            left = lib.ZSTD_decompressStream(stream, ctypes.byref(out), ctypes.byref(given))
            del target  # the buffer's export ends here: the sink may keep or resize it
            if lib.ZSTD_isError(left):
                raise DecodeError(lib.ZSTD_getErrorName(left).decode("ascii", "replace"))
            if out.pos:
                sink(memoryview(buf)[:out.pos])
            if left == 0:  # the frame is decoded and all of it flushed
                return
            if given.pos == given.size and out.pos < out.size:
                raise Truncated
    finally:
        lib.ZSTD_freeDStream(stream)
        del source_array
