"""cpio "newc" (SVR4, magic 070701): the format the kernel unpacks an initramfs from.

Each member is a 110-byte ASCII header of thirteen 8-digit hex fields, the NUL-terminated name
padded to a 4-byte boundary, then the data padded to 4 bytes. "TRAILER!!!" ends an archive.
"""

from __future__ import annotations

from typing import BinaryIO, Iterable

from bootlab.image.entry import Entry, Kind

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
    """Write entries and a trailer; returns bytes written. Inode numbers are sequential."""
    written = 0
    ino = first_ino
    for e in entries:
        data = e.read()
        nlink = 2 if e.kind is Kind.DIR else 1
        major, minor = e.rdev if e.kind in (Kind.CHAR, Kind.BLOCK) else (0, 0)
        chunk = header(ino=ino, mode=e.kind.type_bits | (e.mode & 0o7777), uid=e.uid, gid=e.gid,
                       nlink=nlink, mtime=e.mtime, filesize=len(data), rdevmajor=major,
                       rdevminor=minor, name=e.path.encode())
        out.write(chunk)
        out.write(data)
        out.write(_pad(len(data)))
        written += len(chunk) + len(data) + len(_pad(len(data)))
        ino += 1
    trailer = header(ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0,
                     name=TRAILER.encode())
    out.write(trailer)
    return written + len(trailer)
