"""The ELF dependency closure: a program plus its interpreter and every library it needs.

An initramfs that misses one library fails with "Failed to execute /init (error -2)", so the set must
be complete. It is found by parsing ELF headers, never by running the program (or `ldd`), so that it
works for another architecture's root directory (a "sysroot") as well as for the host.

Libraries are searched the way glibc's ld.so does, and every symlink met on the way is kept as a
symlink entry, so the guest resolves the same names the same way.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.common.utils import struct_parse
from elftools.elf.elffile import ELFFile

from bootlab.errors import BadInput
from bootlab.image.entry import Entry, host_file, path_parts, symlink

ELF_MAGIC = b"\x7fELF"
MAX_SYMLINKS = 40  # like the kernel's limit on links followed in one lookup
MAX_SHEBANG_DEPTH = 4  # the kernel's limit on nested #! interpreters
MAX_STRING = 65536  # no sane DT_NEEDED/RPATH string is longer
# What pyelftools raises on corrupt input: several types, and OSError for a seek to a bad offset.
MALFORMED = (ELFError, ValueError, KeyError, IndexError, OverflowError, EOFError, OSError)


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader needs from one ELF file."""

    machine: str  # e_machine, e.g. "EM_X86_64", "EM_AARCH64"
    elfclass: int  # 32 or 64
    interp: str | None  # PT_INTERP, e.g. "/lib64/ld-linux-x86-64.so.2"
    needed: list[str]  # DT_NEEDED in order
    rpath: list[str]  # DT_RPATH entries (split on ':')
    runpath: list[str]  # DT_RUNPATH entries
    soname: str | None


# ---------------------------------------------------------------------------------------------
# Reading one file: ELF header, program headers and the dynamic segment only (fast, and what
# ld.so itself reads; section headers may be stripped or garbage without harm).


def is_dynamic(path: Path) -> bool:
    """Needs an interpreter or libraries: a program whose ELF closure must come along.
    An unreadable file is not one (its own read fails later, where it is used)."""
    if not os.access(path, os.R_OK):
        return False
    info = read_elf(path)
    return info is not None and (info.interp is not None or bool(info.needed))


