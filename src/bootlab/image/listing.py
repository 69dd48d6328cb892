"""What `initramfs ls` and `examine` show, as data and as text lines."""

from __future__ import annotations

import stat
import time

from bootlab.image.cpio import Member
from bootlab.image.initramfs import Segment
from bootlab.image.kind import Kind
from bootlab.lean import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any


def link_target(seg: Segment, m: Member) -> str | None:
    return m.link if m.kind is Kind.SYMLINK else None


def long_line(seg: Segment, m: Member) -> str:
    """Like `ls -l`, with numeric owners (the archive's users are not this host's)."""
    if m.kind in (Kind.CHAR, Kind.BLOCK):
        size = f"{m.rdevmajor:>4},{m.rdevminor:>4}"
    else:
        size = f"{m.size:>9}"
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m.mtime))
    target = link_target(seg, m)
    return (f"{stat.filemode(m.mode)} {m.nlink:>3} {m.uid:>5} {m.gid:>5} {size} {when} {m.name}"
            + (f" -> {target}" if target is not None else ""))


def member_json(seg: Segment, m: Member) -> dict[str, Any]:
    d: dict[str, Any] = {
        "segment": seg.number, "name": m.name, "type": (m.kind.value if m.kind else "unknown"),
        "mode": f"{m.perm:04o}", "uid": m.uid, "gid": m.gid, "nlink": m.nlink, "size": m.size,
        "mtime": m.mtime, "ino": m.ino,
    }
    if m.kind in (Kind.CHAR, Kind.BLOCK):
        d["rdev"] = [m.rdevmajor, m.rdevminor]
    target = link_target(seg, m)
    if target is not None:
        d["target"] = target
    return d


def segment_row(seg: Segment) -> dict[str, Any]:
    return {"segment": seg.number, "offset": seg.offset, "end": seg.end,
            "compression": seg.compression or "none", "compressed_size": seg.compressed_size,
            "size": seg.size, "entries": len(seg.members)}
