import random
import struct
import subprocess
from pathlib import Path

import pytest

from bootlab.errors import BadInput
from bootlab.kernel import image
from bootlab.kernel.find import _version_key, bootable, default_kernel
from bootlab.kernel.image import KernelFormat


def test_debian_bzimage_is_recognised(kernel: Path) -> None:
    k = image.inspect(kernel)
    assert k.format is KernelFormat.BZIMAGE
    assert k.release == kernel.name.removeprefix("vmlinuz-")
    assert k.payload_compression in {"gzip", "xz", "zstd", "lz4", "lzma", "bzip2", "lzo"}


def test_extracted_vmlinux_is_a_pvh_elf_of_the_same_release(kernel: Path) -> None:
    b = bootable(kernel)
    assert b.pvh
    assert b.boot_path.read_bytes()[:4] == b"\x7fELF"
    assert image.inspect(b.boot_path).release == image.inspect(kernel).release
    assert bootable(kernel).boot_path == b.boot_path  # cached, not extracted twice


@pytest.mark.parametrize("content", [b"", b"hello world", b"\x7fELF", b"MZ" + b"\0" * 600,
                                     bytes(range(256)) * 4])
def test_not_a_kernel_is_bad_input(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "k"
    p.write_bytes(content)
    with pytest.raises(BadInput):
        bootable(p)


def test_truncated_bzimage_is_bad_input(tmp_path: Path, kernel: Path) -> None:
    p = tmp_path / "truncated"
    p.write_bytes(kernel.read_bytes()[:200_000])
    with pytest.raises(BadInput, match="bad payload: truncated"):
        image.extract_vmlinux(p)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        image.inspect(tmp_path / "nope")
    with pytest.raises(BadInput, match="directory"):
        image.inspect(tmp_path)


def test_default_kernel_is_the_newest_by_version(tmp_path: Path) -> None:
    for v in ("6.1.0-9-amd64", "6.1.0-10-amd64", "5.10.0-30-amd64"):
        (tmp_path / f"vmlinuz-{v}").write_bytes(b"")
    assert default_kernel(tmp_path).name == "vmlinuz-6.1.0-10-amd64"
    assert _version_key("a-10") > _version_key("a-9")


def test_no_kernel_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="apt-get install linux-image"):
        default_kernel(tmp_path)


# How Kbuild compresses the x86 payload (scripts/Makefile.lib, arch/x86/boot/compressed): every
# stream but gzip's gets the uncompressed size appended as 4 little-endian bytes.
KBUILD_COMPRESSORS = {
    "gzip": ["gzip", "-n", "-f", "-9"],
    "bzip2": ["bzip2", "-9"],
    "lzma": ["lzma", "-9"],
    "xz": ["xz", "--check=crc32", "--x86", "--lzma2=dict=32MiB"],
    "lzo": ["lzop", "-9"],
    "lz4": ["lz4", "-l", "-9"],
    "zstd": ["zstd", "-22", "--ultra"],
}


def _bzimage(kernel: Path, payload: bytes) -> bytes:
    """The real kernel's setup code and header, around another payload."""
    real = kernel.read_bytes()
    offset = struct.unpack_from("<I", real, 0x248)[0]
    data = bytearray(real[:(real[0x1F1] + 1) * 512 + offset]) + payload
    struct.pack_into("<I", data, 0x24C, len(payload))
    return bytes(data)


@pytest.mark.parametrize("algorithm", list(KBUILD_COMPRESSORS))
def test_each_kernel_payload_compression_is_unpacked_or_refused(tmp_path: Path, kernel: Path,
                                                                  algorithm: str) -> None:
    """Corrupt lz4 and zstd payloads used to be tracebacks, and an lzo one was 'unsupported'."""
    vmlinux = b"\x7fELF" + random.Random(0).randbytes(300_000) + bytes(300_000)
    packed = subprocess.run(KBUILD_COMPRESSORS[algorithm], input=vmlinux, capture_output=True, check=True).stdout
    if algorithm != "gzip":
        packed += struct.pack("<I", len(vmlinux))
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(_bzimage(kernel, packed))
    assert image.inspect(good).payload_compression == algorithm
    assert image.extract_vmlinux(good) == vmlinux
    damaged = packed[:32] + bytes(b ^ 0x55 for b in packed[32:96]) + packed[96:]  # past the headers
    bad.write_bytes(_bzimage(kernel, bytes(damaged)))
    with pytest.raises(BadInput, match="^kernel .*/bad: (bad payload|corrupt)"):
        image.extract_vmlinux(bad)


def test_elf_kernel_with_damaged_program_headers_is_bad_input(tmp_path: Path, kernel: Path) -> None:
    """pyelftools met an e_phoff past 2**63 with a ValueError from seek, which escaped."""
    elf = bytearray(bootable(kernel).boot_path.read_bytes())
    struct.pack_into("<Q", elf, 0x20, 2**64 - 16)  # e_phoff (ELF64)
    p = tmp_path / "vmlinux"
    p.write_bytes(elf)
    with pytest.raises(BadInput, match="malformed ELF"):
        image.inspect(p)



def test_each_kernel_says_its_architecture(tmp_path: Path, kernel: Path) -> None:
    assert image.inspect(kernel).arch == "x86_64"
    assert image.inspect(bootable(kernel).boot_path).arch == "x86_64"  # the PVH ELF: by e_machine
    arm64 = tmp_path / "Image"
    arm64.write_bytes(bytes(0x38) + b"ARM\x64" + bytes(0x100) + b"Linux version 6.1.0-test (x) #1\n")
    assert image.inspect(arm64).arch == "aarch64"


def test_a_kernel_of_another_architecture_is_bad_input_before_qemu(tmp_path: Path, kernel: Path) -> None:
    """QEMU said "linux kernel too old to load a ram disk" (arm64 Image on x86_64), or nothing
    and the VM stopped (x86_64 bzImage on aarch64)."""
    from bootlab.vm.vm import VM

    arm64 = tmp_path / "Image"
    arm64.write_bytes(bytes(0x38) + b"ARM\x64" + bytes(0x100) + b"Linux version 6.1.0-test (x) #1\n")
    with pytest.raises(BadInput, match="an aarch64 kernel; boot it with --arch aarch64"):
        VM(arm64, arch="x86_64", accel="tcg").machine()
    with pytest.raises(BadInput, match="an x86_64 kernel; boot it with --arch x86_64"):
        VM(kernel, arch="aarch64", accel="tcg").machine()