def read_elf(path: Path) -> ElfInfo | None:
    """The loader-relevant facts of `path`; None if it is not ELF (or not a regular file: opening
    a fifo would wait for a writer), BadInput if it is broken ELF."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        f = open(path, "rb")
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}") from None
    with f:
        if f.read(4) != ELF_MAGIC:
            return None
        try:
            return _parse(f)
        except MALFORMED as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise BadInput(f"{path}: malformed ELF: {reason}") from None
        except BadInput as e:
            raise BadInput(f"{path}: malformed ELF: {e}") from None


def _parse(f: BinaryIO) -> ElfInfo:
    elf = ELFFile(f)
    size = elf.stream_len
    hdr = elf.header
    phdr_size = elf.structs.Elf_Phdr.sizeof()
    count = elf.num_segments()
    if count and hdr["e_phentsize"] != phdr_size:
        raise BadInput(f"program header size {hdr['e_phentsize']}, expected {phdr_size}")
    if hdr["e_phoff"] + count * phdr_size > size:
        raise BadInput("truncated (program headers past end of file)")
    phdrs = [struct_parse(elf.structs.Elf_Phdr, f, hdr["e_phoff"] + i * phdr_size) for i in range(count)]

    interp = None
    for ph in phdrs:
        if ph["p_type"] == "PT_INTERP":
            interp = _cstring(_read_at(f, ph["p_offset"], min(ph["p_filesz"], 4096), size))
            break

    dyn: dict[str, list[int]] = {}
    for ph in phdrs:
        if ph["p_type"] == "PT_DYNAMIC":
            dyn = _dynamic_tags(elf, f, ph["p_offset"], ph["p_filesz"], size)
            break

    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname = None
    if any(dyn.get(t) for t in ("DT_NEEDED", "DT_RPATH", "DT_RUNPATH", "DT_SONAME")):
        if not dyn.get("DT_STRTAB"):
            raise BadInput("dynamic section without DT_STRTAB")
        strtab = _file_offset(phdrs, dyn["DT_STRTAB"][0])
        strsz = dyn.get("DT_STRSZ", [size])[0]

        def string(index: int) -> str:
            if index >= strsz:
                raise BadInput(f"string index {index} past DT_STRSZ {strsz}")
            return _cstring(_read_at(f, strtab + index, min(strsz - index, MAX_STRING), size, exact=False))

        needed = [string(i) for i in dyn.get("DT_NEEDED", [])]
        rpath = [d for i in dyn.get("DT_RPATH", []) for d in string(i).split(":")]
        runpath = [d for i in dyn.get("DT_RUNPATH", []) for d in string(i).split(":")]
        soname = string(dyn["DT_SONAME"][0]) if dyn.get("DT_SONAME") else None

    machine = hdr["e_machine"]
    return ElfInfo(machine=machine if isinstance(machine, str) else f"EM_{machine}",
                   elfclass=elf.elfclass, interp=interp or None, needed=needed, rpath=rpath,
                   runpath=runpath, soname=soname)


def _dynamic_tags(elf: ELFFile, f: BinaryIO, offset: int, length: int, size: int) -> dict[str, list[int]]:
    """Tag name -> values, in file order, up to DT_NULL."""
    entry = elf.structs.Elf_Dyn.sizeof()
    if offset + length > size:
        raise BadInput("truncated (dynamic segment past end of file)")
    tags: dict[str, list[int]] = {}
    for i in range(length // entry):
        d = struct_parse(elf.structs.Elf_Dyn, f, offset + i * entry)
        if d["d_tag"] == "DT_NULL":
            break
        tags.setdefault(str(d["d_tag"]), []).append(d["d_val"])
    return tags


def _file_offset(phdrs: list, vaddr: int) -> int:
    """Map a virtual address to a file offset through the PT_LOAD segments, as the loader would."""
    for ph in phdrs:
        if ph["p_type"] == "PT_LOAD" and ph["p_vaddr"] <= vaddr < ph["p_vaddr"] + ph["p_filesz"]:
            return vaddr - ph["p_vaddr"] + ph["p_offset"]
    raise BadInput(f"address {vaddr:#x} is in no loaded segment")


def _read_at(f: BinaryIO, offset: int, length: int, size: int, exact: bool = True) -> bytes:
    if offset > size or (exact and offset + length > size):
        raise BadInput("truncated (data past end of file)")
    f.seek(offset)
    return f.read(length)


def _cstring(data: bytes) -> str:
    end = data.find(b"\0")
    if end < 0:
        raise BadInput("unterminated string")
    return os.fsdecode(data[:end])


# ---------------------------------------------------------------------------------------------
# Paths inside the sysroot: resolved component by component, so no symlink leads out of it.


@dataclass(frozen=True)
class _Found:
    real: str  # the final path, relative to the sysroot, free of symlinks ("" is the root)
    links: tuple[Entry, ...]  # one symlink entry per link traversed on the way


class _Root:
    """The guest's file system as seen from a host directory, with a few caches for speed."""

    def __init__(self, sysroot: Path) -> None:
        self.sysroot = sysroot
        self._walks: dict[str, _Found | None] = {}
        self._infos: dict[str, ElfInfo | None] = {}

    def host(self, real: str) -> Path:
        return self.sysroot / real

    def walk(self, path: str) -> _Found | None:
        """Resolve a guest path like the kernel would inside a chroot; None if it does not exist."""
        if path not in self._walks:
            self._walks[path] = self._walk(path)
        return self._walks[path]

    def _walk(self, path: str) -> _Found | None:
        todo = deque(path_parts(path))
        done: list[str] = []
        links: list[Entry] = []
        hops = 0
        while todo:
            name = todo.popleft()
            if name == "..":  # `done` has no symlinks, so this is the physical parent
                if done:
                    done.pop()
                continue
            rel = "/".join([*done, name])
            try:
                st = os.lstat(self.host(rel))
            except (FileNotFoundError, NotADirectoryError):
                return None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise BadInput(f"{path}: too many levels of symbolic links in {self.sysroot}")
                target = os.readlink(self.host(rel))
                links.append(symlink(rel, target))
                if target.startswith("/"):  # absolute targets mean the guest's root
                    done = []
                todo.extendleft(reversed(path_parts(target)))
            elif todo and not stat.S_ISDIR(st.st_mode):
                return None
            else:
                done.append(name)
        return _Found("/".join(done), tuple(links))

    def regular(self, path: str) -> _Found | None:
        found = self.walk(path)
        if found is None or not found.real or not self.host(found.real).is_file():
            return None
        return found

    def info(self, real: str) -> ElfInfo | None:
        if real not in self._infos:
            self._infos[real] = read_elf(self.host(real))
        return self._infos[real]

    def read_text(self, path: str) -> str | None:
        found = self.regular(path)
        if found is None:
            return None
        return self.host(found.real).read_text(errors="replace")

    def glob(self, pattern: str) -> list[str]:
        """Guest paths matching a glob whose wildcards are in the last component (as ld.so.conf uses)."""
        parent, name = os.path.split(pattern)
        found = self.walk(parent)
        if found is None or not self.host(found.real).is_dir():
            return []
        names = sorted(n for n in os.listdir(self.host(found.real)) if fnmatch.fnmatchcase(n, name))
        return [f"{parent.rstrip('/')}/{n}" for n in names]


