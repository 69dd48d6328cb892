"""Disks and a disk root, on the real kernel: virtio-blk, switch_root, read-only attach."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import bootlab_cli


def make_root(tmp_path: Path, name: str = "root.img", size: str = "32M") -> Path:
    """A small ext4 root with busybox, made by mke2fs -d (the real tool)."""
    stage = tmp_path / f"stage-{name}"
    for d in ("bin", "etc", "dev", "proc", "sys", "tmp"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", stage / "bin/busybox")
    for applet in ("sh", "cat", "ls", "echo", "sync"):
        (stage / "bin" / applet).symlink_to("busybox")
    (stage / "etc/os-release").write_text(f"disk {name}\n")
    img = tmp_path / name
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(stage), str(img), size], check=True)
    return img


@pytest.mark.vm
def test_command_runs_in_the_disk_root_and_writes_persist(tmp_path: Path) -> None:
    img = make_root(tmp_path)
    r = bootlab_cli("run", "--disk", str(img), "--root", "/dev/vda", "--",
                    "sh", "-c", "cat /etc/os-release; echo kept > /etc/note")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"disk root.img\n"
    r = bootlab_cli("run", "--disk", f"{img},ro", "--root", "/dev/vda", "--", "sh", "-c", "cat /etc/note; echo x > /x")
    assert r.stdout == b"kept\n"
    assert r.returncode != 0 and b"Read-only file system" in r.stderr
    fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True)
    assert fsck.returncode == 0, fsck.stdout  # left clean by the agent's power-off


@pytest.mark.vm
def test_two_disks_in_order_without_root(tmp_path: Path) -> None:
    a = make_root(tmp_path, "a.img", "16M")
    b = make_root(tmp_path, "b.img", "48M")
    r = bootlab_cli("run", "--disk", f"{a},ro", "--disk", str(b), "--",
                    "sh", "-c", "cat /sys/block/vda/size /sys/block/vdb/size /sys/block/vda/ro")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [b"32768", b"98304", b"1"]


def to_qcow2(img: Path) -> Path:
    out = img.with_suffix(".qcow2")
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(img), str(out)], check=True)
    return out


@pytest.mark.vm
def test_a_qcow2_root_boots_and_keeps_its_writes(tmp_path: Path) -> None:
    qcow2 = to_qcow2(make_root(tmp_path))
    r = bootlab_cli("run", "--disk", f"{qcow2},format=qcow2", "--root", "/dev/vda", "--rootfstype", "ext4",
                    "--", "sh", "-c", "cat /etc/os-release; echo kept > /etc/note")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"disk root.img\n"
    back = tmp_path / "back.img"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(qcow2), str(back)], check=True)
    listing = subprocess.run(["debugfs", "-R", "cat /etc/note", str(back)], capture_output=True, check=True)
    assert listing.stdout == b"kept\n"


@pytest.mark.parametrize("args, message", [
    (["--disk", "QCOW2"], "a qcow2 image; attach it with ,format=qcow2"),  # the guest could write over it
    (["--disk", "DISK,format=qcow2"], "not a qcow2 image"),
    (["--disk", "QCOW2,format=qcow2", "--root", "/dev/vda"], "give the filesystem of a qcow2 disk with --rootfstype"),
    (["--disk", "/no/such.img"], "no such image file"),
    (["--root", "/dev/vda"], "attach the disk"),
    (["--disk", "DISK", "--root", "/dev/sda"], "expected a virtio disk"),
    (["--disk", "DISK", "--root", "/dev/vdb"], "only 1 disk"),
    (["--disk", "DISK,fast"], "unknown option 'fast'"),
    (["--disk", "NOTFS", "--root", "/dev/vda"], "no ext2/3/4 filesystem"),
])
def test_bad_disk_usage_is_status_2(tmp_path: Path, args: list[str], message: str) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(b"\0" * 4096)
    qcow2 = to_qcow2(disk) if any("QCOW2" in a for a in args) else None
    args = [a.replace("NOTFS", str(disk)).replace("DISK", str(disk)).replace("QCOW2", str(qcow2)) for a in args]
    r = bootlab_cli("run", *args, "--", "true")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr.decode() and len(r.stderr.decode().strip().splitlines()) == 1
