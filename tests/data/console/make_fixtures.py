#!/usr/bin/env python3
"""Regenerate the console-log fixtures in this directory by booting the real Debian kernel.

Each case builds a small initramfs (with bootlab's own cpio writer, so no root is needed), boots
it under QEMU TCG with the serial console written to `<name>.log`, and keeps the log verbatim.
The truncated and empty fixtures are cut from the real ones afterwards.

    .venv/bin/python tests/data/console/make_fixtures.py [NAME ...]

Needs: qemu-system-x86_64, /bin/busybox (static), the kernel below, and for two cases a C
compiler with static libc (the guest agent) and the matching linux-headers (a module that
oopses on load). A case whose tools are missing is skipped with a message.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO / "src"))

from bootlab.image import cpio  # noqa: E402
from bootlab.image.entry import Entry, Tree, char_device, directory, file, host_file, symlink  # noqa: E402
from bootlab.kernel.image import extract_vmlinux  # noqa: E402

RELEASE = "6.1.0-56-amd64"
BZIMAGE = Path(f"/boot/vmlinuz-{RELEASE}")
HEADERS = Path(f"/usr/src/linux-headers-{RELEASE}")
AGENT_C = REPO / "src/bootlab/vm/guest/agent.c"
BUSYBOX = Path("/bin/busybox")

OOPS_MODULE_C = r"""
// Dereferences NULL on load: a real oops that does not panic (panic_on_oops is off).
#include <linux/module.h>
#include <linux/init.h>

static int *volatile target;

static noinline int bootlab_oops_poke(void)
{
	return *target;
}

static int __init bootlab_oops_init(void)
{
	pr_info("bootlab_oops: about to dereference NULL\n");
	return bootlab_oops_poke();
}