def _guest(real: str) -> str:
    return "/" + real


# ---------------------------------------------------------------------------------------------
# The search path of ld.so, by architecture.


@dataclass(frozen=True)
class _Arch:
    triplets: tuple[str, ...]  # Debian multiarch directory names, most likely first
    platform: str | None  # AT_PLATFORM, the value of $PLATFORM (None: unknown, skip such entries)


_ARCHES: dict[tuple[str, int], _Arch] = {
    ("EM_X86_64", 64): _Arch(("x86_64-linux-gnu",), "x86_64"),
    ("EM_X86_64", 32): _Arch(("x86_64-linux-gnux32",), "x86_64"),
    ("EM_386", 32): _Arch(("i386-linux-gnu",), "i686"),
    ("EM_AARCH64", 64): _Arch(("aarch64-linux-gnu",), "aarch64"),
    ("EM_ARM", 32): _Arch(("arm-linux-gnueabihf", "arm-linux-gnueabi"), None),
    ("EM_RISCV", 64): _Arch(("riscv64-linux-gnu",), None),
    ("EM_PPC64", 64): _Arch(("powerpc64le-linux-gnu", "powerpc64-linux-gnu"), None),
    ("EM_PPC", 32): _Arch(("powerpc-linux-gnu",), None),
    ("EM_S390", 64): _Arch(("s390x-linux-gnu",), None),
    ("EM_MIPS", 64): _Arch(("mips64el-linux-gnuabi64", "mips64-linux-gnuabi64"), None),
    ("EM_MIPS", 32): _Arch(("mipsel-linux-gnu", "mips-linux-gnu"), None),
    ("EM_LOONGARCH", 64): _Arch(("loongarch64-linux-gnu",), None),
}


def _arch(info: ElfInfo) -> _Arch:
    return _ARCHES.get((info.machine, info.elfclass), _Arch((), None))


def default_dirs(info: ElfInfo) -> list[str]:
    """ld.so's built-in directories: Debian's multiarch ones first, then the classic ones."""
    dirs = [f"{top}/{t}" for t in _arch(info).triplets for top in ("/lib", "/usr/lib")]
    dirs += ["/lib", "/usr/lib"]
    if info.elfclass == 64:
        dirs += ["/lib64", "/usr/lib64"]
    return dirs


