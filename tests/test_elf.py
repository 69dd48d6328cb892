"""ELF closure: compared with ldd on real host programs (ldd is only the oracle here), and with
gcc-built programs in temporary sysroots for RPATH/RUNPATH, symlinks, wrong-arch and broken files."""

from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bootlab.errors import BadInput
from bootlab.image.elf import ElfInfo, closure, read_elf
from bootlab.image.entry import Entry, Kind

HOST_PROGRAMS = ["/bin/ls", "/usr/bin/python3", "/usr/bin/qemu-system-x86_64"]
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


# --- helpers -------------------------------------------------------------------------------------


def ldd(program: str) -> tuple[set[str], list[str]]:
    """(real paths of every library ldd lists, the paths as ldd printed them)."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    assert "not found" not in out, out
    printed = [m.group(1) for m in re.finditer(r"(?:=> |^\s*)(/\S+) \(0x", out, re.M)]
    return {os.path.realpath(p) for p in printed}, printed


def files(entries: list[Entry], sysroot: Path = Path("/")) -> set[str]:
    return {os.path.realpath(sysroot / e.path) for e in entries if e.kind is Kind.FILE}


def guest_resolve(entries: list[Entry], path: str) -> Entry | None:
    """Follow `path` through the entries only, as the guest kernel will in the initramfs."""
    by_path = {e.path: e for e in entries}
    todo, done, hops = [p for p in path.split("/") if p], [], 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            done = done[:-1]
            continue
        entry = by_path.get("/".join([*done, name]))
        if entry is not None and entry.kind is Kind.SYMLINK:
            hops += 1
            assert hops < 40
            done = [] if entry.target.startswith("/") else done
            todo = [p for p in entry.target.split("/") if p] + todo
        else:
            done.append(name)
    return by_path.get("/".join(done))


def cc(out: Path, source: str, *flags: str) -> Path:
    """Compile a tiny C program or library with the host gcc."""
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_name(out.name + ".c")
    src.write_text(source)
    subprocess.run(["gcc", "-o", str(out), str(src), *flags], check=True, capture_output=True)
    src.unlink()
    return out


def make_lib(path: Path, func: str, soname: str, *flags: str, body: str = "return 1;") -> Path:
    return cc(path, f"int {func}(void) {{ {body} }}\n", "-shared", "-fPIC", f"-Wl,-soname,{soname}",
              *flags)


def elf_header(machine: int, elfclass: int = 64) -> bytes:
    """A minimal valid ELF header (no segments) with any e_machine: a 'library' of another arch."""
    if elfclass == 64:
        ident = b"\x7fELF\x02\x01\x01" + bytes(9)
        return ident + struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)
    ident = b"\x7fELF\x01\x01\x01" + bytes(9)
    return ident + struct.pack("<HHIIIIIHHHHHH", 3, machine, 1, 0, 0, 0, 0, 52, 32, 0, 40, 0, 0)


HOST_LIB = "/usr/lib/x86_64-linux-gnu"


@pytest.fixture
def sysroot(tmp_path: Path) -> Path:
    """A copy of the host's C runtime laid out like merged-/usr Debian, with its own symlinks."""
    if not Path(HOST_LIB, "libc.so.6").exists():
        pytest.skip("needs an x86_64 Debian host")
    root = tmp_path / "sysroot"
    lib = root / HOST_LIB.lstrip("/")
    lib.mkdir(parents=True)
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        shutil.copy2(os.path.realpath(f"{HOST_LIB}/{name}"), lib / name)
    (root / "usr/lib64").mkdir()
    (root / "usr/bin").mkdir()
    (root / "etc").mkdir()
    for top in ("lib", "lib64", "bin"):
        (root / top).symlink_to(f"usr/{top}")
    # absolute, as Debian has it: must resolve inside the sysroot, not on the host
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    return root


# --- real host programs against ldd ---------------------------------------------------------------


@pytest.mark.parametrize("program", HOST_PROGRAMS)
def test_closure_matches_ldd(program: str) -> None:
    if not Path(program).exists() or shutil.which("ldd") is None:
        pytest.skip(f"{program} or ldd not installed")
    expected, printed = ldd(program)
    entries = closure([program])
    assert files(entries) == expected | {os.path.realpath(program)}
    for path in [program, *printed]:  # every name resolves in the guest to the same real file
        found = guest_resolve(entries, path)
        assert found is not None and found.kind is Kind.FILE, path
        assert os.path.realpath(found.source) == os.path.realpath(path)


