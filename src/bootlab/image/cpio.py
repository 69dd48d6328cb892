"""cpio "newc" (SVR4, magic 070701): the format the kernel unpacks an initramfs from.

Each member is a 110-byte ASCII header of thirteen 8-digit hex fields, the NUL-terminated name
padded to a 4-byte boundary, then the data padded to 4 bytes. "TRAILER!!!" ends an archive.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Iterable

from bootlab.errors import BadInput
from bootlab.image.kind import Kind
from bootlab.lean import TYPE_CHECKING, Record

if TYPE_CHECKING:  # (typing is not imported on the way to `initramfs ls`: see bootlab.lean)
    from typing import BinaryIO, Protocol

    from bootlab.image.entry import Entry

    class DataSink(Protocol):
        """Where a member's data goes while it streams past (extraction writes it to a file)."""

        def write(self, piece: memoryview) -> None: ...

        def close(self) -> None: ...

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def header(*, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, filesize: int,
           devmajor: int = 0, devminor: int = 0, rdevmajor: int = 0, rdevminor: int = 0,
           name: bytes) -> bytes:
    fields = (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
              rdevmajor, rdevminor, len(name) + 1, 0)
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"cpio field out of range for {name!r}: {value}")
    head = MAGIC + b"".join(b"%08X" % v for v in fields) + name + b"\0"
    return head + _pad(len(head))


def write(out: BinaryIO, entries: Iterable[Entry], *, first_ino: int = 1) -> int:
    """Write entries and a trailer; returns bytes written. Inode numbers are sequential.

    Hard links (entries with `hardlink_of`) share their target's inode number; as GNU cpio does,
    only the last name of a group carries the data, the others have size 0. The kernel links
    each later name to the first and writes the data into the shared inode."""
    entries = list(entries)
    groups: dict[str, list[Entry]] = {}
    for e in entries:
        if e.kind is Kind.FILE:
            groups.setdefault(e.hardlink_of or e.path, []).append(e)
    for target, names in groups.items():
        if any(n.hardlink_of for n in names) and not any(n.path == target and not n.hardlink_of for n in names):
            link = next(n.path for n in names if n.hardlink_of)
            raise BadInput(f"hard link {link!r} to {target!r}: not a file in the archive")
    group_ino: dict[str, int] = {}
    seen: dict[str, int] = {}
    written = 0
    ino = first_ino
    for e in entries:
        nlink = 2 if e.kind is Kind.DIR else 1
        this_ino = ino
        data = e.read()
        if e.kind is Kind.FILE and len(groups[e.hardlink_of or e.path]) > 1:
            key = e.hardlink_of or e.path
            group = groups[key]
            nlink = len(group)
            this_ino = group_ino.setdefault(key, ino)
            seen[key] = seen.get(key, 0) + 1
            primary = next(n for n in group if n.path == key)
            data = primary.read() if seen[key] == nlink else b""
        major, minor = e.rdev if e.kind in (Kind.CHAR, Kind.BLOCK) else (0, 0)
        chunk = header(ino=this_ino, mode=e.kind.type_bits | (e.mode & 0o7777), uid=e.uid, gid=e.gid,
                       nlink=nlink, mtime=e.mtime, filesize=len(data), rdevmajor=major,
                       rdevminor=minor, name=os.fsencode(e.path))  # (a host name's bytes as they were)
        out.write(chunk)
        out.write(data)
        out.write(_pad(len(data)))
        written += len(chunk) + len(data) + len(_pad(len(data)))
        ino += 1
    trailer = header(ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0,
                     name=TRAILER.encode())
    out.write(trailer)
    return written + len(trailer)


# ---- reading ----

MAGIC_CRC = b"070702"  # same layout; the check field carries a byte sum we do not need


class CpioError(ValueError):
    """A malformed archive; the message names what and where, in one line."""


class Member(Record):
    """One parsed header, with where its data lies in the (decompressed) buffer.

    A named tuple rather than a dataclass: a listing makes thousands, and reading an archive
    should not import dataclasses (a tenth of `initramfs ls`'s start-up)."""

    name: str
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    size: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    offset: int  # of the header
    data_offset: int
    link: str | None = None  # a symlink's target (its data), kept by both readers

    @property
    def kind(self) -> Kind | None:
        return _KINDS.get(stat.S_IFMT(self.mode))

    @property
    def perm(self) -> int:
        return stat.S_IMODE(self.mode)


