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
    with pytest.raises(BadInput, match="corrupt|not an ELF"):
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
