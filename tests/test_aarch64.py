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


def test_disk_root_share_and_net_on_arm64(tmp_path) -> None:
    """Issue 4's paths on the arm64 kernel: a disk root (arm64 busybox), a 9p share, networking."""
    from bootlab.kernel.fetch import fetch_busybox

    spec = tmp_path / "root.toml"
    spec.write_text(f'busybox = "{fetch_busybox("aarch64", progress=lambda line: None)}"\n'
                    '[[file]]\npath = "/etc/motd"\ncontent = "arm64 disk root\\n"\n')
    img = tmp_path / "root.img"
    assert bootlab_cli("rootfs", "build", str(spec), "-o", str(img)).returncode == 0
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared/f").write_text("from the host\n")
    r = bootlab_cli("run", "--arch", "aarch64", "--disk", str(img), "--root", "/dev/vda",
                    "--share", f"{tmp_path}/shared:/mnt/h", "--net", "--", "sh", "-c",
                    "cat /etc/motd /mnt/h/f; uname -m; ip -4 addr show eth0 | grep -o 10.0.2.15/24", timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split("\n")[:4] == ["arm64 disk root", "from the host", "aarch64", "10.0.2.15/24"]


def test_host_root_needs_the_hosts_arch() -> None:
    r = bootlab_cli("run", "--arch", "aarch64", "--host-root", "--", "true")
    assert r.returncode == 2 and "must be x86_64" in r.stderr.decode()
