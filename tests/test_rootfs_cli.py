"""`bootlab rootfs build`: a directory or a spec to ext4, without root, booted as the guest's root."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import bootlab_cli

SPEC = '''busybox = true
[[file]]
path = "/etc/motd"
content = "from a spec\\n"
uid = 1000
gid = 100
[[device]]
path = "/lib/null"
type = "char"
major = 1
minor = 3
mode = 0o666
'''


@pytest.mark.vm
def test_spec_rootfs_boots_with_exact_owners_and_nodes(tmp_path: Path) -> None:
    spec = tmp_path / "root.toml"
    spec.write_text(SPEC)
    img = tmp_path / "root.img"
    r = bootlab_cli("rootfs", "build", str(spec), "-o", str(img))
    assert r.returncode == 0, r.stderr
    assert subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True).returncode == 0
    r = bootlab_cli("run", "--disk", str(img), "--root", "/dev/vda", "--", "sh", "-c",
                    "cat /etc/motd; stat -c '%u:%g %a' /etc/motd; stat -c '%t:%T %a' /lib/null; echo x > /lib/null")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["from a spec", "1000:100 644", "1:3 666"]


def test_directory_rootfs_is_root_owned_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "tree/etc").mkdir(parents=True)
    (tmp_path / "tree/etc/hostname").write_text("lab\n")
    import os

    os.chown(tmp_path / "tree/etc/hostname", 1234, 1234)
    for flag, owner in (([], "0"), (["--keep-owners"], "1234")):
        img = tmp_path / f"t{len(flag)}.img"
        r = bootlab_cli("rootfs", "build", str(tmp_path / "tree"), "-o", str(img), "--size", "8M", *flag)
        assert r.returncode == 0, r.stderr
        stat = subprocess.run(["debugfs", "-R", "stat /etc/hostname", str(img)], capture_output=True, text=True).stdout
        assert re.search(r"User:\s+(\d+)", stat).group(1) == owner, stat


@pytest.mark.parametrize("args, message", [
    (["SPEC", "--size", "1M"], "does not fit"),
    (["SPEC", "--size", "lots"], ""),
    (["/no/such/tree"], "no such directory or spec"),
    (["SPEC", "--size", "1K"], "less than one block"),  # was mke2fs's complaint and exit 125
    (["x" * 300], "file name too long"),  # was a traceback
])
def test_bad_rootfs_input_leaves_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    spec = tmp_path / "root.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out.img"
    r = bootlab_cli("rootfs", "build", *[a.replace("SPEC", str(spec)) for a in args], "-o", str(out))
    assert r.returncode == 2
    assert message in r.stderr.decode() and len(r.stderr.decode().strip().splitlines()) == 1
    assert not out.exists()


def test_the_spec_is_not_its_own_output(tmp_path: Path) -> None:
    """`rootfs build spec.toml -o spec.toml` overwrote the spec with the image."""
    spec = tmp_path / "root.toml"
    spec.write_text(SPEC)
    r = bootlab_cli("rootfs", "build", str(spec), "-o", str(spec))
    assert r.returncode == 2 and b"that is the spec itself" in r.stderr
    assert spec.read_text() == SPEC and [p.name for p in tmp_path.iterdir()] == ["root.toml"]
