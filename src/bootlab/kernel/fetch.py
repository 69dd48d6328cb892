"""Debian kernels and static busyboxes of any architecture, fetched with apt, unpacked, not installed.

`apt-get download` fetches a .deb exactly as apt would (the host's mirrors, signatures and proxy
settings), and `dpkg-deb -x` unpacks it into a private tree in the cache. That gives a real,
distribution-tested kernel with its modules for another architecture (arm64 on an x86 host)
without a cross build and without touching the host's /boot or /lib/modules.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bootlab import cache
from bootlab.errors import BadInput
from bootlab.kernel import image
from bootlab.kernel.find import _version_key
from bootlab.vm import arch as arches

Progress = Callable[[str], None]

_META = ".bootlab-fetch.json"  # written into each unpacked tree: what it is, for cached_kernel()
_SBIN = "/usr/sbin:/sbin"  # depmod and dpkg live here; a non-root PATH may lack it


@dataclass(frozen=True)
class FetchedKernel:
    arch: str  # bootlab arch name, e.g. "aarch64"
    package: str  # e.g. "linux-image-6.1.0-56-arm64"
    version: str  # the package version
    release: str  # uname -r, e.g. "6.1.0-56-arm64"
    kernel: Path  # the vmlinuz inside the unpacked tree
    modules_dir: Path  # .../lib/modules/<release>
    root: Path  # the unpacked tree


# ---------------------------------------------------------------------------------------------
# Running apt and dpkg


def _tool(name: str) -> str:
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_SBIN}")
    if found is None:
        raise BadInput(f"{name} not found: fetching kernels needs Debian's apt, dpkg and kmod")
    return found


def _error_line(output: str) -> str:
    """apt's reason for failing: its last "E:" line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E:")]
    return (errors or lines or ["(no message)"])[-1]


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    """Run a tool quietly; its stdout, or BadInput with `what` and its error line."""
    proc = subprocess.run([_tool(argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"}, check=False)
    if proc.returncode != 0:
        raise BadInput(f"{what}: {_error_line(proc.stderr or proc.stdout)}")
    return proc.stdout


def _run_showing(argv: list[str], what: str, progress: Progress) -> None:
    """Run a slow tool (apt-get update) passing each output line to `progress`."""
    lines: list[str] = []
    with subprocess.Popen([_tool(argv[0]), *argv[1:]], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                          env={**os.environ, "LC_ALL": "C"}) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            progress(line.rstrip())
    if proc.returncode != 0:
        raise BadInput(f"{what}: {_error_line(''.join(lines))}")


def _ensure_apt_arch(debian_arch: str, progress: Progress) -> None:
    """Make apt know `debian_arch`: once per host, `dpkg --add-architecture` then `apt-get update`."""
    if debian_arch == _run(["dpkg", "--print-architecture"], "dpkg").strip():
        return
    if debian_arch in _run(["dpkg", "--print-foreign-architectures"], "dpkg").split():
        return
    commands = f"dpkg --add-architecture {debian_arch} && apt-get update"
    if os.geteuid() != 0:
        raise BadInput(f"apt has no {debian_arch} packages yet; as root, run once: {commands}")
    progress(f"adding the {debian_arch} architecture to apt: {commands}")
    _run(["dpkg", "--add-architecture", debian_arch], "dpkg --add-architecture")
    _run_showing(["apt-get", "update"], "apt-get update", progress)


# ---------------------------------------------------------------------------------------------
# Choosing and downloading the package


@dataclass(frozen=True)
class _Candidate:
    package: str
    version: str
    size: int  # of the .deb, in bytes
    depends: tuple[tuple[str, str | None], ...]  # (package, version it is pinned to by "(= V)")


_DEPENDENCY = re.compile(r"\s*([a-z0-9][a-z0-9.+-]*)(?::\S+)?\s*(?:\(\s*(=|<<|<=|>=|>>)\s*([^)\s]+)\s*\))?")


def _show(package: str, debian_arch: str, version: str | None = None) -> _Candidate:
    """What apt would install for package:arch[=version] (apt-cache reads local lists only)."""
    spec = f"{package}:{debian_arch}" + (f"={version}" if version else "")
    proc = subprocess.run([_tool("apt-cache"), "show", "--no-all-versions", spec],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "LC_ALL": "C"}, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BadInput(f"no package {spec!r} in apt's lists (a typo, or the lists need `apt-get update`)")
    fields: dict[str, str] = {}
    for line in proc.stdout.split("\n\n")[0].splitlines():
        name, sep, value = line.partition(":")
        if sep and not line[0].isspace():
            fields[name] = value.strip()
    depends = []
    for alt in re.split(r"[,|]", fields.get("Depends", "")):
        if m := _DEPENDENCY.match(alt):
            depends.append((m[1], m[3] if m[2] == "=" else None))
    return _Candidate(fields.get("Package", package), fields["Version"],
                      int(fields.get("Size", "0")), tuple(depends))


def _is_versioned_kernel(package: str) -> bool:
    return re.match(r"linux-image-\d", package) is not None


def _resolve_kernel(package: str, debian_arch: str) -> tuple[str, str]:
    """(package, version) of the real kernel: a metapackage such as linux-image-arm64 has no
    files, but depends on the versioned kernel, pinned with "(= V)" (so one apt-cache call)."""
    cand = _show(package, debian_arch)
    if not _is_versioned_kernel(cand.package):
        for dep, pinned in cand.depends:
            if _is_versioned_kernel(dep):
                return dep, pinned or _show(dep, debian_arch).version
    return cand.package, cand.version


def _download(package: str, version: str, debian_arch: str, into: Path, progress: Progress) -> Path:
    size = _show(package, debian_arch, version).size
    progress(f"downloading {package} {version} ({debian_arch}, {size / 1e6:.0f} MB)")
    if os.geteuid() == 0:
        # apt downloads as the unprivileged _apt user when that user can write the directory.
        try:
            shutil.chown(into, user="_apt")
        except (LookupError, OSError):
            pass
    spec = f"{package}:{debian_arch}={version}"
    _run(["apt-get", "download", "-q", spec], f"apt-get download {spec}", cwd=into)
    debs = sorted(into.glob("*.deb"))
    if len(debs) != 1:
        raise BadInput(f"apt-get download {spec}: expected one .deb, got {len(debs)}")
    return debs[0]


def _fetch_tree(package: str, version: str, debian_arch: str, dest: Path, progress: Progress,
                finish: Callable[[Path], dict[str, str]]) -> dict[str, str]:
    """Download and unpack into `dest` atomically: a temp dir next to it, then a rename.

    `finish(tmp)` checks and completes the unpacked tree and returns its metadata."""
    meta = dest / _META
    if meta.exists():
        return json.loads(meta.read_text())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="bootlab-deb-") as dl:
            deb = _download(package, version, debian_arch, Path(dl), progress)
            progress(f"unpacking {deb.name}")
            _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"dpkg-deb -x {deb.name}")
        info = finish(tmp)
        (tmp / _META).write_text(json.dumps(info, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not meta.exists():  # not a concurrent fetch that finished first
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


# ---------------------------------------------------------------------------------------------
# Kernels


def _finish_kernel(a: arches.Arch, package: str, version: str) -> Callable[[Path], dict[str, str]]:
    def finish(tree: Path) -> dict[str, str]:
        kernels = sorted((tree / "boot").glob("vmlinuz-*"))
        if len(kernels) != 1:
            raise BadInput(f"{package} ({a.debian_arch}) holds {len(kernels)} /boot/vmlinuz-* files, "
                           "not one: not a kernel image package")
        release = image.inspect(kernels[0]).release
        if not release or not (tree / "lib" / "modules" / release).is_dir():
            raise BadInput(f"{package}: its kernel says release {release!r}, "
                           "but the package has no /lib/modules of that name")
        # Debian generates modules.dep in postinst, which we do not run.
        _run(["depmod", "-b", str(tree), release], f"depmod for {package}")
        return {"arch": a.name, "package": package, "version": version, "release": release,
                "kernel": str(kernels[0].relative_to(tree))}
    return finish


def fetch_kernel(arch: str, package: str | None = None, *,
                 progress: Progress = print) -> FetchedKernel:
    """Debian's kernel for `arch` (default: the newest linux-image-<debian arch>), unpacked with
    its modules into the cache. A second call for the same package version downloads nothing."""
    a = arches.get(arch)
    _ensure_apt_arch(a.debian_arch, progress)
    name, version = _resolve_kernel(package or f"linux-image-{a.debian_arch}", a.debian_arch)
    dest = cache.root() / "kernels" / f"{name}_{version}"
    info = _fetch_tree(name, version, a.debian_arch, dest, progress, _finish_kernel(a, name, version))
    return _from_meta(dest, info)


def _from_meta(tree: Path, info: dict[str, str]) -> FetchedKernel:
    return FetchedKernel(arch=info["arch"], package=info["package"], version=info["version"],
                         release=info["release"], kernel=tree / info["kernel"],
                         modules_dir=tree / "lib" / "modules" / info["release"], root=tree)


def cached_kernel(arch: str) -> FetchedKernel | None:
    """The newest kernel already fetched for `arch`, found without apt or network."""
    name = arches.get(arch).name
    found: list[FetchedKernel] = []
    for meta in (cache.root() / "kernels").glob(f"*/{_META}"):
        try:
            info = json.loads(meta.read_text())
            k = _from_meta(meta.parent, info)
        except (OSError, ValueError, KeyError):
            continue
        if k.arch == name and k.kernel.exists():
            found.append(k)
    if not found:
        return None
    return max(found, key=lambda k: (_version_key(k.release), _version_key(k.version)))


# ---------------------------------------------------------------------------------------------
# Busybox


def fetch_busybox(arch: str, *, progress: Progress = print) -> Path:
    """The static busybox of `arch` (Debian's busybox-static), unpacked in the cache."""
    a = arches.get(arch)
    _ensure_apt_arch(a.debian_arch, progress)
    cand = _show("busybox-static", a.debian_arch)
    # The package name does not carry the architecture, so the directory name does.
    dest = cache.root() / "busybox" / f"{cand.package}_{cand.version}_{a.debian_arch}"

    def finish(tree: Path) -> dict[str, str]:
        if not (tree / "bin" / "busybox").is_file():
            raise BadInput(f"{cand.package} ({a.debian_arch}) has no /bin/busybox")
        return {"arch": a.name, "package": cand.package, "version": cand.version}

    _fetch_tree(cand.package, cand.version, a.debian_arch, dest, progress, finish)
    return dest / "bin" / "busybox"
