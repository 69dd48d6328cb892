"""Our newc archives, read back by GNU cpio and by libarchive's bsdcpio."""

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from bootlab.errors import BadInput
from bootlab.image import cpio
from bootlab.image.entry import Entry, Kind, Tree, char_device, directory, file, symlink

ENTRIES = [
    directory("bin"),
    file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755),
    file("empty", b""),
    file("odd-size", b"x" * 1023),
    symlink("bin/sh", "busybox"),
    char_device("dev/console", 5, 1),
    Entry("dev/sda", Kind.BLOCK, 0o660, rdev=(8, 0)),
    Entry("run/fifo", Kind.FIFO, 0o600),
    Entry("owned", Kind.FILE, 0o640, uid=1000, gid=100, mtime=1_700_000_000, data=b"mine"),
]


def archive(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    n = cpio.write(buf, entries)
    assert n == len(buf.getvalue())
    return buf.getvalue()


@pytest.mark.parametrize("tool", ["cpio", "bsdcpio"])
def test_other_tools_list_the_same_entries(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is missing: the project's setup installs it")
    out = subprocess.run([tool, "-itv"], input=archive(ENTRIES), capture_output=True, check=True).stdout
    lines = out.decode().splitlines()
    names = [l.split()[-1] if "->" not in l else l.split()[-3] for l in lines]
    assert names == [e.path for e in ENTRIES]
    by_name = dict(zip(names, lines))
    assert by_name["dev/console"].startswith("crw-------")
    assert "5," in by_name["dev/console"] and " 1 " in by_name["dev/console"]
    assert by_name["dev/sda"].startswith("brw-rw----")
    assert by_name["run/fifo"].startswith("prw-------")
    assert by_name["bin/sh"].startswith("lrwxrwxrwx") and by_name["bin/sh"].endswith("-> busybox")
    assert by_name["bin/hello"].startswith("-rwxr-xr-x")


def test_gnu_cpio_extracts_identical_contents(tmp_path: Path) -> None:
    data = archive([file("a/b", b"\0\1binary\xff" * 100, 0o600), file("c", b"odd")])
    subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=tmp_path, check=True)
    assert (tmp_path / "a/b").read_bytes() == b"\0\1binary\xff" * 100
    assert (tmp_path / "c").read_bytes() == b"odd"


def test_layout_is_4_byte_aligned_and_ends_with_trailer() -> None:
    data = archive(ENTRIES)
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-128:]
    # ownership and mtime land in the header fields
    i = data.index(b"owned\0") - cpio.HEADER_SIZE
    head = data[i:i + cpio.HEADER_SIZE]
    fields = [int(head[6 + 8 * k: 14 + 8 * k], 16) for k in range(13)]
    assert fields[2:4] == [1000, 100] and fields[5] == 1_700_000_000 and fields[6] == 4


def test_same_input_gives_identical_bytes() -> None:
    assert archive(ENTRIES) == archive(list(ENTRIES))


def test_out_of_range_field_is_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        archive([Entry("x", Kind.FILE, uid=2**32, data=b"")])


@pytest.mark.parametrize("bad", ["/abs", "../up", "a/../../b", "", "./x"])
def test_entry_paths_must_stay_inside(bad: str) -> None:
    with pytest.raises(ValueError):
        file(bad, b"")


def test_tree_adds_parents_and_sorts_parents_first() -> None:
    t = Tree()
    t.add(file("usr/lib/x/y", b""))
    t.add(file("a", b""))
    paths = [e.path for e in t.sorted()]
    assert paths == ["a", "usr", "usr/lib", "usr/lib/x", "usr/lib/x/y"]
    assert t.entries["usr/lib"].kind is Kind.DIR


def test_tree_symlink_replacing_a_directory_moves_its_children() -> None:
    """bin/ from busybox, then bin -> usr/bin from a merged-/usr ELF closure: nothing is lost."""
    t = Tree()
    t.add(file("bin/busybox", b"bb"))
    t.add(symlink("bin/sh", "busybox"))
    t.add(symlink("bin", "usr/bin"))
    t.add(file("bin/ls", b"ls"))  # added later through the link
    by = {e.path: e for e in t.sorted()}
    assert by["bin"].target == "usr/bin"
    assert by["usr/bin/busybox"].read() == b"bb" and by["usr/bin/sh"].target == "busybox"
    assert by["usr/bin/ls"].read() == b"ls"
    assert not any(p.startswith("bin/") for p in by)


@pytest.mark.parametrize("entries", [
    [Entry("link", Kind.FILE, 0o644, hardlink_of="missing")],
    [directory("d"), Entry("link", Kind.FILE, 0o644, hardlink_of="d")],
    [file("a", b"x"), Entry("b", Kind.FILE, 0o644, hardlink_of="a"), Entry("c", Kind.FILE, 0o644, hardlink_of="b")],
])
def test_a_hard_link_needs_a_file_to_link_to(entries: list[Entry]) -> None:
    """A lone link to a missing target or to a directory used to become an empty file."""
    with pytest.raises(BadInput, match="hard link .*: not a file in the archive"):
        cpio.write(io.BytesIO(), entries)
