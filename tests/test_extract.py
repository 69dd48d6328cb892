"""Extraction never writes outside its destination and needs no root."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from bootlab.errors import BadInput, BootlabError
from bootlab.image import cpio
from bootlab.image.entry import Entry, Kind, file, symlink
from bootlab.image.extract import MANIFEST, extract, safe_name


def raw_archive(names_and_data: list[tuple[str, int, bytes]]) -> bytes:
    """Hand-made members (name, mode, data), including names our writer would refuse."""
    out = b""
    for i, (name, mode, data) in enumerate(names_and_data, 1):
        out += cpio.header(ino=i, mode=mode, uid=0, gid=0, nlink=1, mtime=0, filesize=len(data),
                           name=name.encode()) + data + b"\0" * (-len(data) % 4)
    return out + cpio.header(ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0, name=b"TRAILER!!!")


@pytest.mark.parametrize("name, expected", [
    ("a/b", "a/b"), ("./a", "a"), ("/etc/passwd", "etc/passwd"), ("../x", None), ("a/../../x", None),
    (".", None), ("", None),
])
def test_safe_name(name: str, expected: str | None) -> None:
    assert safe_name(name) == expected


def test_hostile_archive_stays_inside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    data = raw_archive([
        ("../escape", 0o100644, b"no"),
        ("/abs", 0o100644, b"abs is fine, inside"),
        ("link", 0o120777, str(outside).encode()),  # a symlink pointing out ...
        ("link/pwned", 0o100644, b"no"),            # ... and a file written through it
        ("ok/file", 0o100644, b"yes"),
        ("..", 0o40755, b""), ("./../", 0o40755, b""),  # the parent itself: was ignored, unrecorded
        (".", 0o40700, b""), ("./", 0o40700, b""),  # the destination itself: its mode stays
    ])
    report = extract(data, dest)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape").exists()
    assert (dest / "abs").read_bytes() == b"abs is fine, inside"
    assert (dest / "ok/file").read_bytes() == b"yes"
    assert os.readlink(dest / "link") == str(outside)  # the link itself is kept, as data
    whys = {s["name"]: s["why"] for s in report.skipped}
    assert whys == {"../escape": "escapes the destination", "link/pwned": "would be written through a symlink",
                    "..": "escapes the destination", "./../": "escapes the destination"}
    assert oct(dest.stat().st_mode & 0o777) != oct(0o700)
    assert json.loads((dest / MANIFEST).read_text())["skipped"]


def test_modes_links_and_patterns(tmp_path: Path) -> None:
    entries = [Entry("ro", Kind.DIR, 0o555), file("ro/f", b"data", 0o400), symlink("s", "ro/f"),
               file("x", b"1"), Entry("y", Kind.FILE, hardlink_of="x")]
    buf = io.BytesIO()
    cpio.write(buf, entries)
    image = buf.getvalue()
    extract(image, tmp_path / "all")
    assert (tmp_path / "all/ro/f").read_bytes() == b"data"
    assert oct((tmp_path / "all/ro").stat().st_mode & 0o777) == oct(0o555)
    assert (tmp_path / "all/x").stat().st_ino == (tmp_path / "all/y").stat().st_ino
    assert (tmp_path / "all/y").read_bytes() == b"1"
    extract(image, tmp_path / "some", ["ro/*"])
    assert sorted(p.name for p in (tmp_path / "some").rglob("*")) == ["f", "ro"]


def test_without_root_nodes_and_owners_go_to_the_manifest() -> None:
    """As a real unprivileged process: the CLI runs after setuid(nobody)."""
    import tempfile

    entries = [Entry("dev/console", Kind.CHAR, 0o600, rdev=(5, 1)),
               Entry("home", Kind.FILE, 0o644, uid=1000, gid=1000, data=b"mine")]
    buf = io.BytesIO()
    cpio.write(buf, entries)
    work = Path(tempfile.mkdtemp(prefix="bootlab-nonroot-"))  # /tmp/pytest-of-root is 0700
    try:
        os.chmod(work, 0o777)
        img = work / "img.cpio"
        img.write_bytes(buf.getvalue())
        img.chmod(0o644)
        dest = work / "out"
        drop_and_run = (
            "import os, sys, json, fnmatch, bootlab.cli, bootlab.image.extract, bootlab.image.listing\n"
            "bootlab.cli.build_parser().parse_args(['initramfs', 'ls', 'x'])  # load lazy imports as root\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            f"sys.exit(bootlab.cli.main(['initramfs', 'extract', {str(img)!r}, '-C', {str(dest)!r}]))\n")
        r = subprocess.run([sys.executable, "-c", drop_and_run], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("\n") == 1 and "recorded in" in r.stderr
        manifest = json.loads((dest / MANIFEST).read_text())
        whys = {m["path"]: m["why"] for m in manifest["not_applied"]}
        assert whys == {"dev/console": "device node needs root", "home": "ownership needs root"}
        assert (dest / "home").read_bytes() == b"mine"
        assert (dest / "home").stat().st_uid == 65534
        assert not (dest / "dev/console").exists()
    finally:
        import shutil

        shutil.rmtree(work)


def _image(*segments: tuple[str, list[Entry]]) -> bytes:
    from bootlab.image import compress

    out = b""
    for algorithm, entries in segments:
        buf = io.BytesIO()
        cpio.write(buf, entries)
        out += buf.getvalue() if algorithm == "none" else compress.compress(algorithm, buf.getvalue())
    return out


def _tree(root: Path) -> dict[str, tuple[int, bytes | str | None]]:
    """Everything extract decides about each path: mode and contents (or link target)."""
    out: dict[str, tuple[int, bytes | str | None]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
        out[str(p.relative_to(root))] = (st.st_mode, data)
    return out


def _decoders() -> list[object]:
    """readahead's worker threads still alive. Counting all threads would also count other
    tests' VM threads, which end in their own time."""
    import threading

    return [t for t in threading.enumerate() if t.name == "bootlab-decompress"]


