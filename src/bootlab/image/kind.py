"""The file types an archive or a filesystem image can hold (re-exported by `entry`).

A module of its own so that reading an archive (`initramfs ls`) does not load the entry model
and its dependencies: a listing is over in a few hundred milliseconds, and imports count."""

from __future__ import annotations

import stat
from enum import Enum


class Kind(Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    SOCKET = "socket"

    @property
    def type_bits(self) -> int:
        return _TYPE_BITS[self]


_TYPE_BITS = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK,
              Kind.CHAR: stat.S_IFCHR, Kind.BLOCK: stat.S_IFBLK, Kind.FIFO: stat.S_IFIFO,
              Kind.SOCKET: stat.S_IFSOCK}
