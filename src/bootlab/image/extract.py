"""Unpacking an initramfs into a directory, without root and without ever writing outside it.

What an unprivileged user cannot create (device nodes, other owners) is not an error: it is
recorded in a manifest in the destination, so nothing the archive said is lost. Names are
confined to the destination: leading '/' and './' are dropped, '..' components are refused, and
no entry is ever written through a symlink (an archive's `lib -> /etc` then `lib/passwd` must not
touch /etc).
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bootlab.image.cpio import Member
from bootlab.image.entry import Kind
from bootlab.image.initramfs import Segment, member_data

MANIFEST = ".bootlab-manifest.json"


@dataclass
class Report:
    written: int = 0
    skipped: list[dict[str, object]] = field(default_factory=list)  # unsafe names, with why
    not_applied: list[dict[str, object]] = field(default_factory=list)  # nodes, owners (not root)


def safe_name(name: str) -> str | None:
    """The archive name as a relative path inside the destination, or None if it would escape."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _matches(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase("/" + name, p)
                               for p in patterns)


class _Dirs:
    """Parent directories checked to be real directories (not symlinks) inside the root.

    Remembering them keeps the symlink check to one lstat per new directory instead of a walk
    per entry; an entry that replaces a known directory by something else forgets it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.known: set[str] = {""}

    def ensure_parent(self, rel: str) -> bool:
        """Create rel's parent directories; False if one of them is a symlink (or not a dir)."""
        parent = rel.rpartition("/")[0]
        if parent in self.known:
            return True
        parts = parent.split("/")
        for i in range(len(parts)):
            sub = "/".join(parts[: i + 1])
            if sub in self.known:
                continue
            path = self.root / sub
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
            else:
                if not stat.S_ISDIR(st.st_mode):
                    return False  # a symlink or a file where a directory should be
            self.known.add(sub)
        return True

    def forget(self, rel: str) -> None:
        if rel in self.known:
            self.known = {k for k in self.known if k != rel and not k.startswith(rel + "/")}


def _clear(path: Path) -> None:
    """Make room for a new entry; a directory stays (the kernel merges directories too)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)


def extract(segments: list[Segment], dest: Path, patterns: list[str] | None = None) -> Report:
    """Write the members of `segments` (in order, later ones win, like the kernel) under dest."""
    patterns = patterns or []
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    report = Report()
    am_root = os.geteuid() == 0
    dir_modes: list[tuple[Path, int, int]] = []
    dirs = _Dirs(root)
    links: dict[tuple[int, int, int, int], Path] = {}  # hardlink groups by (segment, dev, ino)

    for seg in segments:
        for m in seg.members:
            rel = safe_name(m.name)
            if rel is None and m.name.strip("./") == "":
                continue  # "." is the destination itself: its mode stays the user's
            if rel is None:
                report.skipped.append({"name": m.name, "segment": seg.index, "why": "escapes the destination"})
                continue
            if not _matches(rel, patterns):
                continue
            if not dirs.ensure_parent(rel):
                report.skipped.append({"name": m.name, "segment": seg.index, "why": "would be written through a symlink"})
                continue
            target = root / rel
            kind = m.kind
            if kind is not Kind.DIR:
                dirs.forget(rel)
            if kind is Kind.DIR:
                _clear(target)
                try:
                    os.mkdir(target, 0o755)
                except FileExistsError:
                    pass
                dirs.known.add(rel)
                dir_modes.append((target, m.perm, m.mtime))
            elif kind is Kind.FILE:
                key = (seg.index, m.devmajor, m.devminor, m.ino)
                first = links.get(key) if m.nlink > 1 else None
                _clear(target)
                if first is not None and first.exists():
                    os.link(first, target)
                    if m.size:  # data on the last link (GNU cpio) reaches every name
                        target.write_bytes(member_data(seg, m))
                else:
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(member_data(seg, m))
                    if m.nlink > 1:
                        links[key] = target
                os.chmod(target, m.perm)
                os.utime(target, (m.mtime, m.mtime))
            elif kind is Kind.SYMLINK:
                _clear(target)
                os.symlink(member_data(seg, m).decode("utf-8", "surrogateescape"), target)
                os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)
            elif kind in (Kind.CHAR, Kind.BLOCK, Kind.FIFO, Kind.SOCKET):
                _clear(target)
                try:
                    os.mknod(target, m.mode, os.makedev(m.rdevmajor, m.rdevminor))
                    os.utime(target, (m.mtime, m.mtime))
                except PermissionError:
                    report.not_applied.append(_record(m, rel, "device node needs root"))
                    continue
            else:
                report.skipped.append({"name": m.name, "segment": seg.index, "why": f"unknown file type {m.mode:o}"})
                continue
            report.written += 1
            if m.uid or m.gid:
                if am_root:
                    os.chown(target, m.uid, m.gid, follow_symlinks=False)
                else:
                    report.not_applied.append(_record(m, rel, "ownership needs root"))
    if report.not_applied or report.skipped:
        manifest = {"not_applied": report.not_applied, "skipped": report.skipped}
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    # Directory modes last: a read-only directory must still receive its contents first.
    for path, mode, mtime in reversed(dir_modes):
        os.chmod(path, mode)
        os.utime(path, (mtime, mtime))
    return report


def _record(m: Member, rel: str, why: str) -> dict[str, object]:
    return {"path": rel, "why": why, "mode": f"{m.mode:o}", "uid": m.uid, "gid": m.gid,
            "rdev": [m.rdevmajor, m.rdevminor], "type": stat.filemode(m.mode)[0]}
