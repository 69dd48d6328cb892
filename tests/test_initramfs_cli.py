"""`bootlab initramfs` on real archives: Debian's initrd, archives from GNU cpio, our own builds."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bootlab.image import compress, cpio
from bootlab.image.entry import Entry, Kind, file
from conftest import bootlab_cli

DEBIAN_INITRD = sorted(Path("/boot").glob("initrd.img-*"))


def cpio_bytes(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    cpio.write(buf, entries)
    return buf.getvalue()


@pytest.fixture(scope="module")
def multi_segment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Early microcode-like uncompressed cpio, NUL padding, then gzip and zstd segments."""
    early = cpio_bytes([Entry("kernel", Kind.DIR, 0o755), Entry("kernel/x86", Kind.DIR, 0o755),
                        Entry("kernel/x86/microcode", Kind.DIR, 0o755),
                        file("kernel/x86/microcode/GenuineIntel.bin", b"\x01" * 1000)])
    main = cpio_bytes([file("init", b"#!/bin/sh\n", 0o755), Entry("dev", Kind.DIR, 0o755),
                       Entry("dev/console", Kind.CHAR, 0o600, rdev=(5, 1))])
    late = cpio_bytes([file("etc/late", b"last")])
    p = tmp_path_factory.mktemp("multi") / "initrd.img"
    p.write_bytes(early + b"\0" * 512 + compress.compress("gzip", main) + compress.compress("zstd", late))
    return p


@pytest.mark.skipif(not DEBIAN_INITRD or not shutil.which("lsinitramfs"), reason="needs Debian's initrd")
def test_ls_matches_lsinitramfs_on_debians_initrd() -> None:
    img = DEBIAN_INITRD[-1]
    ours = bootlab_cli("initramfs", "ls", str(img))
    theirs = subprocess.run(["lsinitramfs", str(img)], capture_output=True, check=True)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout.decode().splitlines() == theirs.stdout.decode().splitlines()


def test_examine_shows_every_segment(multi_segment: Path) -> None:
    r = bootlab_cli("initramfs", "examine", "--json", str(multi_segment))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["compression"] for row in rows] == ["none", "gzip", "zstd"]
    assert [row["entries"] for row in rows] == [4, 3, 1]
    assert rows[0]["offset"] == 0 and rows[1]["offset"] == rows[0]["end"] + 512
    assert rows[2]["end"] == multi_segment.stat().st_size
    text = bootlab_cli("initramfs", "examine", str(multi_segment)).stdout.decode()
    assert text.splitlines()[0].split()[:4] == ["segment", "offset", "end", "compression"]


def test_ls_long_and_json(multi_segment: Path) -> None:
    long = bootlab_cli("initramfs", "ls", "-l", str(multi_segment)).stdout.decode().splitlines()
    console = next(l for l in long if l.endswith(" dev/console"))
    assert console.startswith("crw-------") and "5,   1" in console
    entries = json.loads(bootlab_cli("initramfs", "ls", "--json", str(multi_segment)).stdout)
    assert [e["name"] for e in entries][-1] == "etc/late" and entries[-1]["segment"] == 2


def test_listing_a_zstd_image_loads_no_more_than_it_needs(tmp_path: Path) -> None:
    """Start-up is a fifth of `ls` on Debian's initrd (bench/initramfs.py): these modules, each
    1-4 ms, once crept onto that path through a top-level import, and must not come back."""
    img = tmp_path / "initrd.img"
    img.write_bytes(compress.compress("zstd", cpio_bytes([file("init", b"#!/bin/sh\n", 0o755)])))
    script = ("import sys\nfrom bootlab.cli import main\nstatus = main(sys.argv[1:])\n"
              "print(status, *sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", script, "initramfs", "ls", str(img)], capture_output=True, check=True)
    assert r.stdout == b"init\n"
    status, *loaded = r.stderr.decode().split()
    assert status == "0"
    assert "bootlab.image.libzstd" in loaded  # (the listing did run)
    heavy = {"pathlib", "shutil", "bz2", "lzma", "lz4", "lzo", "zstandard", "typing", "dataclasses",
             "threading", "subprocess", "json", "bootlab.vm", "bootlab.image.entry"}
    assert heavy.isdisjoint(loaded), heavy & set(loaded)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["initramfs", "ls", "IMG"], ["initramfs", "ls", "--json", "IMG"],
                                  ["initramfs", "examine", "IMG"], ["run", "--dry-run", "--", "true"]])
