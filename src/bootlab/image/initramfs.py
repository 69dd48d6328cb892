"""Reading a whole initramfs as the kernel does: segment after segment, to the end of the file.

A distro initrd is often an uncompressed cpio (early CPU microcode) followed by one or more
compressed cpio archives. `cpio -i` stops after the first; the kernel does not, and neither do we.
Between segments the kernel skips NUL padding; anything else it cannot read is an error.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path

from bootlab.errors import BadInput
from bootlab.image import compress
from bootlab.image.cpio import MAGIC, MAGIC_CRC, CpioError, Member, StreamParser, read_archive


@dataclass
class Segment:
    index: int
    offset: int  # where it starts in the file
    end: int  # where it ends in the file
    compression: str | None
    size: int  # uncompressed
    members: list[Member] = field(default_factory=list)
    data: bytes | memoryview | None = None  # the uncompressed archive, when kept; members point into it

    @property
    def compressed_size(self) -> int:
        return self.end - self.offset


def _skip_padding(buf: memoryview, pos: int) -> int:
    n = len(buf)
    while pos < n and buf[pos] == 0:
        # Skip whole runs quickly: find the next non-NUL byte.
        chunk = bytes(buf[pos:pos + 65536])
        stripped = chunk.lstrip(b"\0")
        pos += len(chunk) - len(stripped)
        if stripped:
            break
    return pos


def _archives(data: bytes | memoryview, where: str) -> list[Member]:
    """All cpio archives in one (decompressed) segment; several may be concatenated."""
    view = memoryview(data)
    members: list[Member] = []
    pos = 0
    while True:
        pos = _skip_padding(view, pos)
        if pos >= len(view):
            return members
        if bytes(view[pos:pos + 6]) not in (MAGIC, MAGIC_CRC):
            raise CpioError(f"{where}: junk at offset {pos} after the cpio trailer")
        got, pos = read_archive(view, pos)
        members.extend(got)


def read_segments(data: bytes, *, keep_data: bool = True) -> list[Segment]:
    """Every segment of an initramfs image. Raises BadInput with one line on malformed input.

    keep_data=False is for listing: compressed segments are decompressed in pieces and only
    their headers (and symlink targets) are kept, so a 130 MB initrd is not held in memory."""
    view = memoryview(data)
    segments: list[Segment] = []
    pos = _skip_padding(view, 0)
    if pos >= len(view):
        raise BadInput("empty initramfs: no cpio archive in it")
    while pos < len(view):
        idx = len(segments)
        head = bytes(view[pos:pos + 6])
        try:
            if head in (MAGIC, MAGIC_CRC):
                members, end = read_archive(view, pos)
                # Further archives may follow directly; each is its own segment.
                segments.append(Segment(idx, pos, end, None, end - pos, [_rebase(m, pos) for m in members],
                                        view[pos:end] if keep_data else None))
            else:
                algorithm = compress.detect(view[pos:pos + 16])
                if algorithm is None:
                    what = "trailing junk" if segments else "not an initramfs"
                    raise BadInput(f"{what} at offset {pos}: neither a cpio archive (070701) nor a "
                                   f"compression the kernel knows (first bytes {head.hex()})")
                where = f"segment {idx} ({algorithm})"
                if keep_data:
                    plain, end = compress.decompress_stream(algorithm, view, pos)
                    segments.append(Segment(idx, pos, end, algorithm, len(plain), _archives(plain, where), plain))
                else:
                    parser = StreamParser(where)
                    end = compress.decompress_chunks(algorithm, view, pos, parser.feed)
                    parser.close()
                    segments.append(Segment(idx, pos, end, algorithm, parser.size, parser.members))
        except compress.CorruptData as e:
            raise BadInput(f"segment {idx} at offset {pos}: {e}") from None
        except CpioError as e:
            raise BadInput(f"segment {idx} at offset {pos}: {e}") from None
        pos = _skip_padding(view, end)
    return segments


def _rebase(m: Member, base: int) -> Member:
    """Members of an uncompressed segment were parsed in file coordinates; make them segment-relative."""
    from dataclasses import replace

    return replace(m, offset=m.offset - base, data_offset=m.data_offset - base)


def load(path: Path, *, keep_data: bool = True) -> list[Segment]:
    try:
        if not keep_data:
            # Listing: map the file instead of copying it; only headers survive the scan.
            # Not closed explicitly: on an error, slices of it live on in the traceback; the
            # mapping goes with its last reference (listings keep no pointer into it).
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size:
                    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    return read_segments(memoryview(mapped), keep_data=False)  # type: ignore[arg-type]
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory") from None
    except PermissionError:
        raise BadInput(f"{path}: permission denied") from None
    return read_segments(data, keep_data=keep_data)


def member_data(segment: Segment, m: Member) -> bytes:
    if segment.data is None:
        raise ValueError("segment read without its data (keep_data=False)")
    return bytes(segment.data[m.data_offset:m.data_offset + m.size])
