"""Finding a kernel to boot, and the form of it that boots fastest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bootlab import cache
from bootlab.errors import BadInput
from bootlab.kernel import image
from bootlab.kernel.image import KernelFormat, KernelImage

BOOT_DIR = Path("/boot")


def _version_key(name: str) -> list[object]:
    # Natural order on the numeric parts: 6.1.0-10 sorts before 6.1.0-9 lexically, not here.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def newest(pattern: str, boot_dir: Path = BOOT_DIR) -> Path | None:
    """The highest-versioned file matching `pattern` (vmlinuz-*, initrd.img-*), or None."""
    candidates = sorted(boot_dir.glob(pattern), key=lambda p: _version_key(p.name))
    return candidates[-1] if candidates else None


def default_kernel(boot_dir: Path = BOOT_DIR) -> Path:
    """The newest /boot/vmlinuz-*, like a boot loader's default entry."""
    kernel = newest("vmlinuz-*", boot_dir)
    if kernel is None:
        raise BadInput(f"no kernel found in {boot_dir}: install one (apt-get install linux-image-amd64) "
                       "or pass --kernel PATH")
    return kernel


@dataclass(frozen=True)
class BootableKernel:
    """The file QEMU will load, and the image it came from."""

    image: KernelImage
    boot_path: Path  # an extracted PVH vmlinux when that is possible, else the original file
    pvh: bool


def bootable(path: Path, *, prefer_pvh: bool = True) -> BootableKernel:
    """Prefer the uncompressed PVH ELF: under TCG it skips SeaBIOS and the decompressor (>2 s)."""
    img = image.inspect(path)
    if img.format is KernelFormat.ELF:
        return BootableKernel(img, path, img.has_pvh_note)
    if img.format is KernelFormat.BZIMAGE and prefer_pvh:
        # The verdict is part of the cached name, so a cache hit costs no ELF parsing.
        key = cache.key("vmlinux-v2", cache.file_identity(path))
        pvh = cache.root() / "vmlinux" / f"{key}.pvh.elf"
        no_pvh = cache.root() / "vmlinux" / f"{key}.no-pvh"
        if not pvh.exists() and not no_pvh.exists():
            elf = image.extract_vmlinux(path)

            def write(tmp: Path) -> None:  # (judged in atomic_write's own temporary: several
                tmp.write_bytes(elf)       # bootlab runs may fill a cold cache at once)
                if not _has_pvh_note(tmp):
                    raise _NoPvh

            try:
                cache.atomic_write(pvh, write)
            except _NoPvh:
                cache.atomic_write(no_pvh, lambda t: t.write_bytes(b""))
        if pvh.exists():
            return BootableKernel(img, pvh, True)
    return BootableKernel(img, path, False)


class _NoPvh(Exception):
    """The extracted vmlinux has no PVH entry note: it is not kept."""


def _has_pvh_note(vmlinux: Path) -> bool:
    """For the ELF taken out of a bzImage: one pyelftools cannot read is booted the usual way,
    through the bzImage, whose own decompressor is the judge of it."""
    try:
        return image.has_pvh_note(vmlinux)
    except BadInput:
        return False


def modules_dir(release: str | None, root: Path = Path("/")) -> Path | None:
    if not release:
        return None
    d = root / "lib" / "modules" / release
    return d if (d / "modules.dep").exists() else None