def test_output_to_a_full_device_is_one_line(multi_segment: Path, args: list[str]) -> None:
    """`> /dev/full` was an OSError traceback (exit 1) from each of these."""
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "bootlab", *[str(multi_segment) if a == "IMG" else a for a in args]],
                           stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE, timeout=60)
    assert (r.returncode, r.stderr) == (125, b"bootlab: error: writing failed: No space left on device\n")


def test_extract_patterns_may_follow_the_options(multi_segment: Path, tmp_path: Path) -> None:
    """As the README writes it: argparse alone refused PATTERNs after -C DIR."""
    for n, args in enumerate([["-C", "{d}", "--segment", "2", "etc/*"], ["etc/*", "-C", "{d}"], ["-C", "{d}", "etc/*"]]):
        dest = tmp_path / str(n)
        r = bootlab_cli("initramfs", "extract", str(multi_segment), *[a.format(d=dest) for a in args])
        assert r.returncode == 0, (args, r.stderr)
        assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["etc", "etc/late"]
    r = bootlab_cli("initramfs", "extract", str(multi_segment), "-C", str(tmp_path / "x"), "etc/*", "--bogus")
    assert r.returncode == 2 and b"unrecognized arguments: etc/* --bogus" in r.stderr
    assert not (tmp_path / "x").exists()


def test_a_pipe_is_read_like_a_file(multi_segment: Path, tmp_path: Path) -> None:
    """`<(zcat ...)` or /dev/stdin cannot be mapped; it is read whole instead."""
    data = multi_segment.read_bytes()
    assert (bootlab_cli("initramfs", "ls", "/dev/stdin", input=data).stdout
            == bootlab_cli("initramfs", "ls", str(multi_segment)).stdout != b"")
    r = bootlab_cli("initramfs", "extract", "/dev/stdin", "-C", str(tmp_path / "x"), input=data)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x/etc/late").read_bytes() == b"last"


def test_extract_one_segment_or_all(multi_segment: Path, tmp_path: Path) -> None:
    r = bootlab_cli("initramfs", "extract", str(multi_segment), "-C", str(tmp_path / "all"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "all/kernel/x86/microcode/GenuineIntel.bin").read_bytes() == b"\x01" * 1000
    assert (tmp_path / "all/etc/late").read_bytes() == b"last"
    r = bootlab_cli("initramfs", "extract", str(multi_segment), "-C", str(tmp_path / "one"), "--segment", "2")
    assert sorted(str(p.relative_to(tmp_path / "one")) for p in (tmp_path / "one").rglob("*")) == ["etc", "etc/late"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:-7], "truncated"),
    (lambda d: d + b"JUNKJUNK", "trailing junk"),
    (lambda d: b"\x89PNG" + d, "not an initramfs"),
    (lambda d: _flip(d, d.index(b"\x1f\x8b\x08") + 30), "corrupt gzip"),
    (lambda d: b"", "empty"),
])
def test_bad_images_are_one_line_and_status_2(multi_segment: Path, tmp_path: Path, mutate, message: str) -> None:
    bad = tmp_path / "bad.img"
    bad.write_bytes(mutate(multi_segment.read_bytes()))
    for action in (["ls"], ["examine"], ["extract", "-C", str(tmp_path / "x")]):
        r = bootlab_cli("initramfs", *action[:1], str(bad), *action[1:])
        assert r.returncode == 2, (action, r.stderr)
        assert len(r.stderr.decode().strip().splitlines()) == 1 and message in r.stderr.decode()
        assert r.stdout == b""
    assert not (tmp_path / "x").exists()  # nothing extracted from a bad image


