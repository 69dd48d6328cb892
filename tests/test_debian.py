"""Debian root filesystems: real mmdebstrap runs against Debian's mirrors (built once, then from
the cache in ~/.cache/bootlab/debian), checked with e2fsprogs' own tools and by booting one."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from bootlab.errors import BadInput, BootlabError
from bootlab.image import debian
from bootlab.image.debian import Request, check_init, debian_rootfs, read_tarball
from bootlab.image.entry import Entry, Kind


def debugfs(img: Path, request: str) -> str:
    r = subprocess.run(["debugfs", "-R", request, str(img)], capture_output=True, text=True, check=True)
    return r.stdout


def stat_of(img: Path, path: str) -> dict[str, str]:
    """The fields of `debugfs stat` that the tests look at."""
    out = debugfs(img, f"stat {path}")
    fields = dict(re.findall(r"(Inode|Type|Mode|User|Group|Links):\s+(\S+)", out))
    dev = re.search(r"Device major/minor number: (\d+):(\d+)", out)
    if dev:
        fields["rdev"] = f"{int(dev.group(1))}:{int(dev.group(2))}"
    return fields


@pytest.fixture(scope="module")
def minbase(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """bookworm minbase, built once (the tarball stays cached for later runs)."""
    lines: list[str] = []
    img = debian_rootfs("bookworm", tmp_path_factory.mktemp("debian") / "bookworm.img",
                        progress=lines.append)
    return img, lines


def test_minbase_is_a_clean_ext4(minbase: tuple[Path, list[str]]) -> None:
    img, lines = minbase
    r = subprocess.run(["e2fsck", "-fn", str(img)], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(line.startswith("wrote ") for line in lines)


def test_minbase_is_debian_12(minbase: tuple[Path, list[str]]) -> None:
    assert re.fullmatch(r"12\.\d+\n?", debugfs(minbase[0], "cat /etc/debian_version"))


def test_owners_modes_links_and_devices_survive(minbase: tuple[Path, list[str]]) -> None:
    img = minbase[0]
    shadow = stat_of(img, "/etc/shadow")
    assert (shadow["User"], shadow["Group"], shadow["Mode"]) == ("0", "42", "0640")
    assert stat_of(img, "/usr/bin/passwd")["Mode"] == "04755"  # setuid kept
    assert stat_of(img, "/usr/bin/chage")["Group"] == "42"  # root:shadow, setgid
    assert stat_of(img, "/bin")["Type"] == "symlink"  # merged /usr
    null = stat_of(img, "/dev/null")
    if not null:
        pytest.skip("this minbase has no /dev/null")
    assert (null["Type"], null["rdev"], null["Mode"]) == ("character", "1:3", "0666")
    perl, alias = stat_of(img, "/usr/bin/perl"), stat_of(img, "/usr/bin/perl5.36.0")
    assert perl["Inode"] == alias["Inode"] and perl["Links"] == "2"  # a hard link, one inode


def test_second_call_uses_the_cache(minbase: tuple[Path, list[str]], tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(debian, "_mmdebstrap_path", lambda: None)  # mmdebstrap cannot run now
    lines: list[str] = []
    start = time.monotonic()
    img = debian_rootfs("bookworm", tmp_path / "again.img", progress=lines.append)
    assert time.monotonic() - start < 10
    assert not any(line.startswith("I: ") for line in lines)  # no mmdebstrap output
    assert any("cached" in line for line in lines)
    assert img.read_bytes() == minbase[0].read_bytes()  # same tarball, same image


def test_include_adds_the_package(tmp_path: Path) -> None:
    img = debian_rootfs("bookworm", tmp_path / "file.img", include=["file"], progress=lambda s: None)
    assert stat_of(img, "/usr/bin/file")["Type"] == "regular"
    assert "magic" in debugfs(img, "ls /usr/share/misc")


def test_unknown_suite_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="unknown suite 'nosuchsuite'"):
        debian_rootfs("nosuchsuite", tmp_path / "x.img", progress=lambda s: None)
    assert not (tmp_path / "x.img").exists()


def test_unknown_package_is_bad_input(tmp_path: Path) -> None:
    # the extract variant fails at the download, before installing anything: quick
    with pytest.raises(BadInput, match="Unable to locate package no-such-package-bootlab"):
        debian_rootfs("bookworm", tmp_path / "x.img", variant="extract",
                      include=["no-such-package-bootlab"], progress=lambda s: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"suite": "-x"}, "bad suite"),
    ({"suite": "bookworm", "variant": "tiny"}, "unknown variant"),
    ({"suite": "bookworm", "include": ("a,b",)}, "bad package name"),
    ({"suite": "bookworm", "include": ("--force",)}, "bad package name"),
    ({"suite": "bookworm", "arch": "x86 64"}, "bad architecture"),
])
def test_request_refuses_bad_input(kwargs: dict, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        Request(**kwargs)


def test_cache_key_ignores_include_order() -> None:
    a = Request("bookworm", include=("file", "less"))
    assert a.key() == Request("bookworm", include=("less", "file", "file")).key()
    assert a.key() != Request("bookworm", include=("file",)).key()
    assert a.key() != Request("bookworm", include=("file", "less"), arch="arm64").key()
    assert a.argv("mmdebstrap")[-3:] == ["--", "bookworm", "-"]


def test_missing_mmdebstrap_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(debian, "_mmdebstrap_path", lambda: None)
    with pytest.raises(BadInput, match=r"apt-get install mmdebstrap"):
        debian_rootfs("bookworm", tmp_path / "x.img", progress=lambda s: None)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _info(name: str, type: bytes, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type
    for k, v in fields.items():
        setattr(info, k, v)
    return info


def test_read_tarball_keeps_every_kind(tmp_path: Path) -> None:
    (tmp_path / "t.tar").write_bytes(_tar([
        (_info("./", tarfile.DIRTYPE, mode=0o755), b""),
        (_info("./etc", tarfile.DIRTYPE, mode=0o755, mtime=7), b""),
        (_info("./etc/shadow", tarfile.REGTYPE, mode=0o640, gid=42, mtime=9), b"root:*:1::::::\n"),
        (_info("./etc/alias", tarfile.LNKTYPE, linkname="./etc/shadow", mode=0o640, gid=42), b""),
        (_info("./etc/link", tarfile.SYMTYPE, linkname="shadow", mode=0o777), b""),
        (_info("./dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o660, gid=6), b""),
        (_info("./dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), b""),
        (_info("./run/fifo", tarfile.FIFOTYPE, mode=0o600, uid=1000), b""),
        (_info("./ping", tarfile.REGTYPE, mode=0o755,
               pax_headers={"SCHILY.xattr.security.capability": "x"}), b"\x7fELF"),
    ]))
    notes: list[str] = []
    got = {e.path: e for e in read_tarball(tmp_path / "t.tar", notes.append)}
    assert "" not in got and "." not in got
    assert got["etc"] == Entry("etc", Kind.DIR, 0o755, mtime=7)
    assert got["etc/shadow"] == Entry("etc/shadow", Kind.FILE, 0o640, gid=42, mtime=9, data=b"root:*:1::::::\n")
    assert got["etc/alias"].hardlink_of == "etc/shadow"
    assert got["etc/link"].target == "shadow"
    assert (got["dev/sda"].kind, got["dev/sda"].rdev, got["dev/sda"].gid) == (Kind.BLOCK, (8, 0), 6)
    assert (got["dev/null"].kind, got["dev/null"].rdev) == (Kind.CHAR, (1, 3))
    assert (got["run/fifo"].kind, got["run/fifo"].uid) == (Kind.FIFO, 1000)
    assert any("extended attributes" in n for n in notes)


def test_check_init_follows_merged_usr() -> None:
    usr = [Entry("sbin", Kind.SYMLINK, 0o777, target="usr/sbin"), Entry("usr/sbin", Kind.DIR, 0o755)]
    check_init(usr + [Entry("usr/sbin/init", Kind.SYMLINK, 0o777, target="/lib/systemd/systemd")])
    with pytest.raises(BootlabError, match="no /sbin/init"):
        check_init(usr)
    assert Request("bookworm", include=("systemd-sysv",)).wants_init()
    assert not Request("bookworm", include=("file",)).wants_init()


@pytest.mark.vm
def test_boots_as_the_root(minbase: tuple[Path, list[str]], tmp_path: Path) -> None:
    img = tmp_path / "root.img"  # a copy: the guest mounts it read-write
    img.write_bytes(minbase[0].read_bytes())
    r = subprocess.run([sys.executable, "-m", "bootlab", "run", "--accel", "tcg", "--disk", str(img),
                        "--root", "/dev/vda", "--", "cat", "/etc/debian_version"],
                       check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"12\.\d+\n", r.stdout)
