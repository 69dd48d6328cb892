"""Fetching Debian's arm64 kernel and busybox with apt, for real: Debian's repositories are reachable
wherever the suite runs. The unpacked trees stay in the cache, so only the first run downloads."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from bootlab import cache
from bootlab.errors import BadInput
from bootlab.image.elf import read_elf
from bootlab.kernel import fetch, image
from bootlab.kernel.image import KernelFormat


def test_fetch_arm64_kernel() -> None:
    k = fetch.fetch_kernel("arm64", progress=lambda line: None)
    assert k.arch == "aarch64"
    assert k.package.startswith("linux-image-") and k.package.endswith("-arm64")
    assert k.release == k.package.removeprefix("linux-image-")
    assert k.root == cache.root() / "kernels" / f"{k.package}_{k.version}"
    assert k.kernel.parent == k.root / "boot"
    # Debian ships no modules.dep (its postinst makes it); we ran depmod over the tree.
    assert k.modules_dir == k.root / "lib" / "modules" / k.release
    assert (k.modules_dir / "modules.dep").stat().st_size > 0

    img = image.inspect(k.kernel)
    assert img.format is KernelFormat.ARM64_IMAGE
    assert img.release == k.release

    lines: list[str] = []
    assert fetch.fetch_kernel("aarch64", progress=lines.append) == k
    assert not any("download" in line for line in lines), "a second fetch must download nothing"
    assert fetch.cached_kernel("aarch64") == k


def test_fetch_arm64_busybox_is_static_aarch64() -> None:
    busybox = fetch.fetch_busybox("aarch64", progress=lambda line: None)
    info = read_elf(busybox)
    assert info is not None and info.machine == "EM_AARCH64"
    assert info.interp is None  # static: runs in an initramfs with nothing else


def test_unknown_package_is_named() -> None:
    with pytest.raises(BadInput, match="linux-image-no-such-kernel"):
        fetch.fetch_kernel("aarch64", "linux-image-no-such-kernel", progress=lambda line: None)


def test_unknown_arch() -> None:
    with pytest.raises(BadInput, match="unknown architecture"):
        fetch.fetch_kernel("sparc64", progress=lambda line: None)


def test_not_a_kernel_package_leaves_nothing() -> None:
    kernels = cache.root() / "kernels"
    before = set(kernels.iterdir()) if kernels.exists() else set()
    with pytest.raises(BadInput, match="not a kernel image package"):
        fetch.fetch_kernel("aarch64", "busybox-static", progress=lambda line: None)
    assert set(kernels.iterdir()) == before


def test_foreign_arch_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without root we cannot add the architecture: say exactly what to run instead."""
    answers = {"--print-architecture": "amd64\n", "--print-foreign-architectures": ""}
    monkeypatch.setattr(fetch, "_run", lambda argv, what, cwd=None: answers[argv[1]])
    monkeypatch.setattr(fetch.os, "geteuid", lambda: 1000)
    with pytest.raises(BadInput, match=r"dpkg --add-architecture arm64 && apt-get update"):
        fetch._ensure_apt_arch("arm64", progress=lambda line: None)


def test_gzipped_arm64_image(tmp_path: Path) -> None:
    """`make` on arm64 produces Image.gz, which QEMU boots as is: inspect must see through it."""
    header = bytearray(64)
    header[0x38:0x3C] = b"ARM\x64"
    body = bytes(header) + b"\0" * 3_000_000 + b"Linux version 6.9.0-test (me@here) #1 SMP\n\0"
    (tmp_path / "Image.gz").write_bytes(gzip.compress(body))
    img = image.inspect(tmp_path / "Image.gz")
    assert (img.format, img.release, img.payload_compression) == (
        KernelFormat.ARM64_IMAGE, "6.9.0-test", "gzip")

    (tmp_path / "notes.gz").write_bytes(gzip.compress(b"just text" * 100))
    with pytest.raises(BadInput, match="not a kernel image"):
        image.inspect(tmp_path / "notes.gz")