module_init(bootlab_oops_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("bootlab test fixture: oops on load");
"""


def script(body: str) -> bytes:
    return ("#!/bin/sh\n" + body.strip() + "\n").encode()


APPLETS = ("sh", "mount", "insmod", "reboot")


def busybox_root(applets: tuple[str, ...] = APPLETS) -> list[Entry]:
    """A minimal root: busybox with the given applet links in /bin, and /dev/console so init has
    stdout. Without /bin/sh a failed /init ends in "No working init found"; with it the kernel
    falls back to running the shell, which is a case of its own."""
    return [
        directory("bin"),
        directory("dev"),
        directory("proc"),
        host_file("bin/busybox", BUSYBOX, 0o755),
        char_device("dev/console", 5, 1),
    ] + [symlink(f"bin/{name}", "busybox") for name in applets]


@dataclass
class Case:
    name: str
    entries: Callable[[Path], list[Entry]] | None  # None: boot without an initramfs
    append: str = ""
    timeout: int = 60
    raw_initrd: bytes | None = None  # use these bytes as the initrd instead of `entries`
    hangs: bool = False  # the guest never stops by itself: keep the log QEMU wrote by `timeout`
    needs: tuple[str, ...] = ()  # "agent", "module"
    extra_files: dict[str, Path] = field(default_factory=dict)


def _rdinit_missing(_: Path) -> list[Entry]:
    return busybox_root()


def _dynamic_init(_: Path) -> list[Entry]:
    # /bin/ls needs /lib64/ld-linux-x86-64.so.2, which the archive lacks: execve gives ENOENT.
    return busybox_root(applets=()) + [host_file("init", Path("/bin/ls"), 0o755)]


def _dynamic_init_with_shell(_: Path) -> list[Entry]:
    return busybox_root() + [host_file("init", Path("/bin/ls"), 0o755)]


def _init_not_executable(_: Path) -> list[Entry]:
    return busybox_root(applets=()) + [file("init", script("echo never runs"), 0o644)]


def _init_text_no_shebang(_: Path) -> list[Entry]:
    return busybox_root(applets=()) + [file("init", b"echo this file has no #! line\n", 0o755)]


def _script_missing_interpreter(_: Path) -> list[Entry]:
    return busybox_root(applets=()) + [file("init", b"#!/bin/bash\necho needs bash\n", 0o755)]


def _fallback_init_not_executable(_: Path) -> list[Entry]:
    # /init fails with ENOENT; the kernel then finds /sbin/init but cannot execute it either.
    return busybox_root(applets=()) + [
        host_file("init", Path("/bin/ls"), 0o755),
        file("sbin/init", b"echo no #! line here either\n", 0o755),
    ]


def _init_exits(_: Path) -> list[Entry]:
    return busybox_root() + [file("init", script("echo init is done; exit 3"), 0o755)]


def _ok(_: Path) -> list[Entry]:
    return busybox_root() + [file("init", script("echo hello\nreboot -f"), 0o755)]


def _init_command_not_found(_: Path) -> list[Entry]:
    # The same script in a root without the reboot applet: the shell exits with 127.
    return busybox_root(("sh",)) + [file("init", script("echo hello\nreboot -f"), 0o755)]


def _sysrq_crash(_: Path) -> list[Entry]:
    body = "mount -t proc proc /proc\necho c > /proc/sysrq-trigger\necho not reached"
    return busybox_root() + [file("init", script(body), 0o755)]


def _oops_module(work: Path) -> list[Entry]:
    body = """
mount -t proc proc /proc
insmod /bootlab_oops.ko
echo "insmod returned $?; the kernel survived the oops"
reboot -f
"""
    return busybox_root() + [
        file("init", script(body), 0o755),
        host_file("bootlab_oops.ko", work / "bootlab_oops.ko", 0o644),
    ]


def _agent_no_port(work: Path) -> list[Entry]:
    # The real guest agent, booted without the virtio modules: it waits 10 s for its port.
    return busybox_root() + [host_file("init", work / "agent", 0o755)]


def _agent_missing_module(work: Path) -> list[Entry]:
    listed = f"/lib/modules/{RELEASE}/kernel/drivers/char/virtio_console.ko\n"
    return _agent_no_port(work) + [directory("etc"), file("etc/bootlab/modules", listed.encode())]


CASES = [
    Case("rdinit_missing", _rdinit_missing, "rdinit=/nope"),
    Case("dynamic_init_no_libs", _dynamic_init),
    Case("init_fallback_to_sh", _dynamic_init_with_shell, timeout=15, hangs=True),
    Case("init_not_executable", _init_not_executable),
    Case("init_text_no_shebang", _init_text_no_shebang),
    Case("script_missing_interpreter", _script_missing_interpreter),
    Case("requested_init_missing", _init_text_no_shebang, "init=/nope"),
    Case("fallback_init_not_executable", _fallback_init_not_executable),
    Case("init_exits", _init_exits),
    Case("no_initramfs", None),
    Case("initramfs_garbage", None, raw_initrd=b"this is not a cpio archive\n" * 64),
    Case("no_root_device", None, "root=/dev/vda"),
    Case("sysrq_crash", _sysrq_crash),
    Case("oops_module", _oops_module, needs=("module",)),
    Case("oops_then_panic", _oops_module, "oops=panic", needs=("module",)),
    Case("init_command_not_found", _init_command_not_found),
    Case("ok_hello", _ok),
    Case("agent_no_port", _agent_no_port, timeout=90, needs=("agent",)),
    Case("agent_missing_module", _agent_missing_module, timeout=90, needs=("agent",)),
]


def build_agent(work: Path) -> bool:
    cc = shutil.which("cc")
    if not cc:
        return False
    run = subprocess.run([cc, "-static", "-O2", "-o", str(work / "agent"), str(AGENT_C)])
    return run.returncode == 0


def build_module(work: Path) -> bool:
    if not (HEADERS / "Makefile").exists():
        return False
    mod = work / "mod"
    mod.mkdir()
    (mod / "bootlab_oops.c").write_text(OOPS_MODULE_C)
    (mod / "Makefile").write_text("obj-m := bootlab_oops.o\n")
    run = subprocess.run(["make", "-s", "-C", str(HEADERS), f"M={mod}", "modules"])
    if run.returncode != 0:
        return False
    shutil.copy(mod / "bootlab_oops.ko", work / "bootlab_oops.ko")
    return True


def boot(case: Case, vmlinux: Path, work: Path) -> Path:
    out = HERE / f"{case.name}.log"
    out.unlink(missing_ok=True)
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-M", "pc", "-m", "512", "-nodefaults",
        "-display", "none", "-no-reboot", "-serial", f"file:{out}", "-kernel", str(vmlinux),
        "-append", f"console=ttyS0 panic=-1 {case.append}".strip(),
    ]
    data = case.raw_initrd
    if case.entries is not None:
        tree = Tree()
        tree.extend(case.entries(work))
        buf = io.BytesIO()
        cpio.write(buf, tree.sorted())
        data = buf.getvalue()
    if data is not None:
        initrd = work / f"{case.name}.cpio"
        initrd.write_bytes(data)
        argv += ["-initrd", str(initrd)]
    try:
        subprocess.run(argv, timeout=case.timeout, check=True)
    except subprocess.TimeoutExpired:
        if not case.hangs:
            raise
    return out


def cut_derived() -> None:
    """Fixtures cut from real logs: a log that stops mid-boot, one cut inside the panic line."""
    ok = (HERE / "ok_hello.log").read_bytes()
    cut = ok.index(b"Run /init as init process")
    (HERE / "truncated_before_init.log").write_bytes(ok[: cut + len(b"Run /in")])
    noexec = (HERE / "init_text_no_shebang.log").read_bytes()
    panic = noexec.index(b"Kernel panic - not syncing")
    cut = panic + len(b"Kernel panic - not syncing: No work")
    (HERE / "truncated_in_panic.log").write_bytes(noexec[:cut])
    (HERE / "empty.log").write_bytes(b"")


def main(names: list[str]) -> int:
    selected = [c for c in CASES if not names or c.name in names]
    with tempfile.TemporaryDirectory(prefix="bootlab-fixtures-") as tmp:
        work = Path(tmp)
        vmlinux = work / "vmlinux"
        vmlinux.write_bytes(extract_vmlinux(BZIMAGE))
        have = {
            "agent": any("agent" in c.needs for c in selected) and build_agent(work),
            "module": any("module" in c.needs for c in selected) and build_module(work),
        }
        for case in selected:
            missing = [n for n in case.needs if not have[n]]
            if missing:
                print(f"skip {case.name}: cannot build {', '.join(missing)}")
                continue
            out = boot(case, vmlinux, work)
            print(f"{out.name}: {out.stat().st_size} bytes")
    if not names or {"ok_hello", "init_text_no_shebang"} <= set(names):
        cut_derived()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