def _expand(entry: str, origin: str, info: ElfInfo) -> list[str]:
    """$ORIGIN, $LIB and $PLATFORM in one RPATH/RUNPATH entry; several guesses where unsure.

    $LIB is "lib/<triplet>" on Debian and "lib64"/"lib" elsewhere; an entry that needs an unknown
    $PLATFORM, or stays relative (relative to the working directory, unknowable), is dropped.
    """
    arch = _arch(info)
    subs = {
        "ORIGIN": [origin],
        "LIB": [f"lib/{t}" for t in arch.triplets] + ["lib64" if info.elfclass == 64 else "lib"],
        "PLATFORM": [arch.platform] if arch.platform else [],
    }
    results = [entry]
    for name, values in subs.items():
        expanded = []
        for r in results:
            if f"${name}" in r or f"${{{name}}}" in r:
                expanded += [r.replace(f"${{{name}}}", v).replace(f"${name}", v) for v in values]
            else:
                expanded.append(r)
        results = expanded
    return [r for r in results if r.startswith("/")]


def ld_so_conf_dirs(root: _Root, conf: str = "/etc/ld.so.conf", depth: int = 0) -> list[str]:
    """The directories ldconfig would put in ld.so.cache, in order, `include` globs followed."""
    text = root.read_text(conf) if depth < 8 else None
    dirs: list[str] = []
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("include") and line[7:8].isspace():
            for pattern in line[8:].split():
                if not pattern.startswith("/"):
                    pattern = f"{os.path.dirname(conf)}/{pattern}"
                for path in root.glob(pattern):
                    dirs += ld_so_conf_dirs(root, path, depth + 1)
        elif line and not line.startswith("hwcap"):
            dirs.append(line.split("=", 1)[0].rstrip("/") or "/")
    return dirs


# ---------------------------------------------------------------------------------------------
# The closure.


@dataclass
class _Obj:
    """One loaded ELF object, as ld.so's link map knows it."""

    path: str  # guest path it was found by (not resolved: $ORIGIN of a library uses it)
    real: str  # resolved path, relative to the sysroot
    info: ElfInfo
    loader: _Obj | None  # the object whose DT_NEEDED brought this one in
    origin: str  # $ORIGIN


