"""The TOML spec of an initramfs (or, later, a rootfs): what goes in, as one list of entries.

    busybox = true                  # busybox-static and its applet links
    init = '''#!/bin/sh
    mount -t proc proc /proc
    exec sh'''
    modules = ["ext4"]              # with dependencies, from the kernel's modules.dep
    kernel = "/boot/vmlinuz-6.1.0-56-amd64"
    binaries = ["/usr/bin/strace"]  # with their ELF closure

    [[file]]
    path = "/etc/hostname"
    content = "lab\\n"

    [[device]]
    path = "/dev/console"
    type = "char"
    major = 5
    minor = 1

The README documents every key. Relative host paths are relative to the spec file.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bootlab.errors import BadInput
from bootlab.image import busybox as bb
from bootlab.image.entry import Entry, Kind, Tree, directory, file, host_file, path_parts, skeleton, symlink

TOP_KEYS = {"compress", "busybox", "init", "init_file", "modules", "kernel", "release",
            "modules_dir", "binaries", "sysroot", "dir", "file", "tree", "symlink", "hardlink",
            "device", "fifo"}
COMMON = {"path", "mode", "uid", "gid", "mtime"}
TABLE_KEYS = {
    "dir": COMMON,
    "file": COMMON | {"content", "source"},
    "tree": {"source", "path", "uid", "gid"},
    "symlink": {"path", "target", "uid", "gid", "mtime"},
    "hardlink": {"path", "target"},
    "device": COMMON | {"type", "major", "minor"},
    "fifo": COMMON,
}


@dataclass
class Spec:
    """A parsed spec: entries to write plus what the builder still has to resolve."""

    source: Path
    entries: list[Entry] = field(default_factory=list)
    compress: str | None = None
    modules: list[str] = field(default_factory=list)
    kernel: Path | None = None
    release: str | None = None
    modules_dir: Path | None = None
    binaries: list[str] = field(default_factory=list)
    sysroot: Path = Path("/")
    busybox: Path | None = None


def _where(kind: str, i: int) -> str:
    return f"[[{kind}]] #{i + 1}"


def _mode(value: Any, where: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            raise BadInput(f"{where}: mode {value!r} is not octal (write 0o755 or \"0755\")") from None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 0o7777:
        raise BadInput(f"{where}: mode {value!r} is out of range")
    return value


def _int(table: dict[str, Any], key: str, where: str, default: int = 0, limit: int = 2**32 - 1) -> int:
    v = table.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
        raise BadInput(f"{where}: {key} must be a whole number from 0 to {limit}, not {v!r}")
    return v


def _guest_path(value: Any, where: str, *, root: bool = False) -> str:
    """A guest path as the tree names it ("etc/hostname"); "" for "/" itself where `root` allows it."""
    parts = path_parts(value) if isinstance(value, str) else []
    if not parts and not (root and isinstance(value, str)):
        raise BadInput(f"{where}: path must be a non-empty string like \"/etc/hostname\"")
    if ".." in parts:
        raise BadInput(f"{where}: path {value!r} may not contain '..'")
    if "\0" in value:
        raise BadInput(f"{where}: path {value!r} contains a NUL byte")
    return "/".join(parts)


def _host(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise BadInput(f"{where}: source must be a host path")
    p = Path(os.path.expanduser(value))
    p = p if p.is_absolute() else base / p
    if not p.exists() and not p.is_symlink():
        raise BadInput(f"{where}: {value}: no such file or directory")
    return p


def load(path: Path) -> Spec:
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise BadInput(f"{path}: no such spec file") from None
    except (UnicodeDecodeError, IsADirectoryError) as e:
        raise BadInput(f"{path}: not a TOML text file ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{path}: invalid TOML: {e}") from None
    return parse(doc, path)


def parse(doc: dict[str, Any], path: Path, *, defaults: bool = True) -> Spec:
    """`defaults` adds the directories and /dev nodes every bootable initramfs wants; an early
    (microcode) segment wants none of them."""
    base = path.parent
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise BadInput(f"{path}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(TOP_KEYS))})")
    spec = Spec(source=path)
    tree = Tree()
    if defaults:
        tree.extend(skeleton())

    if not isinstance(doc.get("busybox", False), (bool, str)):
        raise BadInput(f"{path}: busybox must be true, false or the path of a static busybox")
    if doc.get("busybox"):
        bb_value = doc["busybox"]
        spec.busybox = bb.find_busybox(_host(base, bb_value, "busybox") if isinstance(bb_value, str) else None)
        tree.extend(bb.entries(spec.busybox))
    if "init" in doc and "init_file" in doc:
        raise BadInput(f"{path}: give init (script text) or init_file (a host file), not both")
    if "init" in doc:
        if not isinstance(doc["init"], str):
            raise BadInput(f"{path}: init must be the text of a script")
        tree.add(file("init", doc["init"].encode(), 0o755))
    elif "init_file" in doc:
        init_file = _host(base, doc["init_file"], "init_file")
        if not init_file.is_file():  # (a fifo would hang the build, /dev/zero fill the disk)
            raise BadInput(f"{path}: init_file {init_file} is not a regular file")
        tree.add(host_file("init", init_file, 0o755))

    for key in ("modules", "binaries"):
        v = doc.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise BadInput(f"{path}: {key} must be a list of strings")
    spec.modules = list(doc.get("modules", []))
    spec.binaries = list(doc.get("binaries", []))
    if "kernel" in doc:
        spec.kernel = _host(base, doc["kernel"], "kernel")
    for key in ("release", "compress"):
        if key in doc and (not isinstance(doc[key], str) or not doc[key]):
            raise BadInput(f"{path}: {key} must be a non-empty string")
    if "release" in doc:
        spec.release = doc["release"]
    if "modules_dir" in doc:
        spec.modules_dir = _host(base, doc["modules_dir"], "modules_dir")
    if "sysroot" in doc:
        spec.sysroot = _host(base, doc["sysroot"], "sysroot")
    if "compress" in doc:
        spec.compress = doc["compress"]

    for kind, allowed in TABLE_KEYS.items():
        tables = doc.get(kind, [])
        if not isinstance(tables, list):
            raise BadInput(f"{path}: {kind} must be written [[{kind}]] (an array of tables)")
        for i, t in enumerate(tables):
            where = f"{path}: {_where(kind, i)}"
            if not isinstance(t, dict):
                raise BadInput(f"{where}: must be a table (keys under a [[{kind}]] line), not {t!r}")
            extra = set(t) - allowed
            if extra:
                raise BadInput(f"{where}: unknown key {sorted(extra)[0]!r} (allowed: {', '.join(sorted(allowed))})")
            for e in _table_entries(kind, t, where, base):
                tree.add(e)
    spec.entries = tree.sorted()
    return spec


def _table_entries(kind: str, t: dict[str, Any], where: str, base: Path) -> list[Entry]:
    owner = {"uid": _int(t, "uid", where), "gid": _int(t, "gid", where), "mtime": _int(t, "mtime", where)}
    if kind == "tree":
        src = _host(base, t.get("source"), where)
        if not src.is_dir():
            raise BadInput(f"{where}: {src} is not a directory")
        dest = _guest_path(t.get("path", "/"), where, root=True)
        return [dataclasses.replace(e, uid=owner["uid"], gid=owner["gid"]) for e in host_tree(src, dest)]
    path = _guest_path(t.get("path"), where)
    if kind == "dir":
        return [Entry(path, Kind.DIR, _mode(t.get("mode"), where, 0o755), **owner)]
    if kind == "file":
        if ("content" in t) == ("source" in t):
            raise BadInput(f"{where}: give exactly one of content (text) or source (a host file)")
        if "content" in t:
            if not isinstance(t["content"], str):
                raise BadInput(f"{where}: content must be text")
            return [Entry(path, Kind.FILE, _mode(t.get("mode"), where, 0o644), data=t["content"].encode(), **owner)]
        src = _host(base, t["source"], where)
        if not src.is_file():
            raise BadInput(f"{where}: {src} is not a regular file")
        mode = _mode(t.get("mode"), where, stat.S_IMODE(src.stat().st_mode))
        return [Entry(path, Kind.FILE, mode, source=src, **owner)]
    if kind == "symlink":
        if not isinstance(t.get("target"), str) or not t["target"] or "\0" in t["target"]:
            raise BadInput(f"{where}: target must be a non-empty string (without NUL bytes)")
        return [Entry(path, Kind.SYMLINK, 0o777, target=t["target"], **owner)]
    if kind == "hardlink":
        target = _guest_path(t.get("target"), where)
        if target == path:
            raise BadInput(f"{where}: a hard link to itself")
        return [Entry(path, Kind.FILE, 0o644, hardlink_of=target)]
    if kind == "device":
        dtype = t.get("type")
        if dtype not in ("char", "block"):
            raise BadInput(f"{where}: type must be \"char\" or \"block\"")
        rdev = (_int(t, "major", where, limit=4095), _int(t, "minor", where, limit=2**20 - 1))
        return [Entry(path, Kind.CHAR if dtype == "char" else Kind.BLOCK,
                      _mode(t.get("mode"), where, 0o600), rdev=rdev, **owner)]
    return [Entry(path, Kind.FIFO, _mode(t.get("mode"), where, 0o644), **owner)]  # fifo


def host_tree(src: Path, dest: str, *, keep_owners: bool = False) -> list[Entry]:
    """A host directory as entries under `dest`; owners become root unless keep_owners (a user's
    files would otherwise carry their uid into the guest). Files hard-linked to each other stay
    one inode: the later names are links to the first."""
    out: list[Entry] = []
    first_name: dict[tuple[int, int], str] = {}  # (st_dev, st_ino) of a file with links -> its guest path
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, src)
        for name in sorted(dirnames) + sorted(filenames):
            host = Path(dirpath) / name
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            guest = f"{dest}/{rel}" if dest else rel
            try:
                st = host.lstat()
            except FileNotFoundError:  # gone since the directory was listed (/proc, a build dir)
                continue
            mode = stat.S_IMODE(st.st_mode)
            before = len(out)
            if stat.S_ISLNK(st.st_mode):
                out.append(symlink(guest, os.readlink(host)))
            elif stat.S_ISDIR(st.st_mode):
                out.append(directory(guest, mode))
            elif stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in first_name:
                out.append(Entry(guest, Kind.FILE, mode, hardlink_of=first_name[st.st_dev, st.st_ino]))
            elif stat.S_ISREG(st.st_mode):
                out.append(Entry(guest, Kind.FILE, mode, source=host))
                if st.st_nlink > 1:
                    first_name[st.st_dev, st.st_ino] = guest
            elif stat.S_ISFIFO(st.st_mode):
                out.append(Entry(guest, Kind.FIFO, mode))
            elif stat.S_ISSOCK(st.st_mode):
                out.append(Entry(guest, Kind.SOCKET, mode))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                kind = Kind.CHAR if stat.S_ISCHR(st.st_mode) else Kind.BLOCK
                out.append(Entry(guest, kind, mode, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))))
            if keep_owners and len(out) > before:
                out[-1] = dataclasses.replace(out[-1], uid=st.st_uid, gid=st.st_gid, mtime=int(st.st_mtime))
    return out
