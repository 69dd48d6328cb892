"""The one entry model: a filesystem tree to build is a list of Entry values.

Builders (busybox, guest agent, modules, user files) produce entries; writers (cpio newc, later
ext4) consume them. Device nodes and ownership are plain fields, so nothing here needs root.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from bootlab.image.kind import Kind  # also imported from here; see kind.py


@dataclass(frozen=True)
class Entry:
    """One node of a tree. `path` is relative to the root, with no leading slash."""

    path: str
    kind: Kind
    mode: int = 0o644  # permission bits only; the type comes from `kind`
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    data: bytes | None = None  # file contents held in memory
    source: Path | None = None  # or read from this host file when written
    target: str | None = None  # symlink target
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes
    hardlink_of: str | None = None  # a FILE that is another name for this path's inode

    def __post_init__(self) -> None:
        p = PurePosixPath(self.path)
        if p.is_absolute() or ".." in p.parts or not self.path or self.path.startswith("./"):
            raise ValueError(f"entry path must be relative and inside the tree: {self.path!r}")

    def read(self) -> bytes:
        if self.kind is Kind.SYMLINK:
            return os.fsencode(self.target or "")
        if self.kind is not Kind.FILE:
            return b""
        if self.data is not None:
            return self.data
        if self.source is not None:
            return self.source.read_bytes()
        return b""


def path_parts(path: str) -> list[str]:
    """A path's components as the kernel walks them: empty and "." ones dropped, ".." kept for
    the caller to refuse or follow; [] for "/" (or "", "//", "/.") itself."""
    return [p for p in path.split("/") if p not in ("", ".")]


def directory(path: str, mode: int = 0o755) -> Entry:
    return Entry(path, Kind.DIR, mode)


def file(path: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(path, Kind.FILE, mode, data=data)


def host_file(path: str, source: Path, mode: int | None = None) -> Entry:
    if mode is None:
        mode = stat.S_IMODE(source.stat().st_mode)
    return Entry(path, Kind.FILE, mode, source=source)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, Kind.SYMLINK, 0o777, target=target)


def char_device(path: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(path, Kind.CHAR, mode, rdev=(major, minor))


SKELETON_DIRS = ("dev", "proc", "sys", "tmp", "run", "root", "etc")


def skeleton() -> list[Entry]:
    """What every bootable initramfs wants: the usual top directories and the two device nodes
    the kernel and a shell need before devtmpfs is mounted."""
    return [*(directory(d, 0o1777 if d == "tmp" else 0o755) for d in SKELETON_DIRS),
            char_device("dev/console", 5, 1, 0o600), char_device("dev/null", 1, 3, 0o666)]


@dataclass
class Tree:
    """Entries keyed by path, with parent directories filled in; later additions win."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def resolve(self, path: str) -> str:
        """`path` with parent components that are symlinks in this tree followed (as the guest
        would), so that after `lib -> usr/lib`, an entry for lib/modules/x lands in usr/lib."""
        parts = list(PurePosixPath(path).parts)
        for _ in range(40):  # symlink hops, like the kernel's limit
            for i in range(1, len(parts)):
                e = self.entries.get("/".join(parts[:i]))
                if e is not None and e.kind is Kind.SYMLINK and e.target:
                    base = [] if e.target.startswith("/") else parts[:i - 1]
                    new: list[str] = []
                    for p in base + [p for p in PurePosixPath(e.target).parts if p != "/"]:
                        if p == "..":
                            if new:
                                new.pop()
                        elif p != ".":
                            new.append(p)
                    parts = new + parts[i:]
                    break
            else:
                return "/".join(parts)
        return "/".join(parts)

    def add(self, entry: Entry) -> None:
        from dataclasses import replace

        resolved = self.resolve(entry.path)
        if resolved != entry.path and resolved:
            entry = replace(entry, path=resolved)
        if entry.hardlink_of and (target := self.resolve(entry.hardlink_of)) not in (entry.hardlink_of, ""):
            entry = replace(entry, hardlink_of=target)  # (the first name went through the same links)
        old = self.entries.get(entry.path)
        if entry.kind is Kind.SYMLINK and old is not None and old.kind is Kind.DIR:
            # A link replacing a directory (bin -> usr/bin on merged /usr): what was under the
            # directory moves to where the link points, as a merged-/usr conversion does.
            prefix = entry.path + "/"
            children = [e for k, e in self.entries.items() if k.startswith(prefix)]
            for k in [k for k in self.entries if k == entry.path or k.startswith(prefix)]:
                del self.entries[k]
            self._place(entry)
            for child in children:
                self.add(replace(child, path=entry.path + "/" + child.path[len(prefix):]))
            return
        self._place(entry)

    def _place(self, entry: Entry) -> None:
        parent = PurePosixPath(entry.path).parent
        while str(parent) != ".":
            key = str(parent)
            if key not in self.entries:
                self.entries[key] = directory(key)
            parent = parent.parent
        self.entries[entry.path] = entry

    def extend(self, entries: list[Entry]) -> None:
        for e in entries:
            self.add(e)

    def sorted(self) -> list[Entry]:
        """Stable order (parents before children) so identical input gives identical archives."""
        return [self.entries[k] for k in sorted(self.entries, key=lambda p: PurePosixPath(p).parts)]


def fingerprint(entries: list[Entry]) -> list[object]:
    """Everything that determines the written bytes, cheaply: host files by identity, not content."""
    out: list[object] = []
    for e in entries:
        src: object = None
        if e.source is not None:
            from bootlab.cache import file_identity

            src = file_identity(e.source)
        elif e.data is not None:
            import hashlib

            src = hashlib.sha256(e.data).hexdigest()
        out.append([e.path, e.kind.value, e.mode, e.uid, e.gid, e.mtime, src, e.target, list(e.rdev),
                    e.hardlink_of])
    return out
