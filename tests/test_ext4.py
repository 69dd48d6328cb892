"""ext4 images from entries: checked with e2fsprogs' own debugfs and e2fsck, built as nobody."""

from __future__ import annotations

import dataclasses
import filecmp
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bootlab.errors import BadInput
from bootlab.image import busybox
from bootlab.image.entry import Entry, Kind, Tree, directory, file, host_file, symlink
from bootlab.image.ext4 import parse_size, write_ext4

MTIME = 1_700_000_000
HOST_FILE = Path(__file__).resolve()  # under /work: readable by nobody too


def every_kind() -> list[Entry]:
    tree = Tree()
    for e in [
        file("etc/hostname", b"lab\n"),
        host_file("opt/source.py", HOST_FILE, 0o640),
        Entry("tmp", Kind.DIR, 0o1777),
        Entry("usr/bin/su", Kind.FILE, 0o4755, data=b"#!/bin/sh\n"),
        symlink("bin", "usr/bin"),
        Entry("data/one", Kind.FILE, 0o600, uid=7, gid=8, data=b"shared inode"),
        Entry("data/two", Kind.FILE, hardlink_of="data/one"),
        Entry("dev/console", Kind.CHAR, 0o600, uid=0, rdev=(5, 1)),
        Entry("dev/sda", Kind.BLOCK, 0o660, gid=6, rdev=(8, 0)),
        Entry("dev/wide", Kind.CHAR, 0o600, rdev=(300, 70000)),  # needs the new encoding
        Entry("run/fifo", Kind.FIFO, 0o644),
        Entry("run/sock", Kind.SOCKET, 0o755),
        Entry("home/user/notes", Kind.FILE, 0o644, uid=1000, gid=1000, data=b"mine"),
        file("with space/a \"quoted\" name", b"spaced"),
        file("odd/<2>\tback\\slash #;", b"odd"),  # debugfs's <ino> syntax, tab, comment
        file("a/b/c/d/e/f/g/h/deep", b"deep"),
    ]:
        tree.add(e)
    return [dataclasses.replace(e, mtime=MTIME) for e in tree.sorted()]


def debugfs(img: Path, command: str) -> str:
    r = subprocess.run(["debugfs", "-R", command, str(img)], capture_output=True, check=True)
    return r.stdout.decode()


def inode(img: Path, path: str) -> dict[str, object]:
    """The fields of `debugfs stat` a test compares."""
    out = debugfs(img, f'stat "{path}"')
    dev = re.search(r"Device major/minor number: (\d+):(\d+)", out)
    return {
        "type": re.search(r"Type: (.+?)\s+Mode", out).group(1),
        "mode": int(re.search(r"Mode:\s+(\d+)", out).group(1), 8),
        "uid": int(re.search(r"User:\s+(\d+)", out).group(1)),
        "gid": int(re.search(r"Group:\s+(\d+)", out).group(1)),
        "links": int(re.search(r"Links: (\d+)", out).group(1)),
        "inode": int(re.search(r"Inode: (\d+)", out).group(1)),
        "mtime": int(re.search(r"mtime: (0x[0-9a-f]+)", out).group(1), 16),
        "rdev": (int(dev.group(1)), int(dev.group(2))) if dev else None,
    }