def test_interpreter_and_lib64_chain_kept_as_symlinks() -> None:
    info = read_elf(Path("/bin/ls"))
    assert info is not None and info.interp and info.machine == "EM_X86_64" and info.elfclass == 64
    entries = closure(["/bin/ls"])
    by_path = {e.path: e for e in entries}
    # each symlink on the way to the interpreter is an entry with the host's own target text
    path = ""
    for part in info.interp.strip("/").split("/"):
        path = f"{path}/{part}".lstrip("/")
        if os.path.islink(f"/{path}"):
            assert by_path[path].kind is Kind.SYMLINK
            assert by_path[path].target == os.readlink(f"/{path}")
            break
    if os.path.islink("/lib64"):
        assert by_path["lib64"] == Entry("lib64", Kind.SYMLINK, 0o777, target=os.readlink("/lib64"))
    real = by_path[os.path.realpath(info.interp).lstrip("/")]
    assert real.kind is Kind.FILE and real.mode == os.stat(info.interp).st_mode & 0o7777


def test_entries_are_unique_sorted_and_deterministic() -> None:
    a = closure(["/usr/bin/python3", "/bin/ls"])
    b = closure(["/bin/ls", "/usr/bin/python3", "/bin/ls"])
    assert a == b
    paths = [e.path for e in a]
    assert paths == sorted(set(paths))
    for e in a:  # no entry sits below a symlink: writers can create them in order
        parent = os.path.dirname(e.path)
        assert not parent or not os.path.islink(f"/{parent}"), e.path


def test_static_binary_is_just_itself(tmp_path: Path) -> None:
    busybox = Path("/bin/busybox")
    if not busybox.exists() or read_elf(busybox).interp:  # type: ignore[union-attr]
        pytest.skip("no static busybox")
    entries = closure([str(busybox)])
    assert files(entries) == {os.path.realpath(busybox)}
    assert all(e.kind is Kind.SYMLINK for e in entries if e.kind is not Kind.FILE)


# --- gcc-built programs: $ORIGIN, RPATH vs RUNPATH ------------------------------------------------


@needs_gcc
def test_runpath_origin_in_sysroot(sysroot: Path) -> None:
    app = sysroot / "opt/app"
    make_lib(app / "lib/libdemo.so.1.0", "demo", "libdemo.so.1")
    (app / "lib/libdemo.so.1").symlink_to("libdemo.so.1.0")
    (app / "lib/libdemo.so").symlink_to("libdemo.so.1")
    prog = cc(app / "bin/prog", "int demo(void); int main(void) { return demo() - 1; }",
              f"-L{app}/lib", "-ldemo", "-Wl,-rpath,$ORIGIN/../lib", "-Wl,--enable-new-dtags")
    info = read_elf(prog)
    assert info == ElfInfo("EM_X86_64", 64, "/lib64/ld-linux-x86-64.so.2",
                           ["libdemo.so.1", "libc.so.6"], [], ["$ORIGIN/../lib"], None)
    entries = closure(["/opt/app/bin/prog"], sysroot)
    by_path = {e.path: e for e in entries}
    assert by_path["opt/app/lib/libdemo.so.1"].target == "libdemo.so.1.0"
    assert by_path["opt/app/lib/libdemo.so.1.0"].kind is Kind.FILE
    assert "opt/app/lib/libdemo.so" not in by_path  # the dev link is not needed
    # everything comes from the sysroot, nothing from the host
    assert all(str(e.source).startswith(str(sysroot)) for e in entries if e.kind is Kind.FILE)
    assert files(entries, sysroot) == {str(p) for p in [
        app / "bin/prog", app / "lib/libdemo.so.1.0", sysroot / "usr/lib/x86_64-linux-gnu/libc.so.6",
        sysroot / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]}
    assert by_path["usr/lib64/ld-linux-x86-64.so.2"].target == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert by_path["lib"].target == "usr/lib" and by_path["lib64"].target == "usr/lib64"


