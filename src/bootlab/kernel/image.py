"""Kernel image files: what format a file is, its version, and its bootable ELF inside.

An x86 bzImage carries the real kernel (an ELF vmlinux) as a compressed payload. Booting that
ELF directly through its PVH entry point skips the decompressor and the real-mode setup, which
under TCG is worth over a second of boot time, so we extract it once and cache it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bootlab.errors import BadInput
from bootlab.image import compress

# x86 boot protocol: offsets into the real-mode setup header (Documentation/x86/boot.rst).
_SETUP_SECTS = 0x1F1
_BOOT_FLAG = 0x1FE
_HEADER_MAGIC = 0x202
_PROTOCOL_VERSION = 0x206
_KERNEL_VERSION_PTR = 0x20E
_PAYLOAD_OFFSET = 0x248
_PAYLOAD_LENGTH = 0x24C

_ELF_MAGIC = b"\x7fELF"
_ARM64_MAGIC_OFFSET = 0x38
_ARM64_MAGIC = b"ARM\x64"

# Xen ELF note type that marks a PVH 32-bit entry point; QEMU's -kernel boots such an ELF.
_XEN_ELFNOTE_PHYS32_ENTRY = 18


class KernelFormat(Enum):
    BZIMAGE = "bzImage"
    ELF = "ELF vmlinux"
    ARM64_IMAGE = "arm64 Image"


@dataclass(frozen=True)
class KernelImage:
    """What we learned from a kernel file without running it."""

    path: Path
    format: KernelFormat
    version: str | None  # the full banner-like string, e.g. "6.1.0-56-amd64 (debian-kernel@...) #1 ..."
    payload_compression: str | None = None
    has_pvh_note: bool = False

    @property
    def arch(self) -> str | None:
        """The architecture it runs on (bootlab's names), where the file says."""
        if self.format is KernelFormat.BZIMAGE:
            return "x86_64"
        if self.format is KernelFormat.ARM64_IMAGE:
            return "aarch64"
        with open(self.path, "rb") as f:
            head = f.read(20)
        return _ELF_MACHINES.get(int.from_bytes(head[18:20], "little" if head[5:6] == b"\x01" else "big"))

    @property
    def release(self) -> str | None:
        """The `uname -r` string: first word of the version, which names /lib/modules/<release>."""
        return self.version.split()[0] if self.version else None


_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}  # e_machine: EM_X86_64, EM_AARCH64


