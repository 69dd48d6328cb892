#!/usr/bin/env python3
"""Boot-time benchmark: `bootlab run -- true` against the tools a user would otherwise pick.

Contenders, all on the same kernel and all under TCG (KVM is not usable on our machines):
  bootlab  `bootlab run --kernel K -- true`
  vng      virtme-ng, `vng -r K --disable-kvm -- true` (installed into bench/.venv-peer on demand)
  bare     qemu-system-x86_64 + a hand-made busybox initramfs whose /init does `reboot -f`

Runs are interleaved round-robin, so a load spike on the (shared, 2-core) machine hits every
contender alike instead of one of them. Every contender gets one untimed warm-up run first:
bootlab caches its extracted vmlinux and initramfs on first use, and the others warm the page cache.

Usage: .venv/bin/python bench/boot.py [-n 5] [--kernel /boot/vmlinuz-...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import Result, check_host, compile_bytecode

from bootlab.kernel.find import newest

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEER_VENV = BENCH / ".venv-peer"
# Pinned so numbers stay comparable between runs; bump deliberately.
VNG_REQUIREMENT = "virtme-ng==1.42"
BARE_MARKER = "BOOTLAB-BENCH-OK"

TARGET_BOOTLAB_MEDIAN_S = 2.2
TARGET_SPEEDUP_VS_VNG = 7.0

# Host program -> Debian 12 package. vng needs qemu, busybox and kmod (it builds its own initramfs
# and loads the guest's modules from the host's /lib/modules, shared over 9p: bookworm has no
# virtiofsd package, so vng falls back to 9p, which Debian's QEMU supports).
HOST_PROGRAMS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "modprobe": "kmod",
    "depmod": "kmod",
    "cpio": "cpio",
    "gzip": "gzip",
}


@dataclass(frozen=True)
class Contender:
    """One way to boot the kernel and run `true`; `ok_marker`, if set, must appear in stdout."""

    name: str
    argv: list[str]
    timeout_s: float
    env: dict[str, str] | None = None
    ok_marker: str | None = None


def ensure_peer_venv() -> Path:
    """Create bench/.venv-peer with virtme-ng if absent; return its bin dir."""
    bin_dir = PEER_VENV / "bin"
    if (bin_dir / "vng").exists():
        return bin_dir
    print(f"installing {VNG_REQUIREMENT} into {PEER_VENV.relative_to(REPO)} ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True, timeout=300)
        subprocess.run(
            [str(bin_dir / "python"), "-m", "pip", "install", "-q", VNG_REQUIREMENT],
            check=True,
            timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(PEER_VENV, ignore_errors=True)
        sys.exit(f"could not set up virtme-ng ({exc}); on Debian's python: apt-get install -y python3-venv")
    return bin_dir


def build_busybox_initramfs(workdir: Path) -> Path:
    """The classic hand-made initramfs: static busybox and an /init that prints a marker and reboots.

    /dev/console comes from the kernel's built-in initramfs, so no mknod (or root) is needed.
    """
    root = workdir / "root"
    (root / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox")
    assert busybox, "checked by check_host"
    shutil.copy2(busybox, root / "bin" / "busybox")
    init = root / "init"
    init.write_text(f"#!/bin/busybox sh\n/bin/busybox echo {BARE_MARKER}\n/bin/busybox reboot -f\n")
    init.chmod(0o755)
    image = workdir / "busybox.cpio.gz"
    names = subprocess.run(
        ["find", "."], cwd=root, check=True, capture_output=True, timeout=60
    ).stdout
    cpio = subprocess.run(
        ["cpio", "-H", "newc", "-o", "--quiet"],
        cwd=root, input=names, check=True, capture_output=True, timeout=60,
    ).stdout
    image.write_bytes(subprocess.run(["gzip", "-9"], input=cpio, check=True, capture_output=True).stdout)
    return image


def bootlab_argv(kernel: Path) -> list[str]:
    """The repo venv's `bootlab` entry point, else `python -m bootlab` with this interpreter."""
    script = REPO / ".venv" / "bin" / "bootlab"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "bootlab"]
    return base + ["run", "--kernel", str(kernel), "--", "true"]


def contenders(kernel: Path, initramfs: Path, peer_bin: Path) -> list[Contender]:
    # vng runs `virtme-run` through a shell, so the peer venv's bin must be on PATH.
    vng_env = dict(os.environ, PATH=f"{peer_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    return [
        Contender("bootlab", bootlab_argv(kernel), timeout_s=60),
        Contender(
            "vng",
            [str(peer_bin / "vng"), "-r", str(kernel), "--disable-kvm", "--", "true"],
            timeout_s=180,
            env=vng_env,
        ),
        Contender(
            "bare",
            [
                "qemu-system-x86_64", "-kernel", str(kernel), "-initrd", str(initramfs),
                "-append", "console=ttyS0 panic=-1", "-nographic", "-no-reboot",
                "-accel", "tcg", "-m", "512",
            ],
            timeout_s=60,
            ok_marker=BARE_MARKER,
        ),
    ]