@needs_gcc
@pytest.mark.parametrize("dtags", ["--disable-new-dtags", "--enable-new-dtags"])
def test_rpath_is_inherited_but_runpath_is_not(tmp_path: Path, dtags: str) -> None:
    """libouter (no path of its own) needs libinner: only the program's DT_RPATH finds it."""
    lib = tmp_path / "app/lib"
    make_lib(lib / "libinner.so", "inner", "libinner.so")
    make_lib(lib / "libouter.so", "outer", "libouter.so", f"-L{lib}", "-linner",
             body="extern int inner(void); return inner();")
    prog = cc(tmp_path / "app/bin/prog", "int outer(void); int main(void) { return outer() - 1; }",
              f"-L{lib}", "-louter", "-Wl,-rpath,$ORIGIN/../lib", f"-Wl,{dtags}")
    info = read_elf(prog)
    assert info is not None
    if dtags == "--disable-new-dtags":
        assert (info.rpath, info.runpath) == (["$ORIGIN/../lib"], [])
        expected, _ = ldd(str(prog))
        assert files(closure([str(prog)])) == expected | {str(prog)}
        assert subprocess.run([str(prog)]).returncode == 0
    else:
        assert (info.rpath, info.runpath) == ([], ["$ORIGIN/../lib"])
        assert "libinner.so => not found" in subprocess.run(["ldd", str(prog)], capture_output=True,
                                                            text=True).stdout
        with pytest.raises(BadInput, match=r"libinner\.so needed by .*/lib/libouter\.so"):
            closure([str(prog)])


# --- sysroot: ld.so.conf, absolute links, never the host -----------------------------------------


@needs_gcc
def test_sysroot_ld_so_conf_include_and_cache(sysroot: Path) -> None:
    make_lib(sysroot / "opt/extra/lib/libextra.so.2", "extra", "libextra.so.2")
    (sysroot / "etc/ld.so.conf").write_text("# comment\ninclude ld.so.conf.d/*.conf\n")
    (sysroot / "etc/ld.so.conf.d").mkdir()
    (sysroot / "etc/ld.so.conf.d/extra.conf").write_text("/opt/extra/lib/\n")
    (sysroot / "etc/ld.so.conf.d/ignored.txt").write_text("/nowhere\n")
    (sysroot / "etc/ld.so.cache").write_bytes(b"cache")
    cc(sysroot / "usr/bin/prog", "int extra(void); int main(void) { return extra(); }",
       f"-L{sysroot}/opt/extra/lib", "-l:libextra.so.2")
    paths = {e.path for e in closure(["/bin/prog"], sysroot)}
    assert {"bin", "usr/bin/prog", "opt/extra/lib/libextra.so.2", "etc/ld.so.cache"} <= paths
    # without the cache the guest's loader would not search /opt/extra/lib
    (sysroot / "etc/ld.so.conf.d/extra.conf").unlink()
    with pytest.raises(BadInput, match=r"libextra\.so\.2 needed by /bin/prog not found in "
                                       r"/lib/x86_64-linux-gnu:.* under "):
        closure(["/bin/prog"], sysroot)