_FIELDS = struct.Struct(">13I")


def _hex_fields(text: bytes) -> tuple[int, ...]:
    """The thirteen 8-digit hex fields after the magic; ValueError unless all are hex digits.
    (bytes.fromhex skips spaces, which leaves too few bytes: struct.error, turned into ValueError.)"""
    try:
        return _FIELDS.unpack(bytes.fromhex(text.decode("ascii")))
    except struct.error as e:
        raise ValueError(str(e)) from None


_KINDS = {k.type_bits: k for k in Kind}


def read_archive(buf: bytes | memoryview, offset: int = 0) -> tuple[list[Member], int]:
    """Parse one archive from `offset` through its TRAILER!!!; returns members and the offset
    just past the trailer's padding. Raises CpioError on anything malformed or truncated."""
    view = memoryview(buf)
    end = len(view)
    members: list[Member] = []
    pos = offset
    while True:
        if pos + HEADER_SIZE > end:
            raise CpioError(f"truncated archive: header at offset {pos} runs past the end "
                            f"({'no TRAILER!!!' if pos >= end else f'{end - pos} bytes left'})")
        head = bytes(view[pos:pos + HEADER_SIZE])
        magic = head[:6]
        if magic not in (MAGIC, MAGIC_CRC):
            if magic == b"070707" or head[:2] in (b"\xc7\x71", b"\x71\xc7"):
                raise CpioError(f"offset {pos}: an old-format cpio header; the kernel reads only newc (070701)")
            raise CpioError(f"offset {pos}: bad cpio magic {magic!r} (expected 070701)")
        try:
            fields = _hex_fields(head[6:])
        except ValueError:
            raise CpioError(f"offset {pos}: header fields are not hexadecimal") from None
        (ino, mode, uid, gid, nlink, mtime, size, devmajor, devminor, rdevmajor, rdevminor,
         namesize, _check) = fields
        name_start = pos + HEADER_SIZE
        if namesize == 0 or name_start + namesize > end:
            raise CpioError(f"offset {pos}: truncated or empty name (namesize {namesize})")
        raw_name = bytes(view[name_start:name_start + namesize])
        if raw_name[-1:] != b"\0":
            raise CpioError(f"offset {pos}: name is not NUL-terminated")
        name = raw_name[:-1].decode("utf-8", "surrogateescape")
        data_offset = name_start + namesize + (-(HEADER_SIZE + namesize) % 4)
        if name == TRAILER:
            return members, min(end, data_offset + size + (-size % 4))
        if data_offset + size > end:
            raise CpioError(f"truncated archive: {name!r} at offset {pos} needs {size} bytes of data, "
                            f"{max(0, end - data_offset)} left")
        link = None
        if stat.S_ISLNK(mode):
            link = bytes(view[data_offset:data_offset + size]).decode("utf-8", "surrogateescape")
        members.append(Member(name, ino, mode, uid, gid, nlink, mtime, size, devmajor, devminor,
                              rdevmajor, rdevminor, pos, data_offset, link))
        pos = data_offset + size + (-size % 4)


