"""Unpacking an initramfs into a directory, without root and without ever writing outside it.

What an unprivileged user cannot create (device nodes, other owners) is not an error: it is
recorded in a manifest in the destination, so nothing the archive said is lost. Names are
confined to the destination: leading '/' and './' are dropped, '..' components are refused, and
no entry is ever written through a symlink (an archive's `lib -> /etc` then `lib/passwd` must not
touch /etc).
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bootlab.errors import BadInput, BootlabError
from bootlab.image.cpio import Member
from bootlab.image.entry import Kind, path_parts
from bootlab.image.initramfs import Segment, read_segments

if TYPE_CHECKING:
    from bootlab.image.cpio import DataSink

MANIFEST = ".bootlab-manifest.json"


@dataclass
class Report:
    written: int = 0
    skipped: list[dict[str, object]] = field(default_factory=list)  # unsafe names, with why
    not_applied: list[dict[str, object]] = field(default_factory=list)  # nodes, owners (not root)


def safe_name(name: str) -> str | None:
    """The archive name as a relative path inside the destination, or None if it would escape."""
    parts = path_parts(name)
    if not parts or ".." in parts or "\0" in name:
        return None
    return "/".join(parts)


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _matching(name: str, patterns: list[str]) -> list[str]:
    """The patterns that select `name` (relative, as safe_name gives it); "/etc/*" works too."""
    return [p for p in patterns if fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase("/" + name, p)]


def _check_selection(segments: list[Segment], patterns: list[str], segment: int | None) -> None:
    """--segment must exist, and each PATTERN must select something in it: one that selects
    nothing is a mistake (a typo, a leading `./`), which tar reports too."""
    if segment is not None and not 0 <= segment < len(segments):
        raise BadInput(f"--segment {segment}: the image has segments 0 to {len(segments) - 1}")
    if not patterns:
        return
    matched = {p for s in segments if segment in (None, s.number) for m in s.members
               if (rel := safe_name(m.name)) is not None for p in _matching(rel, patterns)}
    missing = [p for p in patterns if p not in matched]
    if missing:
        raise BadInput(f"no entry{'' if segment is None else f' of segment {segment}'} matches "
                       f"{', '.join(map(repr, missing))}; nothing was extracted "
                       f"(`bootlab initramfs ls` shows the names)")


class _Dirs:
    """Parent directories checked to be real directories (not symlinks) inside the root.

    Remembering them keeps the symlink check to one lstat per new directory instead of a walk
    per entry; an entry that replaces a known directory by something else forgets it."""

    def __init__(self, root: str) -> None:
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
            path = f"{self.root}/{sub}"
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


def _clear(path: str, *, for_dir: bool = False) -> None:
    """Make room for a new entry. A directory stays for a directory (the kernel merges them);
    for anything else it goes if it is empty (the kernel's rmdir), else OSError says why."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
    elif not for_dir:
        os.rmdir(path)


class _FileData:
    """A regular file being written as its data streams out of the decompressor."""

    def __init__(self, path: str, member: Member, *, create: bool) -> None:
        flags = os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
        self.fd = os.open(path, flags, 0o600)
        self.path, self.member = path, member

    def write(self, piece: memoryview) -> None:
        try:
            while piece:
                piece = piece[os.write(self.fd, piece):]
        except OSError as e:  # a write on a descriptor names no file; say which
            os.close(self.fd)  # the reader stops here and never calls close()
            raise OSError(e.errno, e.strerror, self.path) from None

    def close(self) -> None:
        try:
            os.chmod(self.fd, self.member.perm)
            os.utime(self.fd, (self.member.mtime, self.member.mtime))
        finally:
            os.close(self.fd)


class _Writer:
    """Creates each member under the root as the reader announces it (see `extract`)."""

    def __init__(self, root: str, patterns: list[str]) -> None:
        self.root = root  # a string: pathlib costs more than the writing in a 1,400-file extract
        self.patterns = patterns
        self.report = Report()
        self.am_root = os.geteuid() == 0
        self.dir_modes: list[tuple[str, int, int]] = []
        self.dirs = _Dirs(root)
        self.links: dict[tuple[int, int, int, int], str] = {}  # hardlink groups by (segment, dev, ino)

    def member(self, segment: int, m: Member) -> DataSink | None:
        """Create m; for a regular file with data, return where its data is to be written."""
        rel = safe_name(m.name)
        if rel is None and not path_parts(m.name):
            return None  # "." is the destination itself: its mode stays the user's
        if rel is None:
            self.report.skipped.append({"name": m.name, "segment": segment, "why": "escapes the destination"})
            return None
        if self.patterns and not _matching(rel, self.patterns):
            return None
        if rel == MANIFEST:
            self.report.skipped.append({"name": m.name, "segment": segment, "why": "the name of bootlab's manifest"})
            return None
        if not self.dirs.ensure_parent(rel):
            self.report.skipped.append({"name": m.name, "segment": segment,
                                        "why": "would be written through a symlink"})
            return None
        try:
            return self._create(segment, m, rel, f"{self.root}/{rel}")
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.ENAMETOOLONG):
                raise
            # A non-empty directory where the archive puts something else (the kernel's rmdir
            # fails there too), or a name this filesystem cannot hold: that entry only.
            self.report.skipped.append({"name": m.name, "segment": segment, "why": e.strerror})
            return None

    def _create(self, segment: int, m: Member, rel: str, target: str) -> DataSink | None:
        kind = m.kind
        sink: DataSink | None = None
        if kind is not Kind.DIR:
            self.dirs.forget(rel)
        if kind is Kind.DIR:
            _clear(target, for_dir=True)
            try:
                os.mkdir(target, 0o755)
            except FileExistsError:
                pass
            self.dirs.known.add(rel)
            self.dir_modes.append((target, m.perm, m.mtime))
        elif kind is Kind.FILE:
            key = (segment, m.devmajor, m.devminor, m.ino)
            first = self.links.get(key) if m.nlink > 1 else None
            _clear(target)
            if first is not None and _is_file(first):  # (a later entry may have replaced it)
                os.link(first, target)
                # Data on the last link (GNU cpio) reaches every name; no data leaves the inode as it is.
                sink = _FileData(target, m, create=False) if m.size else None
            else:
                sink = _FileData(target, m, create=True)
                if m.nlink > 1:
                    self.links[key] = target
            if not m.size and sink is not None:
                sink.close()
                sink = None
        elif kind is Kind.SYMLINK:
            if not m.link or "\0" in m.link:
                self.report.skipped.append({"name": m.name, "segment": segment,
                                            "why": "a symlink with an empty target or a NUL byte in it"})
                return None
            _clear(target)
            os.symlink(m.link, target)
            os.utime(target, (m.mtime, m.mtime), follow_symlinks=False)
        elif kind in (Kind.CHAR, Kind.BLOCK, Kind.FIFO, Kind.SOCKET):
            if m.rdevmajor > 0xFFF or m.rdevminor > 0xFFFFF:  # what Linux's dev_t holds
                self.report.skipped.append({"name": m.name, "segment": segment,
                                            "why": f"device number {m.rdevmajor}:{m.rdevminor} out of range"})
                return None
            _clear(target)
            try:
                os.mknod(target, m.mode, os.makedev(m.rdevmajor, m.rdevminor))
                os.utime(target, (m.mtime, m.mtime))
            except PermissionError:
                self.report.not_applied.append(_record(m, rel, "device node needs root"))
                return None
        else:
            self.report.skipped.append({"name": m.name, "segment": segment, "why": f"unknown file type {m.mode:o}"})
            return None
        self.report.written += 1
        if m.uid or m.gid:
            if self.am_root:
                os.chown(target, m.uid, m.gid, follow_symlinks=False)
            else:
                self.report.not_applied.append(_record(m, rel, "ownership needs root"))
        return sink

    def finish(self) -> Report:
        report = self.report
        if report.not_applied or report.skipped:
            text = json.dumps({"not_applied": report.not_applied, "skipped": report.skipped}, indent=1) + "\n"
            # A new file renamed into place: a symlink or fifo of that name (in a DIR that held
            # files) is replaced, never written through or waited on.
            from bootlab import cache  # (only now: most extractions write no manifest)

            manifest = Path(self.root, MANIFEST)
            try:
                cache.atomic_write(manifest, lambda tmp: tmp.write_text(text), mode=0o644)
            except OSError as e:  # a directory of that name in DIR: say which, not our temporary
                raise OSError(e.errno, e.strerror, str(manifest)) from None
        # Directory modes last: a read-only directory must still receive its contents first.
        for path, mode, mtime in reversed(self.dir_modes):
            if not _is_dir(path):  # replaced by a later entry
                continue
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
        return report