def test_symlinks_never_leave_the_sysroot(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a/b").mkdir(parents=True)
    (root / "a/b/up").symlink_to("../../../../../../etc")  # climbs past "/" like the kernel: stays
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("guest\n")
    (root / "a/abs").symlink_to("/etc/hostname")
    entries = closure(["/a/b/up/hostname", "/a/abs"], root)
    assert [(e.path, e.kind, e.target) for e in entries] == [
        ("a/abs", Kind.SYMLINK, "/etc/hostname"),
        ("a/b/up", Kind.SYMLINK, "../../../../../../etc"),
        ("etc/hostname", Kind.FILE, None),
    ]
    assert entries[2].source == root / "etc/hostname"
    (root / "loop").symlink_to("loop")
    with pytest.raises(BadInput, match="symbolic links"):
        closure(["/loop"], root)


# --- wrong architecture, missing, broken ---------------------------------------------------------


@needs_gcc
@pytest.mark.parametrize("wrong", ["aarch64", "i386"])
def test_wrong_arch_library_is_skipped(tmp_path: Path, wrong: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    if wrong == "aarch64":
        first.mkdir()
        (first / "libdemo.so").write_bytes(elf_header(183))  # EM_AARCH64
    else:
        make_lib(first / "libdemo.so", "demo", "libdemo.so", "-m32", "-nostdlib")
    assert read_elf(first / "libdemo.so").machine == {"aarch64": "EM_AARCH64", "i386": "EM_386"}[wrong]
    make_lib(second / "libdemo.so", "demo", "libdemo.so")
    prog = cc(tmp_path / "prog", "int demo(void); int main(void) { return demo() - 1; }",
              f"-L{second}", "-ldemo", f"-Wl,-rpath,{first}:{second}")
    assert str(second / "libdemo.so") in files(closure([str(prog)]))
    assert subprocess.run([str(prog)]).returncode == 0  # and ld.so agrees
    (second / "libdemo.so").unlink()
    with pytest.raises(BadInput, match=r"libdemo\.so needed by .*prog not found.*skipped .*first/libdemo"):
        closure([str(prog)])


def test_missing_file_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such file"):
        closure(["/no/such/program"])
    with pytest.raises(BadInput, match=r"/bin/ls: no such file in "):
        closure(["/bin/ls"], tmp_path)


def test_missing_interpreter_is_bad_input(sysroot: Path) -> None:
    shutil.copy2("/bin/true", sysroot / "usr/bin/true")
    (sysroot / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").unlink()
    with pytest.raises(BadInput, match=r"/bin/true: its interpreter /lib64/ld-linux-x86-64.so.2"):
        closure(["/bin/true"], sysroot)


@pytest.mark.parametrize("cut", [4, 20, 63, 100, 300, 2000])
def test_truncated_elf_is_bad_input(tmp_path: Path, cut: int) -> None:
    (tmp_path / "ls").write_bytes(Path("/bin/ls").read_bytes()[:cut])
    with pytest.raises(BadInput, match="malformed ELF"):
        read_elf(tmp_path / "ls")


def test_truncated_library_in_closure_is_reported(sysroot: Path) -> None:
    shutil.copy2("/bin/true", sysroot / "usr/bin/true")
    libc = sysroot / "usr/lib/x86_64-linux-gnu/libc.so.6"
    libc.write_bytes(libc.read_bytes()[:1000])
    with pytest.raises(BadInput, match=r"libc\.so\.6 needed by /bin/true not found .*skipped .*malformed"):
        closure(["/bin/true"], sysroot)


def test_garbage_and_non_elf(tmp_path: Path) -> None:
    (tmp_path / "garbage").write_bytes(b"\x7fELF" + bytes(range(256)) * 4)
    with pytest.raises(BadInput):
        read_elf(tmp_path / "garbage")
    (tmp_path / "text").write_text("hello\n")
    assert read_elf(tmp_path / "text") is None
    (tmp_path / "empty").write_bytes(b"")
    assert read_elf(tmp_path / "empty") is None
    assert [e.path for e in closure([str(tmp_path / "text")])] == [str(tmp_path / "text").lstrip("/")]


def test_script_brings_its_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "hello"
    script.write_text("#!/bin/sh -e\necho hi\n")
    expected = {e.path for e in closure(["/bin/sh"])} | {str(script).lstrip("/")}
    assert {e.path for e in closure([str(script)])} == expected
    (tmp_path / "bad").write_text("#!/no/such/shell\n")
    with pytest.raises(BadInput, match="interpreter /no/such/shell"):
        closure([str(tmp_path / "bad")])


# --- fuzzing: read_elf only returns or raises BadInput -------------------------------------------


def _check(data: bytes) -> None:
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        try:
            info = read_elf(Path(f.name))
        except BadInput as e:
            assert "\n" not in str(e)
        else:
            assert info is None or isinstance(info, ElfInfo)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_bytes_after_magic(tail: bytes) -> None:
    _check(b"\x7fELF" + tail)


def _dynamic_range(path: str) -> range:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        seg = next(ELFFile(f).iter_segments("PT_DYNAMIC"))
        return range(seg["p_offset"], seg["p_offset"] + seg["p_filesz"])


TRUE = Path("/bin/true").read_bytes()
TRUE_DYNAMIC = _dynamic_range("/bin/true")


@settings(max_examples=300, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 20))
def test_fuzz_mutated_real_elf(rng: random.Random, flips: int) -> None:
    """Change bytes of a real program where the parser looks: headers and the dynamic section."""
    data = bytearray(TRUE)
    for _ in range(flips):
        where = rng.choice([range(4, 64), range(64, 1024), TRUE_DYNAMIC])
        data[rng.choice(where)] = rng.randrange(256)
    _check(bytes(data[:rng.choice([len(data), rng.randrange(len(data))])]))