class StreamParser:
    """newc members from a stream fed in pieces, for reading without holding the archive.

    Data goes by as it comes: a symlink's is kept (its target), a member's is handed to the sink
    `on_member` returns for it (extraction), anything else is skipped. Several archives may
    follow each other, with NUL padding between, as in one decompressed initramfs segment.
    Pieces may be views of a buffer the feeder reuses, so whatever is kept is copied."""

    def __init__(self, on_member: Callable[[Member], DataSink | None] | None = None) -> None:
        self.on_member = on_member
        self.members: list[Member] = []
        self.size = 0  # bytes fed so far
        self._head = bytearray()  # a header split across pieces, being completed
        self._head_at = 0  # its stream offset
        self._data = 0  # bytes of the current member's data still to come
        self._pad = 0  # then padding to pass over
        self._link: tuple[Member, bytearray] | None = None  # a symlink and its target so far
        self._sink: DataSink | None = None
        self._in_archive = False
        self._archives = 0

    def feed(self, piece: bytes | memoryview) -> None:
        view = memoryview(piece)
        base = self.size  # stream offset of view[0]
        self.size += len(view)
        i, n = 0, len(view)
        while i < n:
            if self._data:
                take = min(self._data, n - i)
                if self._link is not None:
                    self._link[1].extend(view[i:i + take])
                elif self._sink is not None:
                    self._sink.write(view[i:i + take])
                i += take
                self._data -= take
                if not self._data:
                    self._end_member()
            elif self._pad:
                take = min(self._pad, n - i)
                i += take
                self._pad -= take
            elif self._head:
                # Complete a split header: its fixed part first, then its name.
                want = (HEADER_SIZE if len(self._head) < HEADER_SIZE
                        else self._length(self._fields(self._head, self._head_at), self._head_at))
                take = min(want - len(self._head), n - i)
                self._head.extend(view[i:i + take])
                i += take
                if len(self._head) == want > HEADER_SIZE:
                    head, self._head = bytes(self._head), bytearray()
                    self._start_member(head, self._fields(head, self._head_at), self._head_at)
            elif not self._in_archive and not view[i]:
                i = skip_nuls(view, i)
            else:
                i = self._header(view, i, base)

    def _header(self, view: memoryview, i: int, base: int) -> int:
        """Start the member whose header is at view[i], or keep the header for the next piece
        if it does not end in this one; returns where to go on."""
        n = len(view)
        if n - i >= HEADER_SIZE:
            fields = self._fields(view[i:i + HEADER_SIZE], base + i)
            length = self._length(fields, base + i)
            if n - i >= length:
                self._start_member(view[i:i + length], fields, base + i)
                return i + length
        self._head, self._head_at = bytearray(view[i:]), base + i
        return n

    def _fields(self, head: bytes | bytearray | memoryview, at: int) -> tuple[int, ...]:
        magic = bytes(head[:6])
        if magic not in (MAGIC, MAGIC_CRC):
            what = "junk after the cpio trailer" if self._archives and not self._in_archive else f"bad cpio magic {magic!r}"
            raise CpioError(f"{what} at offset {at}")
        try:
            return _hex_fields(bytes(head[6:HEADER_SIZE]))
        except ValueError:
            raise CpioError(f"header fields at offset {at} are not hexadecimal") from None

    def _length(self, fields: tuple[int, ...], at: int) -> int:
        """Header, name and the name's padding."""
        namesize = fields[11]
        if namesize == 0:
            raise CpioError(f"empty name at offset {at}")
        return HEADER_SIZE + namesize + (-(HEADER_SIZE + namesize) % 4)

    def _start_member(self, head: bytes | memoryview, fields: tuple[int, ...], at: int) -> None:
        (ino, mode, uid, gid, nlink, mtime, size, devmajor, devminor, rdevmajor, rdevminor,
         namesize, _check) = fields
        raw = bytes(head[HEADER_SIZE:HEADER_SIZE + namesize])
        if raw[-1:] != b"\0":
            raise CpioError(f"name at offset {at} is not NUL-terminated")
        name = raw[:-1].decode("utf-8", "surrogateescape")
        member = Member(name, ino, mode, uid, gid, nlink, mtime, size, devmajor, devminor,
                        rdevmajor, rdevminor, at, at + len(head))
        self._in_archive = True
        self._data, self._pad = size, -size % 4
        if name == TRAILER:
            self._in_archive = False
            self._archives += 1
        elif stat.S_ISLNK(mode):
            self._link = (member, bytearray())
        else:
            self._emit(member)
        if not size:
            self._end_member()

    def _emit(self, member: Member) -> None:
        self.members.append(member)
        if self.on_member is not None:
            self._sink = self.on_member(member)

    def _end_member(self) -> None:
        if self._link is not None:
            member, target = self._link
            self._link = None
            self._emit(member._replace(link=bytes(target).decode("utf-8", "surrogateescape")))
        if self._sink is not None:
            sink, self._sink = self._sink, None
            sink.close()

    def close(self) -> None:
        """The stream has ended: anything but a finished archive is an error."""
        if self._in_archive or self._data or self._pad or self._head:
            raise CpioError("truncated archive (the stream ends inside a member or before TRAILER!!!)")
        if not self._archives:
            raise CpioError("no cpio archive in the stream")


def skip_nuls(view: memoryview, i: int) -> int:
    """The offset of the first non-NUL byte at or after i (or the end): the padding between
    archives and between initramfs segments."""
    while i < len(view):
        chunk = bytes(view[i:i + 65536])
        rest = chunk.lstrip(b"\0")
        if rest:
            return i + len(chunk) - len(rest)
        i += len(chunk)
    return i