BIG_FILE = random.Random(5).randbytes(3 << 20)  # incompressible: several pieces in and out
ENTRIES = [Entry("d", Kind.DIR, 0o750), file("d/big", BIG_FILE, 0o640), file("d/small", b"s"),
           symlink("d/l", "big"), file("x", b"1"), Entry("y", Kind.FILE, hardlink_of="x"),
           file("empty", b"")]


@pytest.mark.parametrize("algorithm", ["zstd", "gzip", "xz", "lz4"])
def test_compressed_segments_extract_like_plain_ones(tmp_path: Path, algorithm: str) -> None:
    extract(_image(("none", ENTRIES)), tmp_path / "plain")
    extract(_image((algorithm, ENTRIES)), tmp_path / algorithm)
    assert _tree(tmp_path / algorithm) == _tree(tmp_path / "plain")
    assert (tmp_path / algorithm / "d/big").read_bytes() == BIG_FILE
    assert (tmp_path / algorithm / "x").stat().st_ino == (tmp_path / algorithm / "y").stat().st_ino


@pytest.mark.parametrize("damage", ["cut", "flip"])
@pytest.mark.parametrize("state", ["absent", "absent-parents", "empty", "full"])
def test_a_bad_image_leaves_the_destination_as_it_was(tmp_path: Path, state: str, damage: str) -> None:
    """The first segment is written, and some of the second, before the second turns out to be
    cut short or corrupt (its checksum is checked at its end)."""
    early = _image(("none", [file("early", b"e")]))
    good = early + _image(("zstd", ENTRIES))
    if damage == "cut":
        bad = good[:-100]
    else:
        at = (len(early) + len(good)) // 2  # in the middle of the big file
        bad = good[:at] + bytes([good[at] ^ 0x10]) + good[at + 1:]
    dest = tmp_path / ("a/b/dest" if state == "absent-parents" else "dest")
    if state in ("empty", "full"):
        dest.mkdir()
    if state == "full":
        (dest / "mine").write_bytes(b"keep")
    with pytest.raises(BadInput, match="truncated" if damage == "cut" else "corrupt"):
        extract(bad, dest)
    assert not _decoders()  # the decoder thread is gone too
    if state == "absent-parents":
        assert list(tmp_path.iterdir()) == []
    elif state == "absent":
        assert not dest.exists()
    else:
        assert sorted(p.name for p in dest.iterdir()) == (["mine"] if state == "full" else [])
    extract(good, dest)
    assert (dest / "early").read_bytes() == b"e" and (dest / "d/big").read_bytes() == BIG_FILE