@dataclass
class _Closure:
    root: _Root
    entries: dict[str, Entry] = field(default_factory=dict)
    conf_dirs: list[str] | None = None
    conf_only: set[str] = field(default_factory=set)  # ld.so.conf dirs ld.so finds only via its cache
    wants_cache: bool = False  # a library came from an ld.so.conf directory only

    def add(self, found: _Found) -> None:
        for link in found.links:
            self.entries.setdefault(link.path, link)
        if found.real not in self.entries:
            self.entries[found.real] = host_file(found.real, self.root.host(found.real))

    def program(self, path: str, depth: int = 0, *, itself: bool = True) -> None:
        """A file as the kernel would execute it: ELF with its libraries, or a #! script.
        itself=False: only what it needs (the caller puts the file somewhere of its own)."""
        found = self.root.regular(path)
        if found is None:
            where = "" if self.root.sysroot == Path("/") else f" in {self.root.sysroot}"
            raise BadInput(f"{path}: no such file{where}")
        if itself:
            self.add(found)
        info = self.root.info(found.real)
        if info is not None:
            self.elf(path, found, info)
        else:
            self.shebang(path, found, depth)

    def shebang(self, path: str, found: _Found, depth: int) -> None:
        with open(self.root.host(found.real), "rb") as f:
            head = f.read(256)
        if not head.startswith(b"#!"):
            return
        words = os.fsdecode(head[2:].split(b"\n", 1)[0]).split()
        if not words or not words[0].startswith("/"):
            return
        if depth >= MAX_SHEBANG_DEPTH:
            raise BadInput(f"{path}: too many levels of #! interpreters")
        if self.root.regular(words[0]) is None:
            raise BadInput(f"{path}: its #! interpreter {words[0]} does not exist")
        self.program(words[0], depth + 1)

    def elf(self, path: str, found: _Found, info: ElfInfo) -> None:
        """BFS over DT_NEEDED from one executable, names matched like ld.so (needed name, soname)."""
        main = _Obj(path, found.real, info, None, os.path.dirname(_guest(found.real)))
        loaded: dict[str, _Obj] = {}
        if info.interp:
            interp = self.root.regular(info.interp)
            if interp is None:
                raise BadInput(f"{path}: its interpreter {info.interp} does not exist")
            self.add(interp)
            interp_info = self.root.info(interp.real)
            if interp_info is not None and interp_info.soname:
                loaded[interp_info.soname] = _Obj(info.interp, interp.real, interp_info, None, "")
        seen = {found.real}
        queue = deque([main])
        while queue:
            obj = queue.popleft()
            for name in obj.info.needed:
                if name in loaded:
                    continue
                dep = self.find(name, obj)
                loaded[name] = dep
                if dep.info.soname:
                    loaded.setdefault(dep.info.soname, dep)
                if dep.real not in seen:
                    seen.add(dep.real)
                    queue.append(dep)

    def find(self, name: str, obj: _Obj) -> _Obj:
        """Search for one DT_NEEDED name of `obj` in ld.so's order (LD_LIBRARY_PATH ignored)."""
        if "/" in name:  # a path: used as is (a relative one is taken from the guest's root)
            dirs: list[str] = []
            candidates = [("", p) for p in _expand(name if name[0] in "/$" else f"/{name}",
                                                   obj.origin, obj.info)]
        else:
            dirs = self.search_dirs(obj)
            candidates = [(d, f"{d.rstrip('/')}/{name}") for d in dirs]
        skipped: list[str] = []
        for d, path in candidates:
            found = self.root.regular(path)
            info = self._library_info(found, skipped, path) if found else None
            if found is None or info is None:
                continue
            if (info.machine, info.elfclass) != (obj.info.machine, obj.info.elfclass):
                skipped.append(f"{path} ({info.machine}, {info.elfclass}-bit)")
                continue
            if d in self.conf_only:
                self.wants_cache = True
            self.add(found)
            return _Obj(path, found.real, info, obj, os.path.dirname(path))
        searched = ":".join(dirs) or name
        where = "" if self.root.sysroot == Path("/") else f" under {self.root.sysroot}"
        note = f"; skipped {', '.join(skipped)}" if skipped else ""
        raise BadInput(f"library {name} needed by {obj.path} not found in {searched}{where}{note}")

    def _library_info(self, found: _Found, skipped: list[str], path: str) -> ElfInfo | None:
        try:
            info = self.root.info(found.real)
        except BadInput as e:
            skipped.append(str(e))
            return None
        if info is None:
            skipped.append(f"{path} is not ELF")
        return info

    def search_dirs(self, obj: _Obj) -> list[str]:
        dirs: list[str] = []
        if not obj.info.runpath:  # DT_RUNPATH, even empty, disables DT_RPATH
            chain: _Obj | None = obj
            while chain is not None:  # RPATH of the object and of its loaders, up to the program
                if not chain.info.runpath:
                    dirs += [x for e in chain.info.rpath for x in _expand(e, chain.origin, chain.info)]
                chain = chain.loader
        dirs += [x for e in obj.info.runpath for x in _expand(e, obj.origin, obj.info)]
        dirs += self._conf() + default_dirs(obj.info)
        return list(dict.fromkeys(dirs))

    def _conf(self) -> list[str]:
        if self.conf_dirs is None:
            self.conf_dirs = ld_so_conf_dirs(self.root)
            builtin = {"/lib", "/usr/lib", "/lib64", "/usr/lib64"} | {
                f"{top}/{t}" for a in _ARCHES.values() for t in a.triplets for top in ("/lib", "/usr/lib")}
            self.conf_only = set(self.conf_dirs) - builtin
        return self.conf_dirs


def closure(files: list[str], sysroot: Path = Path("/"), *, themselves: bool = True) -> list[Entry]:
    """Entries for `files` (guest paths inside `sysroot`), their interpreters and libraries;
    with themselves=False, for the interpreters and libraries only.

    Each symlink on the way becomes a symlink entry and each final file a file entry, so the guest
    sees the same names. When a library was found only through ld.so.conf, /etc/ld.so.cache comes
    too: without it the guest's loader would not look there.
    """
    c = _Closure(_Root(Path(sysroot)))
    for f in files:
        c.program(f if f.startswith("/") else f"/{f}", itself=themselves)
    if c.wants_cache:
        cache = c.root.regular("/etc/ld.so.cache")
        if cache is not None:
            c.add(cache)
    return [c.entries[p] for p in sorted(c.entries)]
