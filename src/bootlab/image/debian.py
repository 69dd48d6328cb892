"""Debian root filesystems as ext4 images, without root where possible.

mmdebstrap does the Debian part: it picks the best mode it can (root as root; unshare, fakechroot
or fakeroot otherwise), takes the mirror from its own default (no host name in bootlab), and
writes the finished tree as a tarball to stdout. A tarball carries exactly what an unprivileged
user cannot make on disk (owners, device nodes, setuid bits), so it is read straight into Entry
values and handed to write_ext4: no extraction, no chown, no mount.

The tarball is the cache: keyed by what was asked for (suite, variant, packages, architecture),
a second identical request downloads nothing and only writes the image again. It does not notice
that the archive moved on: a suite's newest packages come with a new key (another package list)
or by removing the cached file.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bootlab import cache
from bootlab.errors import BadInput, BootlabError
from bootlab.image.entry import Entry, Kind, Tree
from bootlab.image.ext4 import write_ext4

FORMAT = "v1"  # bump when the cached tarball's meaning changes
VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase", "buildd",
            "important", "debootstrap", "standard")
INIT_PACKAGES = ("systemd-sysv", "sysvinit-core")  # packages that provide /sbin/init

_SUITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ARCH = re.compile(r"[a-z0-9][a-z0-9-]*")
# a package name, optionally with :arch, =version or /release, as apt-get install takes it
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?([=/][A-Za-z0-9.+~:_-]+)?")


@dataclass(frozen=True)
class Request:
    """What determines the root filesystem's content; also the cache key."""

    suite: str
    variant: str = "minbase"
    include: tuple[str, ...] = ()
    arch: str | None = None

    def __post_init__(self) -> None:
        if not _SUITE.fullmatch(self.suite):
            raise BadInput(f"bad suite {self.suite!r}: give a Debian suite name such as bookworm")
        if self.variant not in VARIANTS:
            raise BadInput(f"unknown variant {self.variant!r}: use one of {', '.join(VARIANTS)}")
        for p in self.include:
            if not _PACKAGE.fullmatch(p):
                raise BadInput(f"bad package name {p!r} in --include")
        if self.arch is not None and not _ARCH.fullmatch(self.arch):
            raise BadInput(f"bad architecture {self.arch!r}: give a Debian one such as amd64 or arm64")

    def key(self) -> str:
        return cache.key("debian-rootfs", FORMAT, self.suite, self.variant, sorted(set(self.include)),
                         self.arch)

    def argv(self, mmdebstrap: str) -> list[str]:
        """The mmdebstrap command writing the tarball to stdout. No mirror: its default."""
        argv = [mmdebstrap, f"--variant={self.variant}", "--mode=auto", "--format=tar"]
        if self.include:
            argv.append("--include=" + ",".join(sorted(set(self.include))))
        if self.arch:
            argv.append(f"--architectures={self.arch}")
        return argv + ["--", self.suite, "-"]

    def wants_init(self) -> bool:
        return any(re.split(r"[:=/]", p)[0] in INIT_PACKAGES for p in self.include)


def debian_rootfs(suite: str, out: Path, *, variant: str = "minbase", include: Iterable[str] = (),
                  size: int | None = None, arch: str | None = None,
                  progress: Callable[[str], None] = print) -> Path:
    """Build (or take from the cache) a Debian `suite` tree and write it as an ext4 image at
    `out`: `size` bytes, or None to fit. Returns `out`."""
    req = Request(suite, variant, tuple(include), arch)
    tarball = cached_tarball(req, progress)
    progress(f"reading {tarball.name}")
    entries = read_tarball(tarball, progress)
    if req.wants_init():
        check_init(entries)
    progress(f"writing {out}")
    write_ext4(entries, Path(out), size=size)
    progress(f"wrote {out} ({Path(out).stat().st_size >> 20} MiB)")
    return Path(out)