def inspect(path: Path) -> KernelImage:
    """Identify a kernel file. Raises BadInput with a one-line reason for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x10000)
    except FileNotFoundError:
        raise BadInput(f"kernel {path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"kernel {path}: is a directory, not a kernel image") from None
    except PermissionError:
        raise BadInput(f"kernel {path}: permission denied (Debian's /boot/vmlinuz-* is root-only: "
                       f"copy it or `chmod o+r` it)") from None
    if head.startswith(_ELF_MAGIC):
        version = _elf_version(path)
        if version is None:
            raise BadInput(f"kernel {path}: an ELF file but not a Linux kernel (no version banner)")
        return KernelImage(path, KernelFormat.ELF, version, has_pvh_note=has_pvh_note(path))
    if len(head) >= 0x250 and head[_HEADER_MAGIC:_HEADER_MAGIC + 4] == b"HdrS" \
            and head[_BOOT_FLAG:_BOOT_FLAG + 2] == b"\x55\xaa":
        return _inspect_bzimage(path, head)
    if _is_arm64_image(head):
        return KernelImage(path, KernelFormat.ARM64_IMAGE, _scan_version(path.read_bytes()))
    if head.startswith(b"\x1f\x8b"):
        # `make` on arm64 builds Image.gz, which QEMU's -kernel boots as is. (Debian's arm64
        # vmlinuz is an uncompressed Image, handled above.)
        z = zlib.decompressobj(wbits=31)
        try:
            start = z.decompress(head, 0x40)
        except zlib.error:
            start = b""
        if _is_arm64_image(start):
            return KernelImage(path, KernelFormat.ARM64_IMAGE, _gzip_version(path),
                               payload_compression="gzip")
    raise BadInput(f"kernel {path}: not a kernel image (no bzImage header, ELF or arm64 Image magic)")


def _is_arm64_image(head: bytes) -> bool:
    return len(head) >= 0x40 and head[_ARM64_MAGIC_OFFSET:_ARM64_MAGIC_OFFSET + 4] == _ARM64_MAGIC


def _gzip_version(path: Path) -> str | None:
    """The banner of a gzipped kernel, decompressing in chunks only as far as the banner."""
    z = zlib.decompressobj(wbits=31)
    tail = b""
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                data = tail + z.decompress(chunk)
                i = data.find(b"Linux version ")
                if i >= 0 and len(data) - i >= 300:
                    return _scan_version(data[i:])
                # Keep enough to complete a banner that straddles two chunks.
                tail = data[i:] if i >= 0 else data[-300:]
                if z.eof:
                    break
    except zlib.error:
        pass
    return _scan_version(tail)


def _inspect_bzimage(path: Path, head: bytes) -> KernelImage:
    (proto,) = struct.unpack_from("<H", head, _PROTOCOL_VERSION)
    version = None
    (ptr,) = struct.unpack_from("<H", head, _KERNEL_VERSION_PTR)
    if ptr:
        start = ptr + 0x200
        end = head.find(b"\0", start)
        if 0 < start < end:
            version = head[start:end].decode("ascii", "replace")
    codec = None
    if proto >= 0x208:
        setup = _setup_size(head)
        (offset,) = struct.unpack_from("<I", head, _PAYLOAD_OFFSET)
        with open(path, "rb") as f:
            f.seek(setup + offset)
            codec = compress.detect(f.read(16))
    return KernelImage(path, KernelFormat.BZIMAGE, version, payload_compression=codec)


def _setup_size(head: bytes) -> int:
    sects = head[_SETUP_SECTS] or 4
    return (sects + 1) * 512


def extract_vmlinux(path: Path) -> bytes:
    """The ELF kernel inside a bzImage, decompressed in process."""
    data = path.read_bytes()
    if data[_HEADER_MAGIC:_HEADER_MAGIC + 4] != b"HdrS":
        raise BadInput(f"kernel {path}: not a bzImage")
    offset, length = struct.unpack_from("<II", data, _PAYLOAD_OFFSET)
    start = _setup_size(data) + offset
    payload = data[start:start + length]
    codec = compress.detect(payload)
    if codec is None:
        raise BadInput(f"kernel {path}: corrupt bzImage (its payload, at offset {start}, is in no "
                       f"compression the kernel knows)")
    # A payload's last 4 bytes are the uncompressed size: the build appends them to every stream
    # but gzip's, whose own trailer ends with them. lz4 has no end marker and would read them as
    # a block: keep them out.
    stream = payload[:-4] if codec == "lz4" else payload
    try:
        elf, _ = compress.decompress_stream(codec, stream)
    except compress.CorruptData as e:
        raise BadInput(f"kernel {path}: bad payload: {e}") from None
    (expected,) = struct.unpack("<I", payload[-4:]) if len(payload) >= 4 else (-1,)
    if len(elf) != expected:
        raise BadInput(f"kernel {path}: corrupt or truncated {codec} payload "
                       f"({len(elf)} bytes decompressed, {expected} expected)")
    if not elf.startswith(_ELF_MAGIC):
        raise BadInput(f"kernel {path}: payload is not an ELF vmlinux")
    return elf


def has_pvh_note(path: Path) -> bool:
    """True when the ELF has a Xen PHYS32_ENTRY note: QEMU can then boot it directly (PVH).
    Raises BadInput for an ELF too damaged to read."""
    from elftools.elf.elffile import ELFFile

    from bootlab.image.elf import MALFORMED

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_NOTE":
                    continue
                for note in seg.iter_notes():
                    if note["n_name"] == "Xen" and note["n_type"] in (
                            _XEN_ELFNOTE_PHYS32_ENTRY, "NT_XEN_PHYS32_ENTRY"):
                        return True
    except MALFORMED as e:
        raise BadInput(f"kernel {path}: malformed ELF: {' '.join(str(e).split()) or type(e).__name__}") from None
    return False


def _elf_version(path: Path) -> str | None:
    # The banner "Linux version X ..." lives in .rodata; a bounded scan is enough for vmlinux.
    with open(path, "rb") as f:
        return _scan_version(f.read())


def _scan_version(data: bytes) -> str | None:
    i = data.find(b"Linux version ")
    if i < 0:
        return None
    end = data.find(b"\n", i)
    end = min(x for x in (end, data.find(b"\0", i), i + 300) if x > 0)
    return data[i + len("Linux version "):end].decode("ascii", "replace").strip() or None