def run_once(c: Contender) -> tuple[float, str | None]:
    """Time one run; return (seconds, None) or (seconds, why it failed)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            c.argv, env=c.env, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, errors="replace", timeout=c.timeout_s,
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"timed out after {c.timeout_s:.0f} s"
    except OSError as exc:
        return time.perf_counter() - start, f"could not start: {exc}"
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return elapsed, f"exit {proc.returncode}: " + " | ".join(tail)
    if c.ok_marker and c.ok_marker not in proc.stdout:
        tail = proc.stdout.strip().splitlines()[-3:]
        return elapsed, f"no {c.ok_marker!r} on the console: " + " | ".join(tail)
    return elapsed, None


def bench(cs: list[Contender], n: int) -> list[Result]:
    """Warm each contender up once, then time n interleaved rounds; a failed contender drops out."""
    results = {c.name: Result(c.name) for c in cs}
    print("warm-up: one untimed run each (bootlab caches its vmlinux and initramfs on first use)")
    for c in cs:
        elapsed, failure = run_once(c)
        print(f"  warm-up {c.name:8} {elapsed:6.2f} s  {failure or 'ok'}", flush=True)
        results[c.name].failure = failure and f"warm-up failed, {failure}"
    for i in range(1, n + 1):
        for c in cs:
            res = results[c.name]
            if res.failure:
                continue
            elapsed, failure = run_once(c)
            print(f"  run {i}/{n} {c.name:8} {elapsed:6.2f} s  {failure or 'ok'}", flush=True)
            if failure:
                res.failure = f"run {i} failed, {failure}"
            else:
                res.times.append(elapsed)
    return list(results.values())


def report(results: list[Result], n: int) -> bool:
    """Print min/median, ratios to bootlab and the targets; return whether every contender ran."""
    by_name = {r.name: r for r in results}
    base = by_name["bootlab"].median
    print(f"\n{'':8} {'min s':>7} {'median s':>9} {'median / bootlab':>17}   ({n} timed runs each)")
    for r in results:
        if r.failure:
            print(f"{r.name:8} FAILED: {r.failure}")
            continue
        ratio = f"{r.median / base:.1f}x" if base else "n/a"
        print(f"{r.name:8} {min(r.times):7.2f} {r.median:9.2f} {ratio:>17}")
    vng = by_name["vng"].median
    speedup = vng / base if base and vng else None
    print("\ntargets:")
    print(f"  bootlab median <= {TARGET_BOOTLAB_MEDIAN_S} s: "
          + (f"{'MET' if base <= TARGET_BOOTLAB_MEDIAN_S else 'NOT MET'} ({base:.2f} s)" if base else "n/a"))
    print(f"  bootlab >= {TARGET_SPEEDUP_VS_VNG:.0f}x faster than vng: "
          + (f"{'MET' if speedup >= TARGET_SPEEDUP_VS_VNG else 'NOT MET'} ({speedup:.1f}x)" if speedup else "n/a"))
    return all(not r.failure for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="timed runs per contender (default 5)")
    parser.add_argument("--kernel", type=Path, help="kernel image (default: newest /boot/vmlinuz-*)")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("-n must be at least 1")
    kernel = args.kernel or newest("vmlinuz-*")
    if kernel is None:
        sys.exit("no /boot/vmlinuz-* found: pass --kernel PATH (apt-get install linux-image-amd64)")
    kernel = kernel.resolve()
    if not kernel.is_file():
        parser.error(f"no such kernel: {kernel}")
    check_host(HOST_PROGRAMS)
    compile_bytecode()
    peer_bin = ensure_peer_venv()
    load = os.getloadavg()[0]
    print(f"kernel {kernel}, accel tcg, {os.cpu_count()} cpus, load average {load:.2f}"
          + ("  (busy machine: expect noisy numbers)" if load > 0.5 else ""))
    with tempfile.TemporaryDirectory(prefix="bootlab-bench-") as tmp:
        initramfs = build_busybox_initramfs(Path(tmp))
        results = bench(contenders(kernel, initramfs, peer_bin), args.n)
    return 0 if report(results, args.n) else 1


if __name__ == "__main__":
    sys.exit(main())
