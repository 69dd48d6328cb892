"""Kernel image files: what format a file is, its version, and its bootable ELF inside.

An x86 bzImage carries the real kernel (an ELF vmlinux) as a compressed payload. Booting that
ELF directly through its PVH entry point skips the decompressor and the real-mode setup, which
under TCG is worth over a second of boot time, so we extract it once and cache it.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from bootlab.errors import BadInput

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
    def release(self) -> str | None:
        """The `uname -r` string: first word of the version, which names /lib/modules/<release>."""
        return self.version.split()[0] if self.version else None


def _payload_codec(data: bytes) -> str | None:
    magics = [
        (b"\x1f\x8b", "gzip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"BZh", "bzip2"),
        (b"\x5d\x00\x00", "lzma"),
        (b"\x89LZO", "lzo"),
        (b"\x02\x21\x4c\x18", "lz4"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
    ]
    for magic, name in magics:
        if data.startswith(magic):
            return name
    return None


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
            codec = _payload_codec(f.read(8))
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
    codec = _payload_codec(payload)
    try:
        elf = _decompress(codec, payload)
    except (OSError, ValueError, lzma.LZMAError, zlib.error, EOFError) as e:
        raise BadInput(f"kernel {path}: corrupt {codec} payload ({e})") from None
    # The kernel build appends the uncompressed size as the payload's last 4 bytes.
    (expected,) = struct.unpack("<I", payload[-4:]) if len(payload) >= 4 else (-1,)
    if len(elf) != expected:
        raise BadInput(f"kernel {path}: corrupt or truncated {codec} payload "
                       f"({len(elf)} bytes decompressed, {expected} expected)")
    if not elf.startswith(_ELF_MAGIC):
        raise BadInput(f"kernel {path}: payload is not an ELF vmlinux")
    return elf


def _decompress(codec: str | None, payload: bytes) -> bytes:
    if codec == "gzip":
        d: object = zlib.decompressobj(wbits=31)
    elif codec == "xz":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elif codec == "lzma":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    elif codec == "bzip2":
        d = bz2.BZ2Decompressor()
    elif codec == "zstd":
        import zstandard

        d = zstandard.ZstdDecompressor().decompressobj()
    else:
        d = None
    if d is not None:
        out = d.decompress(payload)  # type: ignore[attr-defined]
        if not getattr(d, "eof", True):
            raise EOFError("the compressed stream ends early")
        return out
    if codec == "lz4":
        return _lz4_legacy(payload)
    raise ValueError(f"unsupported kernel payload compression: {codec}")


def _lz4_legacy(payload: bytes) -> bytes:
    """LZ4 legacy frames: magic, then blocks of <u32 size><data>, each up to 8 MiB decompressed."""
    import lz4.block

    out = bytearray()
    pos = 4
    while pos + 4 <= len(payload):
        (size,) = struct.unpack_from("<I", payload, pos)
        if size == 0x184C2102:  # a following legacy frame's magic
            pos += 4
            continue
        pos += 4
        block = payload[pos:pos + size]
        if len(block) < size:
            break
        out += lz4.block.decompress(block, uncompressed_size=8 << 20)
        pos += size
    return bytes(out)


def has_pvh_note(path: Path) -> bool:
    """True when the ELF has a Xen PHYS32_ENTRY note: QEMU can then boot it directly (PVH)."""
    from elftools.elf.elffile import ELFFile
    from elftools.common.exceptions import ELFError

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
    except ELFError:
        return False
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