def cached_tarball(req: Request, progress: Callable[[str], None]) -> Path:
    """The tarball for `req`: from the cache, or made once by mmdebstrap."""
    dest = cache.root() / "debian" / f"{req.key()}.tar"
    if dest.exists():
        progress(f"using the cached {req.suite} {req.variant} tree ({dest})")
        return dest
    tool = _mmdebstrap_path()
    if tool is None:
        raise BadInput("mmdebstrap not found: install it (apt-get install mmdebstrap)")
    progress(f"running mmdebstrap for {req.suite} ({req.variant}"
             + (", " + ",".join(req.include) if req.include else "") + ")")
    return cache.atomic_write(dest, lambda tmp: _mmdebstrap(req, tool, tmp, progress))


def _mmdebstrap_path() -> str | None:
    return shutil.which("mmdebstrap")


def _mmdebstrap(req: Request, tool: str, tmp: Path, progress: Callable[[str], None]) -> None:
    """Run mmdebstrap with its tarball going to `tmp` and its log lines to `progress`;
    a failure raises with the line that says why."""
    errors: list[str] = []
    with open(tmp, "wb") as sink:
        proc = subprocess.Popen(req.argv(tool), stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.PIPE)
        try:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    progress(line)
                if line.startswith("E: "):
                    errors.append(line[3:].strip())
            status = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: mmdebstrap removes its tempdir on SIGTERM
                proc.terminate()
                proc.wait()
    if status != 0:
        raise _failure(req, errors, status)


def _failure(req: Request, errors: list[str], status: int) -> BootlabError:
    """One line from mmdebstrap's errors: the first is the cause, later ones are its wrappers."""
    if any("does not have a Release file" in e for e in errors):
        return BadInput(f"unknown suite {req.suite!r}: the mirror has no Release file for it")
    if errors:
        cls = BadInput if errors[0].startswith("Unable to locate package") else BootlabError
        return cls(f"mmdebstrap: {errors[0]}")
    return BootlabError(f"mmdebstrap failed (exit status {status})")


def _relative(name: str) -> str:
    """A tar member name as an entry path: './usr/bin' -> 'usr/bin', './' -> ''."""
    path = posixpath.normpath("/" + name).lstrip("/")
    return "" if path == "." else path


def read_tarball(tarball: Path, progress: Callable[[str], None] = print) -> list[Entry]:
    """Every member of a tarball as an Entry, with its exact owner, mode, time and device
    numbers; file data in memory (a minbase tree is ~170 MB). Extended attributes (file
    capabilities) have no place in Entry: they are dropped, and said so."""
    entries: list[Entry] = []
    dropped = 0
    with tarfile.open(tarball, "r|") as tar:
        for m in tar:
            path = _relative(m.name)
            if not path:
                continue  # the root directory: write_ext4 makes it
            dropped += any(k.startswith("SCHILY.xattr.") for k in m.pax_headers)
            common = {"mode": m.mode & 0o7777, "uid": m.uid, "gid": m.gid, "mtime": int(m.mtime)}
            if m.isdir():
                entries.append(Entry(path, Kind.DIR, **common))
            elif m.isreg():
                f = tar.extractfile(m)
                entries.append(Entry(path, Kind.FILE, data=f.read() if f else b"", **common))
            elif m.issym():
                entries.append(Entry(path, Kind.SYMLINK, target=m.linkname, **common))
            elif m.islnk():
                entries.append(Entry(path, Kind.FILE, hardlink_of=_relative(m.linkname), **common))
            elif m.ischr() or m.isblk():
                kind = Kind.CHAR if m.ischr() else Kind.BLOCK
                entries.append(Entry(path, kind, rdev=(m.devmajor, m.devminor), **common))
            elif m.isfifo():
                entries.append(Entry(path, Kind.FIFO, **common))
            else:
                raise BootlabError(f"{tarball}: member {m.name!r} has an unknown type {m.type!r}")
    if dropped:
        progress(f"note: {dropped} files carry extended attributes (e.g. capabilities); "
                 "they are not kept in the image")
    return entries


def check_init(entries: list[Entry]) -> None:
    """An init package was asked for: make sure /sbin/init is there (through merged-/usr links)."""
    tree = Tree({e.path: e for e in entries})
    path = tree.resolve("sbin/init")
    if path not in tree.entries:
        raise BootlabError("the tree has no /sbin/init although an init package was included")