@pytest.mark.parametrize("algorithm", ["zstd", "gzip"])  # pool buffers / fresh pieces
def test_a_failing_write_stops_the_decoder_thread(tmp_path: Path, algorithm: str) -> None:
    """The decoder is ahead by several pieces when the first write fails: it must not hang."""
    from bootlab.image.initramfs import read_segments

    image = _image((algorithm, ENTRIES))

    class Full:
        def write(self, piece: memoryview) -> None:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    with pytest.raises(OSError, match="No space"):
        read_segments(image, keep_data=False, visit=lambda seg, m: Full() if m.size else None)
    assert not _decoders()


def test_one_segment_out_of_range_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="segments 0 to 1"):
        extract(_image(("none", [file("a", b"a")]), ("gzip", [file("b", b"b")])), tmp_path / "d", segment=2)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("state", ["absent", "empty", "full"])
def test_a_pattern_that_selects_nothing_is_bad_input_and_writes_nothing(tmp_path: Path, state: str) -> None:
    """As tar says "Not found in archive"; a typo would otherwise extract nothing in silence.
    The other pattern does match (in segment 1), so its files were written, then taken back."""
    image = _image(("none", [file("etc/a", b"a")]), ("gzip", [file("usr/b", b"b"), file("usr/c", b"c")]))
    dest = tmp_path / "dest"
    if state != "absent":
        dest.mkdir()
    if state == "full":
        (dest / "mine").write_bytes(b"keep")
    with pytest.raises(BadInput, match=r"^no entry matches 'ur/\*'; nothing was extracted"):
        extract(image, dest, ["usr/*", "ur/*"])
    with pytest.raises(BadInput, match=r"^no entry of segment 1 matches 'etc/\*', '/etc/a'"):
        extract(image, dest, ["/usr/b", "etc/*", "/etc/a"], segment=1)
    assert (sorted(p.name for p in dest.iterdir()) == (["mine"] if state == "full" else [])
            if state != "absent" else not dest.exists())
    extract(image, dest, ["/usr/b", "etc/*"])  # a leading / matches too
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.name != "mine") == [
        "etc", "etc/a", "usr", "usr/b"]


def test_a_failed_write_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """A file-size limit stands in for a full disk: the big file's write fails (EFBIG)."""
    import resource
    import signal

    img = tmp_path / "img"
    img.write_bytes(_image(("zstd", ENTRIES)))

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    r = subprocess.run([sys.executable, "-m", "bootlab", "initramfs", "extract", str(img),
                        "-C", str(tmp_path / "out")], capture_output=True, text=True, preexec_fn=limit,
                       check=False)
    assert r.returncode == 125, r.stderr
    assert r.stderr.count("\n") == 1 and "File too large" in r.stderr and "d/big" in r.stderr
    assert not (tmp_path / "out").exists()


def test_an_uncreatable_destination_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(BadInput, match="cannot create it"):
        extract(_image(("none", ENTRIES)), tmp_path / "file" / "sub")


def _members(*members: tuple[str, int, bytes, int, int]) -> bytes:
    """Hand-made members (name bytes, mode, data, ino, nlink) with a trailer."""
    out = b""
    for name, mode, data, ino, nlink in members:
        out += cpio.header(ino=ino, mode=mode, uid=0, gid=0, nlink=nlink, mtime=0, filesize=len(data),
                           name=name) + data + b"\0" * (-len(data) % 4)
    return out + cpio.header(ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0, name=b"TRAILER!!!")