def test_our_archives_list_the_same_in_gnu_cpio_and_bsdcpio(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text('busybox = true\ninit = "#!/bin/sh\\n"\n[[symlink]]\npath = "/l"\ntarget = "init"\n')
    out = tmp_path / "img"
    assert bootlab_cli("initramfs", "build", str(spec), "-o", str(out), "--compress", "none").returncode == 0
    ours = bootlab_cli("initramfs", "ls", str(out)).stdout.decode().splitlines()
    for tool in ("cpio", "bsdcpio"):
        theirs = subprocess.run([tool, "-it", "--quiet"] if tool == "cpio" else [tool, "-it"],
                                stdin=open(out, "rb"), capture_output=True, check=True).stdout.decode().splitlines()
        assert theirs == ours, tool


def test_build_is_reproducible_and_respects_source_date_epoch(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text('busybox = true\ninit = "#!/bin/sh\\n"\nbinaries = ["/usr/bin/env"]\n')
    outs = []
    for name, epoch in (("a", "0"), ("b", "0"), ("c", "1700000000")):
        out = tmp_path / name
        r = bootlab_cli("initramfs", "build", str(spec), "-o", str(out), env={"SOURCE_DATE_EPOCH": epoch})
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]
    assert gzip.decompress(outs[0])[:6] == b"070701"
    names = bootlab_cli("initramfs", "ls", str(tmp_path / "a")).stdout.decode().splitlines()
    assert any(n.endswith("libc.so.6") for n in names)  # env's ELF closure came along


@pytest.mark.parametrize("text, message", [
    ('[[file]]\npath = "/x"\nsource = "/no/such/file"\n', "no such file"),
    ('modules = ["no_such_module_xyz"]\n', "not found"),
    ('busybox = true\nbinaries = ["/no/such/binary"]\n', "/no/such/binary"),
])
def test_bad_spec_leaves_no_output(tmp_path: Path, text: str, message: str) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(text)
    out = tmp_path / "out.img"
    r = bootlab_cli("initramfs", "build", str(spec), "-o", str(out))
    assert r.returncode == 2
    assert message in r.stderr.decode() and len(r.stderr.decode().strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == [spec]


def test_an_empty_compress_is_refused_not_gzip(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text("[[file]]\npath = '/a'\ncontent = 'a'\n")
    r = bootlab_cli("initramfs", "build", str(spec), "-o", str(tmp_path / "o"), "--compress", "")
    assert r.returncode == 2 and r.stderr.decode().startswith("bootlab: error: unknown compression ''")
    assert not (tmp_path / "o").exists()


def test_compression_the_kernel_lacks_is_refused(tmp_path: Path) -> None:
    (tmp_path / "vmlinuz-9.9.9-test").write_bytes(Path(sorted(Path("/boot").glob("vmlinuz-*"))[-1]).read_bytes())
    (tmp_path / "config-9.9.9-test").write_text("CONFIG_RD_GZIP=y\n# CONFIG_RD_LZ4 is not set\n")
    spec = tmp_path / "s.toml"
    spec.write_text(f'kernel = "{tmp_path}/vmlinuz-9.9.9-test"\nrelease = "9.9.9-test"\n')
    r = bootlab_cli("initramfs", "build", str(spec), "-o", str(tmp_path / "o"), "--compress", "lz4")
    assert r.returncode == 2 and "CONFIG_RD_LZ4" in r.stderr.decode() and "gzip" in r.stderr.decode()
    assert not (tmp_path / "o").exists()


@pytest.mark.vm
@pytest.mark.parametrize("algorithm", ["none", *compress.ALGORITHMS])
def test_every_compression_boots_the_real_kernel(tmp_path: Path, algorithm: str) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text('busybox = true\ninit = """#!/bin/sh\nmount -t proc proc /proc\n'
                    'echo BOOTED-$(cat /proc/cmdline | wc -w)\nreboot -f\n"""\n')
    img = tmp_path / "img"
    assert bootlab_cli("initramfs", "build", str(spec), "-o", str(img), "--compress", algorithm).returncode == 0
    r = bootlab_cli("run", "--initrd", str(img), timeout=120)
    assert r.returncode == 0, r.stderr
    assert b"BOOTED-" in r.stdout


@pytest.mark.vm
def test_initrd_whose_init_fails_is_125_with_the_reason(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text('busybox = true\ninit = "#!/bin/sh\\nexit 3\\n"\n')
    img = tmp_path / "img"
    assert bootlab_cli("initramfs", "build", str(spec), "-o", str(img)).returncode == 0
    r = bootlab_cli("run", "--initrd", str(img), timeout=120)
    assert r.returncode == 125
    assert "exited with status 3" in r.stderr.decode()


@pytest.mark.vm
def test_run_with_a_spec_and_added_files(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools/hello.txt").write_text("hello from the host\n")
    spec = tmp_path / "s.toml"
    spec.write_text('[[file]]\npath = "/etc/motd"\ncontent = "spec was here\\n"\n')
    r = bootlab_cli("run", "--spec", str(spec), "--add", f"{tmp_path}/tools:/opt/tools",
                    "--add", "/usr/bin/env:/usr/local/bin/host-env", "--",
                    "sh", "-c", "cat /etc/motd /opt/tools/hello.txt; /usr/local/bin/host-env true && echo dyn-ok")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"spec was here\nhello from the host\ndyn-ok\n"


def _compressed_modules(dest: Path, names: list[str], suffix: str) -> Path:
    """The modules `names` need, from the default kernel's tree, compressed as a distro that
    sets CONFIG_MODULE_COMPRESS_* ships them (Debian's own are not), with a matching modules.dep."""
    from bootlab.image.compress import compress
    from bootlab.kernel.find import default_kernel
    from bootlab.kernel.image import inspect
    from bootlab.kernel.modules import ModuleIndex

    src = Path(f"/lib/modules/{inspect(default_kernel()).release}")
    rels = set(ModuleIndex.load(src).closure(names))
    algorithm = {".xz": "xz", ".zst": "zstd", ".gz": "gzip"}[suffix]
    for rel in rels:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / (rel + suffix)).write_bytes(compress(algorithm, (src / rel).read_bytes()))
    dep = [line for line in (src / "modules.dep").read_text().splitlines() if line.split(":")[0] in rels]
    (dest / "modules.dep").write_text("".join(
        " ".join(w + suffix if w.endswith(".ko") else w.replace(".ko:", f".ko{suffix}:") for w in line.split())
        + "\n" for line in dep))
    for extra in ("modules.alias", "modules.softdep", "modules.builtin"):
        if (src / extra).exists():
            (dest / extra).write_bytes((src / extra).read_bytes())
    return dest


@pytest.mark.vm
@pytest.mark.parametrize("suffix", ["", ".xz", ".zst"], ids=["plain", "ko.xz", "ko.zst"])
def test_spec_module_ext4_is_loaded_with_its_dependencies(tmp_path: Path, suffix: str) -> None:
    """modprobe inside finds the subset's regenerated modules.dep, compressed modules too."""
    spec = tmp_path / "s.toml"
    modules_dir = f'modules_dir = "{_compressed_modules(tmp_path / "mods", ["ext4"], suffix)}"\n' if suffix else ""
    spec.write_text('busybox = true\nmodules = ["ext4"]\n' + modules_dir + 'init = """#!/bin/sh\n'
                    'mount -t proc proc /proc\nmodprobe ext4\ncut -d" " -f1 /proc/modules\nreboot -f\n"""\n')
    img = tmp_path / "img"
    r = bootlab_cli("initramfs", "build", str(spec), "-o", str(img))
    assert r.returncode == 0, r.stderr
    names = bootlab_cli("initramfs", "ls", str(img)).stdout.decode().splitlines()
    assert any(n.endswith("/ext4.ko") for n in names)  # stored plain: busybox modprobe reads no .zst
    r = bootlab_cli("run", "--initrd", str(img), timeout=120)
    assert r.returncode == 0, r.stderr
    loaded = set(r.stdout.decode().split())
    assert {"ext4", "jbd2", "mbcache", "crc16"} <= loaded


def _flip(data: bytes, at: int) -> bytes:
    """Invert 40 bytes inside a compressed segment."""
    return data[:at] + bytes(x ^ 0xFF for x in data[at:at + 40]) + data[at + 40:]


def test_early_segment_comes_first_uncompressed(tmp_path: Path) -> None:
    early = tmp_path / "early/kernel/x86/microcode"
    early.mkdir(parents=True)
    (early / "AuthenticAMD.bin").write_bytes(b"\x02" * 300)
    spec = tmp_path / "s.toml"
    spec.write_text('init = "#!/bin/sh\\n"\n')
    out = tmp_path / "img"
    r = bootlab_cli("initramfs", "build", str(spec), "-o", str(out), "--compress", "zstd",
                    "--early", str(tmp_path / "early"))
    assert r.returncode == 0, r.stderr
    rows = json.loads(bootlab_cli("initramfs", "examine", "--json", str(out)).stdout)
    assert [row["compression"] for row in rows] == ["none", "zstd"]
    names = bootlab_cli("initramfs", "ls", str(out)).stdout.decode().splitlines()
    assert names[:4] == ["kernel", "kernel/x86", "kernel/x86/microcode", "kernel/x86/microcode/AuthenticAMD.bin"]


@pytest.mark.vm
def test_dynamic_c_init_gets_its_libraries(tmp_path: Path) -> None:
    """The seeds' classic: a dynamically linked /init. The builder adds ld.so and libc itself."""
    src = tmp_path / "init.c"
    src.write_text('#include <stdio.h>\n#include <unistd.h>\n#include <sys/reboot.h>\n'
                   'int main(void) { printf("dynamic init ok\\n"); fflush(stdout); sync();\n'
                   '  reboot(RB_AUTOBOOT); return 0; }\n')
    binary = tmp_path / "init"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(src)], check=True)
    spec = tmp_path / "s.toml"
    spec.write_text(f'init_file = "{binary}"\n')
    img = tmp_path / "img"
    assert bootlab_cli("initramfs", "build", str(spec), "-o", str(img)).returncode == 0
    names = bootlab_cli("initramfs", "ls", str(img)).stdout.decode().splitlines()
    assert any(n.endswith("libc.so.6") for n in names) and "lib64" in names
    assert not [n for n in names if n.startswith(str(tmp_path)[1:])]  # no second copy at its host path
    r = bootlab_cli("run", "--initrd", str(img), timeout=120)
    assert r.returncode == 0, r.stderr
    assert b"dynamic init ok" in r.stdout


def test_a_program_the_spec_places_gets_its_libraries_but_no_second_copy(tmp_path: Path) -> None:
    """The closure of a dynamic file put in by a tree or a [[file]] also copied the file itself
    to its host path: tmp/.../tree/tool beside /tool, usr/bin/env beside /bin/myenv."""
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy("/usr/bin/env", tree / "tool")
    spec = tmp_path / "s.toml"
    spec.write_text(f'[[tree]]\nsource = "{tree}"\npath = "/"\n'
                    '[[file]]\npath = "/bin/myenv"\nsource = "/usr/bin/env"\nmode = 0o755\n')
    img = tmp_path / "i.img"
    assert bootlab_cli("initramfs", "build", str(spec), "-o", str(img), "--compress", "none").returncode == 0
    names = bootlab_cli("initramfs", "ls", str(img)).stdout.decode().splitlines()
    assert {"tool", "bin/myenv", "usr/lib/x86_64-linux-gnu/libc.so.6"} <= set(names)
    assert not [n for n in names if n.startswith(str(tmp_path)[1:]) or n == "usr/bin/env"], names


def test_names_that_are_not_utf8_go_through_as_bytes(tmp_path: Path) -> None:
    """A host tree's non-UTF-8 name was a traceback in build, and in ls under a strict stdout."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / os.fsdecode(b"n\xff")).write_bytes(b"x")
    (tree / os.fsdecode(b"s\xfe")).symlink_to(os.fsdecode(b"t\xfe"))
    spec = tmp_path / "s.toml"
    spec.write_text(f'[[tree]]\nsource = "{tree}"\npath = "/x"\n')
    img = tmp_path / "i.img"
    r = bootlab_cli("initramfs", "build", str(spec), "-o", str(img), "--compress", "none")
    assert r.returncode == 0, r.stderr
    gnu = subprocess.run(["cpio", "-t", "--quiet"], input=img.read_bytes(), capture_output=True, check=True).stdout
    assert {b"x/n\xff", b"x/s\xfe"} <= set(gnu.splitlines())
    r = bootlab_cli("initramfs", "ls", "-l", str(img), env={"PYTHONIOENCODING": "utf-8"})
    assert r.returncode == 0, r.stderr
    assert b" x/n\xff\n" in r.stdout and b" x/s\xfe -> t\xfe\n" in r.stdout


def test_more_ways_to_get_build_and_ls_wrong(tmp_path: Path) -> None:
    """Each was a traceback, or (-o the spec) overwrote the spec with the image."""
    spec = tmp_path / "s.toml"
    spec.write_text('init = "#!/bin/sh\\n"\n')
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    cases = [
        (["build", str(spec), "-o", str(spec)], {}, "that is the spec itself"),
        (["build", str(spec), "-o", str(tmp_path / "x.img")], {"SOURCE_DATE_EPOCH": "99999999999"}, "SOURCE_DATE_EPOCH"),
        (["build", str(spec), "-o", str(tmp_path / "y.img")], {"SOURCE_DATE_EPOCH": "-5"}, "SOURCE_DATE_EPOCH"),
        (["ls", str(loop)], {}, "Too many levels of symbolic links"),
        (["ls", str(spec) + "/x"], {}, "Not a directory"),
    ]
    for args, env, message in cases:
        r = bootlab_cli("initramfs", *args, env=env)
        assert r.returncode == 2 and r.stdout == b"", (args, r.stderr)
        lines = r.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, lines)
    assert spec.read_text() == 'init = "#!/bin/sh\\n"\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop", "s.toml"]
