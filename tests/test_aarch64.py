"""The same tool on Debian's arm64 kernel: fetched into the cache, booted on QEMU's virt machine."""

from __future__ import annotations

import pytest

from conftest import bootlab_cli

pytestmark = pytest.mark.vm


def test_uname_m_is_aarch64() -> None:
    r = bootlab_cli("run", "--arch", "aarch64", "--", "uname", "-m", timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"aarch64\n"


def test_modules_and_status_on_arm64() -> None:
    r = bootlab_cli("run", "--arch", "arm64", "--module", "ext4", "--", "sh", "-c",
                    "cut -d' ' -f1 /proc/modules; exit 3", timeout=600)
    assert r.returncode == 3, r.stderr
    assert {"ext4", "jbd2", "virtio_console", "virtio_mmio"} <= set(r.stdout.decode().split())


def test_unknown_arch_is_status_2() -> None:
    r = bootlab_cli("run", "--arch", "sparc64", "--", "true")
    assert r.returncode == 2 and "unknown architecture" in r.stderr.decode()
