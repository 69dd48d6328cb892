"""Reading a whole initramfs as the kernel does: segment after segment, to the end of the file.

A distro initrd is often an uncompressed cpio (early CPU microcode) followed by one or more
compressed cpio archives. `cpio -i` stops after the first; the kernel does not, and neither do we.
Between segments the kernel skips NUL padding; anything else it cannot read is an error.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable
from functools import partial

from bootlab.errors import BadInput
from bootlab.image import compress
from bootlab.image.cpio import (
    MAGIC,
    MAGIC_CRC,
    CpioError,
    Member,
    StreamParser,
    read_archive,
    skip_nuls,
)
from bootlab.lean import TYPE_CHECKING, Record

if TYPE_CHECKING:
    from bootlab.image.cpio import DataSink

    Visitor = Callable[[int, Member], DataSink | None]


class Segment(Record):
    number: int  # 0 for the first (`index` would hide tuple.index)
    offset: int  # where it starts in the file
    end: int  # where it ends in the file
    compression: str | None
    size: int  # uncompressed
    members: list[Member]
    data: bytes | memoryview | None = None  # the uncompressed archive, when kept; members point into it

    @property
    def compressed_size(self) -> int:
        return self.end - self.offset


def _archives(data: bytes | memoryview) -> list[Member]:
    """All cpio archives in one (decompressed) segment; several may be concatenated."""
    view = memoryview(data)
    members: list[Member] = []
    pos = 0
    while True:
        pos = skip_nuls(view, pos)
        if pos >= len(view):
            return members
        if bytes(view[pos:pos + 6]) not in (MAGIC, MAGIC_CRC):
            raise CpioError(f"junk at offset {pos} after the cpio trailer")
        got, pos = read_archive(view, pos)
        members.extend(got)


def read_segments(data: bytes | memoryview, *, keep_data: bool = True,
                  visit: Visitor | None = None) -> list[Segment]:
    """Every segment of an initramfs image. Raises BadInput with one line on malformed input.

    keep_data=False is for listing: compressed segments are decompressed in pieces and only
    their headers (and symlink targets) are kept, so a 130 MB initrd is not held in memory.
    `visit(segment index, member)` sees each member as it is read; the sink it returns, if any,
    receives the member's data (extraction writes files while decompressing)."""
    view = memoryview(data)
    segments: list[Segment] = []
    pos = skip_nuls(view, 0)
    if pos >= len(view):
        raise BadInput("empty initramfs: no cpio archive in it")
    while pos < len(view):
        idx = len(segments)
        head = bytes(view[pos:pos + 6])
        try:
            if head in (MAGIC, MAGIC_CRC):
                members, end = read_archive(view, pos)
                if visit is not None:
                    _visit_all(visit, idx, view, members)
                # Further archives may follow directly; each is its own segment.
                segments.append(Segment(idx, pos, end, None, end - pos, [_rebase(m, pos) for m in members],
                                        view[pos:end] if keep_data else None))
            else:
                algorithm = compress.detect(view[pos:pos + 16])
                if algorithm is None:
                    what = "trailing junk" if segments else "not an initramfs"
                    raise BadInput(f"{what} at offset {pos}: neither a cpio archive (070701) nor a "
                                   f"compression the kernel knows (first bytes {head.hex()})")
                if keep_data:
                    plain, end = compress.decompress_stream(algorithm, view, pos)
                    members = _archives(plain)
                    if visit is not None:
                        _visit_all(visit, idx, memoryview(plain), members)
                    segments.append(Segment(idx, pos, end, algorithm, len(plain), members, plain))
                else:
                    parser = StreamParser(None if visit is None else partial(visit, idx))
                    # A visitor writes files: decoding beside it on another core pays off then.
                    decode = compress.decompress_chunks
                    if visit is not None:  # (imported here: threads are not for a listing)
                        from bootlab.image import readahead

                        decode = readahead.decompress_chunks
                    end = decode(algorithm, view, pos, parser.feed)
                    parser.close()
                    segments.append(Segment(idx, pos, end, algorithm, parser.size, parser.members))
        except compress.CorruptData as e:
            raise BadInput(f"segment {idx} at offset {pos}: {e}") from None
        except CpioError as e:
            # The offsets in e are the file's for an uncompressed segment, else the decompressed data's.
            what = "uncompressed" if head in (MAGIC, MAGIC_CRC) else f"{algorithm} at offset {pos}, after decompression"
            raise BadInput(f"segment {idx} ({what}): {e}") from None
        pos = skip_nuls(view, end)
    return segments


def _visit_all(visit: Visitor, idx: int, view: memoryview, members: list[Member]) -> None:
    """Members parsed from a whole buffer, shown to `visit` as the stream parser would."""
    for m in members:
        sink = visit(idx, m)
        if sink is not None:
            if m.size:
                sink.write(view[m.data_offset:m.data_offset + m.size])
            sink.close()


def _rebase(m: Member, base: int) -> Member:
    """Members of an uncompressed segment were parsed in file coordinates; make them segment-relative."""
    return m._replace(offset=m.offset - base, data_offset=m.data_offset - base)


def map_image(path: str | os.PathLike[str]) -> memoryview:
    """The file's bytes, mapped rather than read: a listing keeps only headers and extraction
    writes each file straight from the decompressor, so neither needs the image in memory.
    A pipe (`<(zcat ...)`) cannot be mapped and is read whole."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if stat.S_ISREG(st.st_mode) and st.st_size:
                # Never closed explicitly: slices of it may live on in a traceback; the mapping
                # goes with its last reference (readers keep no pointer into it). Copy-on-write
                # rather than read-only, because ctypes takes the address of writable memory
                # only (libzstd); nothing writes to it.
                return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY))
            return memoryview(f.read())
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory") from None
    except PermissionError:
        raise BadInput(f"{path}: permission denied") from None
    except OSError as e:  # a symlink loop, a socket, a name too long ...
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None


def load(path: str | os.PathLike[str]) -> list[Segment]:
    """Every segment of the image at path, for listing (headers only, see read_segments)."""
    return read_segments(map_image(path), keep_data=False)