def test_the_manifest_is_never_written_through_what_holds_its_name(tmp_path: Path) -> None:
    """A member named like the manifest (a symlink out, a fifo), or a symlink of that name
    already in DIR: the manifest used to be written through it, or wait on the fifo forever."""
    victim = tmp_path / "victim"
    victim.write_text("mine")
    for n, member in enumerate([(MANIFEST.encode(), 0o120777, str(victim).encode(), 1, 1),
                                (MANIFEST.encode(), 0o010644, b"", 1, 1), None]):
        dest = tmp_path / f"d{n}"
        if member is None:  # the name already taken in a DIR that holds files
            dest.mkdir()
            (dest / MANIFEST).symlink_to(victim)
        report = extract(_members(*[m for m in [member] if m], (b"../esc", 0o100644, b"x", 2, 1)), dest)
        assert victim.read_text() == "mine"
        assert (dest / MANIFEST).is_file() and not (dest / MANIFEST).is_symlink()
        assert json.loads((dest / MANIFEST).read_text())["skipped"] == report.skipped
        assert len(report.skipped) == (2 if member else 1)


def test_what_cannot_be_made_here_is_skipped_not_fatal(tmp_path: Path) -> None:
    """Each of these was a traceback or exit 125 (leaving a DIR that held files half written)."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine").write_text("kept")
    report = extract(_members(
        (b"a\0b", 0o100644, b"nul in a name", 1, 1),
        (b"s", 0o120777, b"ab\0c", 2, 1),                    # nul in a symlink target
        (b"e", 0o120777, b"", 3, 1),                         # empty symlink target
        (b"c", 0o020600, b"", 4, 1),                         # char device ...
        (b"x" * 300, 0o100644, b"long", 5, 1),               # a name ext4 and tmpfs cannot hold
        (b"d", 0o040755, b"", 6, 1), (b"d/in", 0o100644, b"1", 7, 1),
        (b"d", 0o100644, b"file over a full dir", 8, 1),     # the kernel's rmdir fails too
        (b"f", 0o040755, b"", 9, 1), (b"f", 0o100644, b"F", 10, 1),      # empty dir: replaced
        (b"g", 0o040755, b"", 11, 1), (b"g", 0o120777, b"f", 12, 1),
        (b"h1", 0o100644, b"", 13, 2), (b"h1", 0o040755, b"", 14, 1),   # first link replaced ...
        (b"h2", 0o100644, b"H", 13, 2),                                 # ... the second stands alone
    ), dest)
    whys = {s["name"]: s["why"] for s in report.skipped}
    assert set(whys) == {"a\0b", "s", "e", "x" * 300, "d"}, whys
    assert (dest / "mine").read_text() == "kept"
    assert (dest / "d/in").read_text() == "1" and (dest / "f").read_text() == "F"
    assert os.readlink(dest / "g") == "f" and (dest / "h1").is_dir() and (dest / "h2").read_text() == "H"


def test_device_numbers_beyond_dev_t_are_skipped(tmp_path: Path) -> None:
    head = cpio.header(ino=1, mode=0o020600, uid=0, gid=0, nlink=1, mtime=0, filesize=0, name=b"c",
                       rdevmajor=0xFFFFFFFF, rdevminor=0xFFFFFFFF)
    data = head + cpio.header(ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, filesize=0, name=b"TRAILER!!!")
    (tmp_path / "d").mkdir()
    (tmp_path / "d/c").write_text("already here")
    report = extract(data, tmp_path / "d")
    assert [s["why"] for s in report.skipped] == ["device number 4294967295:4294967295 out of range"]
    assert (tmp_path / "d/c").read_text() == "already here"  # a skipped entry removes nothing


def test_a_directory_where_the_manifest_goes_is_named_and_nothing_is_left(tmp_path: Path) -> None:
    dest = tmp_path / "d"
    (dest / MANIFEST).mkdir(parents=True)
    with pytest.raises(BootlabError, match=f"Is a directory \\({dest}/{MANIFEST}\\)$"):
        extract(_members((b"../esc", 0o100644, b"x", 1, 1)), dest)
    assert [p.name for p in dest.iterdir()] == [MANIFEST]