def fsck_clean(img: Path) -> None:
    r = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_kind_exact(tmp_path: Path) -> None:
    img = write_ext4(every_kind(), tmp_path / "root.img", label="bootlab")
    fsck_clean(img)
    assert oct(img.stat().st_mode & 0o777) == oct(0o644 & ~_umask())
    expect = {
        "/tmp": ("directory", 0o1777, 0, 0),
        "/usr/bin/su": ("regular", 0o4755, 0, 0),
        "/opt/source.py": ("regular", 0o640, 0, 0),
        "/bin": ("symlink", 0o777, 0, 0),
        "/data/one": ("regular", 0o600, 7, 8),
        "/dev/console": ("character special", 0o600, 0, 0),
        "/dev/sda": ("block special", 0o660, 0, 6),
        "/run/fifo": ("FIFO", 0o644, 0, 0),
        "/run/sock": ("socket", 0o755, 0, 0),
        "/home/user/notes": ("regular", 0o644, 1000, 1000),
        '/with space/a ""quoted"" name': ("regular", 0o644, 0, 0),
        "/a/b/c/d/e/f/g/h/deep": ("regular", 0o644, 0, 0),
    }
    for path, (kind, mode, uid, gid) in expect.items():
        got = inode(img, path)
        assert (got["type"], got["mode"], got["uid"], got["gid"], got["mtime"]) == \
            (kind, mode, uid, gid, MTIME), path
    one, two = inode(img, "/data/one"), inode(img, "/data/two")
    assert one["inode"] == two["inode"] and one["links"] == 2
    assert inode(img, "/dev/console")["rdev"] == (5, 1)
    assert inode(img, "/dev/sda")["rdev"] == (8, 0)
    assert inode(img, "/dev/wide")["rdev"] == (300, 70000)
    assert inode(img, "/")["mode"] == 0o755 and inode(img, "/")["mtime"] == 0
    listing = debugfs(img, "ls -l /usr/bin")
    assert re.search(r"104755 \(1\)\s+0\s+0\s+10 ", listing), listing
    assert "Fast link dest: \"usr/bin\"" in debugfs(img, "stat /bin")
    assert debugfs(img, 'cat "/with space/a ""quoted"" name"') == "spaced"
    assert debugfs(img, 'cat "/odd/<2>\tback\\slash #;"') == "odd"
    assert debugfs(img, "cat /opt/source.py").encode() == HOST_FILE.read_bytes()
    assert debugfs(img, "cat /data/two") == "shared inode"
    assert "Filesystem volume name:   bootlab" in subprocess.run(
        ["dumpe2fs", "-h", str(img)], capture_output=True, text=True, check=True).stdout


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UNPRIVILEGED = """
import os, sys
from pathlib import Path
from bootlab.image import ext4
from tests.test_ext4 import every_kind
entries = every_kind()
os.setgroups([]); os.setgid(65534); os.setuid(65534)
assert os.getuid() == 65534 and os.geteuid() == 65534
print(ext4.write_ext4(entries, Path(sys.argv[1]) / "nobody.img"))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_builds_without_root() -> None:
    """Import as root (the venv is under /root), drop to nobody, then build."""
    work = Path(tempfile.mkdtemp(prefix="bootlab-ext4-test-"))
    try:
        os.chmod(work, 0o777)
        root = Path(__file__).resolve().parent.parent
        r = subprocess.run([sys.executable, "-c", UNPRIVILEGED, str(work)], capture_output=True,
                           text=True, cwd=root, env={**os.environ, "HOME": str(work)}, timeout=120,
                           check=False)
        assert r.returncode == 0, r.stderr
        img = work / "nobody.img"
        assert img.stat().st_uid == 65534
        fsck_clean(img)
        assert inode(img, "/dev/sda")["gid"] == 6 and inode(img, "/dev/sda")["rdev"] == (8, 0)
        assert inode(img, "/home/user/notes")["uid"] == 1000
        assert inode(img, "/usr/bin/su")["mode"] == 0o4755
        reference = write_ext4(every_kind(), work / "root.img")
        assert filecmp.cmp(img, reference, shallow=False)  # who builds it does not matter
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=True)


def test_too_small_is_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    entries = [file("big", os.urandom(20 << 20))]
    with pytest.raises(BadInput, match=r"needs about (\d+) MiB; use --size (\d+)M or auto") as e:
        write_ext4(entries, tmp_path / "small.img", size=16 << 20)
    assert list(tmp_path.iterdir()) == []
    suggested = parse_size(re.search(r"--size (\S+)", str(e.value)).group(1))
    fsck_clean(write_ext4(entries, tmp_path / "suggested.img", size=suggested))  # and it fits
    img = write_ext4(entries, tmp_path / "auto.img")
    fsck_clean(img)
    assert img.stat().st_size % (1 << 20) == 0 and img.stat().st_size > suggested


def test_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "0")
    tree = Tree()
    tree.extend(busybox.entries(busybox.find_busybox()))
    tree.extend(every_kind())
    entries = tree.sorted()
    a = write_ext4(entries, tmp_path / "a.img", label="x")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # staged on disk, not tmpfs: same bytes
    b = write_ext4(entries, tmp_path / "b.img", label="x")
    fsck_clean(a)
    assert filecmp.cmp(a, b, shallow=False)
    c = write_ext4([*entries, file("etc/extra", b"1")], tmp_path / "c.img", label="x")
    uuid = re.compile(r"Filesystem UUID:\s+(\S+)")
    dump = [subprocess.run(["dumpe2fs", "-h", str(p)], capture_output=True, text=True, check=True).stdout
            for p in (a, c)]
    assert uuid.search(dump[0]).group(1) != uuid.search(dump[1]).group(1)


def test_explicit_size_and_parents_filled(tmp_path: Path) -> None:
    img = write_ext4([file("x/y/z", b"z")], tmp_path / "r.img", size=parse_size("40M"))
    assert img.stat().st_size == 40 << 20
    fsck_clean(img)
    assert inode(img, "/x/y")["type"] == "directory" and inode(img, "/x/y")["mode"] == 0o755


def test_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="parent"):
        write_ext4([symlink("lib", "/usr/lib"), file("lib/x", b"")], tmp_path / "a.img")
    with pytest.raises(BadInput, match="newline"):
        write_ext4([file("a\nb", b"")], tmp_path / "b.img")
    with pytest.raises(BadInput, match="hard link"):
        write_ext4([Entry("a", Kind.FILE, hardlink_of="missing")], tmp_path / "c.img")
    with pytest.raises(BadInput, match="label"):
        write_ext4([directory("d")], tmp_path / "d.img", label="x" * 17)
    # These were a corrupt image (a fifo beside mke2fs's lost+found), tracebacks or exit 125.
    for kind in (file("lost+found", b""), symlink("lost+found", "x"), Entry("lost+found", Kind.FIFO, 0o644)):
        with pytest.raises(BadInput, match="ext4 keeps its own directory there"):
            write_ext4([kind], tmp_path / "e.img")
    with pytest.raises(BadInput, match="target is longer than 4095 bytes"):
        write_ext4([symlink("l", "a" * 5000)], tmp_path / "f.img")
    with pytest.raises(BadInput, match="a path longer than 4000 bytes"):
        write_ext4([file("/".join(["d" * 250] * 17), b"")], tmp_path / "g.img")
    with pytest.raises(BadInput, match="less than one block"):
        write_ext4([directory("d")], tmp_path / "h.img", size=1024)
    with pytest.raises(BadInput, match="does not fit in 64 KiB"):
        write_ext4([directory("d")], tmp_path / "i.img", size=64 << 10)
    assert list(tmp_path.iterdir()) == []
    fsck_clean(write_ext4([directory("lost+found", 0o700), file("lost+found/kept", b"k")], tmp_path / "ok.img"))


def test_a_label_is_bytes_as_the_shell_gave_them(tmp_path: Path) -> None:
    """A non-UTF-8 argument reaches Python as surrogates; encoding it strictly was a traceback."""
    img = write_ext4([directory("d")], tmp_path / "l.img", label=os.fsdecode(b"ab\xff"))
    out = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, check=True).stdout
    assert re.search(rb"Filesystem volume name:\s+ab\xff\n", out)


@pytest.mark.parametrize("text,size", [
    ("auto", None), ("AUTO", None), ("512M", 512 << 20), ("2G", 2 << 30), ("100000K", 102_400_000),
    ("4096", 4096), ("1GiB", 1 << 30), ("3t", 3 << 40),
])
def test_parse_size(text: str, size: int | None) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "0", "-5M", "1.5G", "12Q", "10 MB extra", "0x100", "auto2"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(BadInput, match="bad size"):
        parse_size(text)


def test_staging_keeps_a_sparse_file_sparse(tmp_path: Path) -> None:
    """A 256 MiB file with 5 bytes of data was staged as 256 MiB of written zeros."""
    import hashlib

    from bootlab.image import ext4

    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as f:
        f.seek(100_000)
        f.write(b"mid")
        f.seek((256 << 20) - 2)
        f.write(b"nd")
    staged = tmp_path / "staged"
    assert ext4._copy(host_file("sparse", sparse), staged, hashlib.sha256()) == 256 << 20
    assert staged.stat().st_size == 256 << 20 and staged.stat().st_blocks * 512 <= 1 << 20
    assert filecmp.cmp(sparse, staged, shallow=False)
    tail = tmp_path / "zeros-at-the-end"
    tail.write_bytes(b"x" + bytes(200_000))
    ext4._copy(host_file("tail", tail), staged.with_name("tail"), hashlib.sha256())
    assert staged.with_name("tail").read_bytes() == tail.read_bytes()
