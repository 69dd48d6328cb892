"""Choosing the accelerator: KVM only if it *works*, which a device node alone does not prove.

On nested or restricted hosts /dev/kvm opens fine and QEMU starts, then hangs once the guest
kernel runs (or asserts on an MSR). So the probe boots the real kernel under KVM with an empty
initramfs and panic=-1: a working KVM panics and exits in well under a second, a broken one
hits the timeout. The answer is cached per host kernel, QEMU binary and guest kernel.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bootlab import cache
from bootlab.errors import BadInput
from bootlab.vm.arch import Arch, host_arch

PROBE_TIMEOUT = 5.0
ACCELS = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class AccelChoice:
    name: str  # "kvm" or "tcg"
    notice: str | None = None  # say this once to the user (why not KVM)
    probed: bool = False  # the probe ran now rather than coming from the cache


def kvm_usable_device() -> str | None:
    """None if /dev/kvm can be used by us; else why not."""
    if not os.path.exists("/dev/kvm"):
        return "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "no permission on /dev/kvm (add yourself to the kvm group)"
    return None


def _empty_initramfs() -> Path:
    from bootlab.image import cpio

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            cpio.write(f, [])

    return cache.cached("initramfs", "empty", write, ".cpio")


def probe_kvm(arch: Arch, kernel: Path, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    from bootlab.vm.machine import Machine

    log = cache.root() / "accel" / "probe-console.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    m = Machine(arch=arch, kernel=kernel, console_log=log, initrd=_empty_initramfs(), accel="kvm",
                memory="256M", append=[f"console={arch.console}", "panic=-1", "rdinit=/bootlab-probe"])
    start = time.monotonic()
    try:
        r = subprocess.run(m.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"KVM does not work here (a test boot under KVM hung for {timeout:.0f} s)"
    except OSError as e:
        return False, f"cannot start {arch.qemu}: {e}"
    elapsed = time.monotonic() - start
    if r.returncode != 0:
        last = (r.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        return False, f"KVM does not work here (QEMU failed: {last})"
    return True, f"KVM works (test boot took {elapsed:.2f} s)"


def choose(requested: str, arch: Arch, kernel: Path) -> AccelChoice:
    if requested not in ACCELS:
        raise BadInput(f"--accel {requested!r}: choose one of {', '.join(ACCELS)}")
    if requested != "auto":
        return AccelChoice(requested)
    if arch.name != host_arch():
        return AccelChoice("tcg")
    why_not = kvm_usable_device()
    if why_not:
        return AccelChoice("tcg", f"{why_not}; using TCG (slower)")
    from shutil import which

    qemu = which(arch.qemu)
    key = cache.key("kvm-probe-v1", os.uname().release,
                    cache.file_identity(Path(qemu)) if qemu else arch.qemu, cache.file_identity(kernel))
    path = cache.root() / "accel" / f"{key}.json"
    try:
        saved = json.loads(path.read_text())
        ok, why, probed = bool(saved["kvm"]), str(saved["reason"]), False
    except (OSError, ValueError, KeyError):
        ok, why = probe_kvm(arch, kernel)
        probed = True
        cache.atomic_write(path, lambda tmp: tmp.write_text(json.dumps({"kvm": ok, "reason": why})))
    return AccelChoice("kvm", None, probed) if ok else AccelChoice("tcg", f"{why}; using TCG (slower)", probed)