def extract(image: bytes | memoryview, dest: Path, patterns: list[str] | None = None,
            segment: int | None = None) -> Report:
    """Write the members of every segment of `image` (in order, later ones win, like the kernel),
    or of `segment` only, under dest, writing each file as it is decompressed.

    A bad image or a PATTERN that selects nothing (BadInput) leaves dest as it was: if dest did
    not exist or was empty, what was written is removed again; if it held files, the image is
    first read through once without writing anything. A failed write (a full disk) is a
    BootlabError, cleaned up the same way."""
    created = _first_missing(dest)
    if created is None and not dest.is_dir():
        raise BadInput(f"-C {dest}: not a directory")
    undo: Callable[[], None]
    if created is not None:
        undo = lambda: shutil.rmtree(created, ignore_errors=True)
    elif _is_empty(dest):
        undo = lambda: _empty(dest)
    else:
        # raises BadInput before anything is written
        _check_selection(read_segments(image, keep_data=False), patterns or [], segment)
        undo = lambda: None
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"-C {dest}: cannot create it ({e.strerror})") from None
    writer = _Writer(str(dest.resolve()), patterns or [])

    def visit(index: int, m: Member) -> DataSink | None:
        return writer.member(index, m) if segment in (None, index) else None

    try:
        _check_selection(read_segments(image, keep_data=False, visit=visit), patterns or [], segment)
        return writer.finish()
    except OSError as e:
        undo()
        where = f" ({e.filename})" if e.filename else ""
        raise BootlabError(f"extracting into {dest}: {e.strerror or e}{where}") from None
    except BaseException:
        undo()
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost directory `path.mkdir(parents=True)` would create, or None if path exists."""
    missing = None
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return missing
        missing = p
    return missing


def _is_empty(directory: Path) -> bool:
    with os.scandir(directory) as children:
        return not any(children)


def _empty(directory: Path) -> None:
    for child in os.scandir(directory):
        if child.is_dir(follow_symlinks=False):
            shutil.rmtree(child.path, ignore_errors=True)
        else:
            os.unlink(child.path)


def _record(m: Member, rel: str, why: str) -> dict[str, object]:
    return {"path": rel, "why": why, "mode": f"{m.mode:o}", "uid": m.uid, "gid": m.gid,
            "rdev": [m.rdevmajor, m.rdevminor], "type": stat.filemode(m.mode)[0]}
