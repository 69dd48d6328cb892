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


def test_a_tree_keeps_its_hard_links_and_sockets(tmp_path: Path) -> None:
    """Both were lost: each name of a hard-linked file became an inode of its own (perl and
    perl5.36.0 in a Debian tree), and a socket was dropped without a word."""
    import os
    import socket

    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin/perl").write_bytes(b"one inode")
    os.link(tree / "bin/perl", tree / "bin/perl5")
    os.link(tree / "bin/perl", tree / "other")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree / "bin/sock"))
    img = tmp_path / "root.img"
    r = bootlab_cli("rootfs", "build", str(tree), "-o", str(img), "--size", "8M")
    assert r.returncode == 0, r.stderr
    stats = {p: subprocess.run(["debugfs", "-R", f"stat {p}", str(img)], capture_output=True, text=True).stdout
             for p in ("/bin/perl", "/bin/perl5", "/other", "/bin/sock")}
    inodes = {re.search(r"Inode: (\d+)", stats[p]).group(1) for p in ("/bin/perl", "/bin/perl5", "/other")}
    assert len(inodes) == 1 and "Links: 3" in stats["/other"]
    assert "Type: socket" in stats["/bin/sock"]
    spec = tmp_path / "s.toml"
    spec.write_text(f"[[tree]]\nsource = '{tree}'\npath = '/'\n")
    initrd = tmp_path / "initrd.img"
    assert bootlab_cli("initramfs", "build", str(spec), "-o", str(initrd), "--compress", "none").returncode == 0
    listing = subprocess.run(["cpio", "-itv", "--quiet"], input=initrd.read_bytes(), capture_output=True,
                             check=True).stdout.decode().splitlines()
    assert sorted(line.split()[1] for line in listing if line.split()[-1] in ("bin/perl", "bin/perl5", "other")) == ["3"] * 3
    assert next(line for line in listing if line.endswith(" bin/sock")).startswith("s")


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


@pytest.mark.parametrize("command", [["initramfs", "build", "SPEC"], ["rootfs", "build", "SPEC"],
                                     ["rootfs", "debootstrap"]])
def test_an_output_with_a_trailing_slash_is_refused(tmp_path: Path, command: list[str]) -> None:
    """pathlib drops the slash: `-o new/` wrote a file named `new`."""
    spec = tmp_path / "s.toml"
    spec.write_text("[[file]]\npath = '/a'\ncontent = 'a'\n")
    r = bootlab_cli(*[str(spec) if a == "SPEC" else a for a in command], "-o", f"{tmp_path}/new/")
    assert r.returncode == 2 and "names a directory" in r.stderr.decode()
    assert r.stderr.decode().count("\n") == 1 and not (tmp_path / "new").exists()
