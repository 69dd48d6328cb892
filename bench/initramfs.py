#!/usr/bin/env python3
"""Initramfs benchmark: `bootlab initramfs ls/extract/build` against initramfs-tools.

Groups, each timed with interleaved runs after one untimed warm-up (which is also the check run):
  ls       `bootlab initramfs ls IMG` vs `lsinitramfs IMG`; outputs must be identical
           (plus `zstd -dc IMG`, the floor for a single zstd segment: decompressing alone)
  extract  `bootlab initramfs extract IMG -C DIR` vs `unmkinitramfs IMG DIR`, fresh DIR per run;
           both trees must hold the same names
  build    `bootlab initramfs build SPEC -o OUT` (busybox, ext4 + virtio_blk, /usr/bin/env), with
           --compress none and with the default gzip; each image is checked with lsinitramfs.
           `mkinitramfs -o OUT VERSION` (the whole distro initramfs, ~20 s) runs once, no warm-up,
           as a reference only: it is not like-for-like.
IMG is the newest /boot/initrd.img-*. Output goes to /dev/null; only the command is timed. When IMG
is one zstd segment, `zstd -d` rows give the floor (decompressing, and decompress + write).

Usage: .venv/bin/python bench/initramfs.py [-n 5] [--initrd IMG] [--skip-mkinitramfs] [--scratch DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import Result, check_host, compile_bytecode

from bootlab.kernel.find import newest

REPO = Path(__file__).resolve().parent.parent
BOOTLAB = str(REPO / ".venv" / "bin" / "bootlab")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

TARGET_LS_S = 0.15
TARGET_LS_SPEEDUP = 2.0
TARGET_EXTRACT_S = 0.3
TARGET_BUILD_S = 0.3

SPEC = '''busybox = true
modules = ["ext4", "virtio_blk"]
binaries = ["/usr/bin/env"]
init = """#!/bin/sh
mount -t proc proc /proc
mount -t devtmpfs dev /dev
modprobe ext4
modprobe virtio_blk
exec sh
"""
'''
# What every built image must list (checked with lsinitramfs, the peer's reader).
BUILD_MUST_LIST = [r"^init$", r"/busybox$", r"/ext4\.ko", r"/virtio_blk\.ko", r"/env$"]
# Host program -> Debian 12 package.
HOST_PROGRAMS = {"lsinitramfs": "initramfs-tools-core", "unmkinitramfs": "initramfs-tools-core",
                 "mkinitramfs": "initramfs-tools-core", "zstd": "zstd"}


@dataclass(frozen=True)
class Contender:
    """One command; `argv` gets a fresh, empty scratch directory (made and removed untimed).

    `check_stdout`: keep the warm-up's stdout for the check (timed runs always discard it).
    """

    name: str
    argv: Callable[[Path], list[str]]
    timeout_s: float = 120
    check_stdout: bool = False


# A check gets {name: (stdout of the warm-up, its scratch dir)} and says what it found;
# a finding starting with MISMATCH is a failure.
Check = Callable[[dict[str, tuple[str, Path]]], str]


def run_once(c: Contender, scratch: Path, keep_stdout: bool = False) -> tuple[float, str | None, str]:
    """Time one run; return (seconds, why it failed or None, stdout if asked)."""
    argv = c.argv(scratch)
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, timeout=c.timeout_s,
                              stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, errors="replace")
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, f"timed out after {c.timeout_s:.0f} s", ""
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        return elapsed, f"exit {proc.returncode}: " + " | ".join(proc.stderr.strip().splitlines()[-3:]), ""
    return elapsed, None, proc.stdout or ""


def bench(title: str, cs: list[Contender], n: int, check: Check | None = None,
          warmup: bool = True, scratch_in: Path | None = None) -> tuple[dict[str, float | None], str]:
    """One untimed warm-up each (checked), then n interleaved rounds; a failed contender drops out.

    Returns each contender's median (None if it failed) and what the check found.
    """
    print(f"\n== {title}")
    results = {c.name: Result(c.name) for c in cs}
    kept: dict[str, tuple[str, Path]] = {}
    found = ""
    with tempfile.TemporaryDirectory(prefix="bootlab-bench-", dir=scratch_in) as tmp:
        for c in (cs if warmup else []):
            scratch = Path(tempfile.mkdtemp(dir=tmp))
            elapsed, failure, out = run_once(c, scratch, keep_stdout=c.check_stdout)
            print(f"  warm-up {c.name:22} {elapsed:6.3f} s  {failure or 'ok'}", flush=True)
            results[c.name].failure = failure and f"warm-up failed, {failure}"
            kept[c.name] = (out, scratch)
        if check and not any(r.failure for r in results.values()):
            found = check(kept)
            print(f"  check: {found}")
        for _, scratch in kept.values():
            shutil.rmtree(scratch)
        for i in range(1, n + 1):
            for c in cs:
                res = results[c.name]
                if res.failure:
                    continue
                scratch = Path(tempfile.mkdtemp(dir=tmp))
                elapsed, failure, _ = run_once(c, scratch)
                shutil.rmtree(scratch)
                if failure:
                    res.failure = f"run {i} failed, {failure}"
                else:
                    res.times.append(elapsed)
    print(f"  {'':24} {'min s':>7} {'median s':>9} {'median / ' + cs[0].name:>22}")
    base = results[cs[0].name].median
    for r in results.values():
        if r.failure:
            print(f"  {r.name:24} FAILED: {r.failure}")
        else:
            ratio = f"{r.median / base:.2f}x" if base else "n/a"
            print(f"  {r.name:24} {min(r.times):7.3f} {r.median:9.3f} {ratio:>22}")
    return {r.name: r.median for r in results.values()}, found


def check_ls(kept: dict[str, tuple[str, Path]]) -> str:
    ours, theirs = kept["bootlab ls"][0].splitlines(), kept["lsinitramfs"][0].splitlines()
    if ours == theirs:
        return f"outputs identical ({len(ours)} lines)"
    if sorted(ours) == sorted(theirs):
        return "MISMATCH: same names, different order"
    only_ours, only_theirs = set(ours) - set(theirs), set(theirs) - set(ours)
    return (f"MISMATCH: {len(ours)} vs {len(theirs)} lines; only bootlab: {sorted(only_ours)[:3]}, "
            f"only lsinitramfs: {sorted(only_theirs)[:3]}")


def tree_names(root: Path) -> set[str]:
    """Every path under root, relative to it (the way `find` prints them, minus "./")."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def check_extract(kept: dict[str, tuple[str, Path]]) -> str:
    ours = tree_names(kept["bootlab extract"][1] / "out") - {".bootlab-manifest.json"}
    out = kept["unmkinitramfs"][1] / "out"
    tops = {p.name for p in out.iterdir()}
    # Several segments: unmkinitramfs writes early/, early2/ ... and main/; one segment: flat.
    if "main" in tops and all(re.fullmatch(r"early\d*|main", t) for t in tops):
        theirs = set().union(*(tree_names(out / t) for t in tops))
        layout = f"unmkinitramfs split into {', '.join(sorted(tops))}"
    else:
        theirs, layout = tree_names(out), "single segment"
    if ours == theirs:
        return f"same {len(ours)} names ({layout})"
    return (f"MISMATCH ({layout}): only bootlab {sorted(ours - theirs)[:3]}, "
            f"only unmkinitramfs {sorted(theirs - ours)[:3]}")


def check_build(kept: dict[str, tuple[str, Path]]) -> str:
    problems = []
    for name, (_, scratch) in kept.items():
        names = subprocess.run(["lsinitramfs", str(scratch / "out.img")], capture_output=True,
                               text=True, timeout=60).stdout.splitlines()
        missing = [p for p in BUILD_MUST_LIST if not any(re.search(p, x) for x in names)]
        size = (scratch / "out.img").stat().st_size
        print(f"    {name}: {size / 1e6:.1f} MB, {len(names)} names per lsinitramfs")
        if missing:
            problems.append(f"{name} lacks {missing}")
    if problems:
        return "MISMATCH: " + "; ".join(problems)
    return "every image lists init, busybox, ext4.ko, virtio_blk.ko, env"


def target(label: str, value: float | None, ok: Callable[[float], bool], unit: str = " s") -> None:
    shown = "n/a" if value is None else f"{'MET' if ok(value) else 'NOT MET'} ({value:.3f}{unit})"
    print(f"  {label}: {shown}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="timed runs per contender (default 5)")
    parser.add_argument("--initrd", type=Path, help="image to read (default: newest /boot/initrd.img-*)")
    parser.add_argument("--skip-mkinitramfs", action="store_true", help="skip the ~20 s reference build")
    parser.add_argument("--scratch", type=Path, help="where outputs go (default: the temp dir; "
                        "/dev/shm takes the disk out of extract's time)")
    args = parser.parse_args()
    if args.n < 1:
        parser.error("-n must be at least 1")
    check_host(HOST_PROGRAMS)
    compile_bytecode()
    img = args.initrd or newest("initrd.img-*")
    if img is None or not img.is_file():
        parser.error("no initrd: pass --initrd IMG (apt-get install linux-image-amd64)")
    img = img.resolve()
    I = str(img)
    with img.open("rb") as f:  # zstd first means no early cpio: `zstd -d` alone is the floor
        single_zstd = f.read(4) == ZSTD_MAGIC
    load = os.getloadavg()[0]
    print(f"initrd {img} ({img.stat().st_size / 1e6:.1f} MB), {os.cpu_count()} cpus, "
          f"load average {load:.2f}" + ("  (busy machine: expect noisy numbers)" if load > 0.5 else ""))
    print(f"{args.n} timed runs each, interleaved, after one untimed warm-up")

    ls_cs = [Contender("bootlab ls", lambda s: [BOOTLAB, "initramfs", "ls", I], check_stdout=True),
             Contender("lsinitramfs", lambda s: ["lsinitramfs", I], check_stdout=True)]
    if single_zstd:  # decompressing alone, output discarded
        ls_cs.append(Contender("zstd -dc (floor)", lambda s: ["zstd", "-dcq", I]))
    ls, ls_found = bench("ls", ls_cs, args.n, check_ls)

    ex_cs = [Contender("bootlab extract",
                       lambda s: [BOOTLAB, "initramfs", "extract", I, "-C", str(s / "out")]),
             Contender("unmkinitramfs", lambda s: ["unmkinitramfs", I, str(s / "out")])]
    if single_zstd:  # decompressing and writing the same bytes as one file
        ex_cs.append(Contender("zstd -d -o (floor)", lambda s: ["zstd", "-dq", I, "-o", str(s / "cpio")]))
    ex, ex_found = bench(f"extract (into {args.scratch or tempfile.gettempdir()})", ex_cs, args.n,
                         check_extract, scratch_in=args.scratch)

    with tempfile.TemporaryDirectory(prefix="bootlab-bench-spec-") as spec_dir:
        spec = Path(spec_dir) / "spec.toml"
        spec.write_text(SPEC)
        build = [BOOTLAB, "initramfs", "build", str(spec), "-o"]
        bd, bd_found = bench("build (busybox + ext4, virtio_blk + /usr/bin/env)", [
            Contender("bootlab build none", lambda s: build + [str(s / "out.img"), "--compress", "none"]),
            Contender("bootlab build gzip", lambda s: build + [str(s / "out.img")]),
        ], args.n, check_build, scratch_in=args.scratch)
    if not args.skip_mkinitramfs:
        version = img.name.removeprefix("initrd.img-")  # not the host's `uname -r`
        mk, _ = bench("reference, not like-for-like: mkinitramfs builds the whole distro initramfs", [
            Contender("mkinitramfs", lambda s: ["mkinitramfs", "-o", str(s / "out.img"), version],
                      timeout_s=600),
        ], 1, warmup=False, scratch_in=args.scratch)
        if mk["mkinitramfs"] and bd["bootlab build gzip"]:
            print(f"  ({mk['mkinitramfs'] / bd['bootlab build gzip']:.0f}x bootlab build gzip's "
                  "median, for a far larger image)")

    lsm, exm = ls["bootlab ls"], ex["bootlab extract"]
    print("\ntargets:")
    target(f"ls median <= {TARGET_LS_S} s", lsm, lambda v: v <= TARGET_LS_S)
    if ls.get("zstd -dc (floor)"):
        print(f"    floor: `zstd -dc` alone takes {ls['zstd -dc (floor)']:.3f} s on this image")
    target(f"ls >= {TARGET_LS_SPEEDUP:.0f}x faster than lsinitramfs",
           ls["lsinitramfs"] / lsm if lsm and ls["lsinitramfs"] else None,
           lambda v: v >= TARGET_LS_SPEEDUP, unit="x")
    target(f"extract median <= {TARGET_EXTRACT_S} s", exm, lambda v: v <= TARGET_EXTRACT_S)
    if ex.get("zstd -d -o (floor)"):
        print(f"    floor: `zstd -d -o` (decompress + write) takes {ex['zstd -d -o (floor)']:.3f} s here")
    target("extract faster than unmkinitramfs",
           ex["unmkinitramfs"] / exm if exm and ex["unmkinitramfs"] else None, lambda v: v > 1, unit="x")
    # The target is for the image `bootlab run` builds, which is uncompressed; gzip is shown for
    # what a distributable image costs (zlib at gzip's level 6 takes most of it).
    target(f"build none (a run's initramfs) median <= {TARGET_BUILD_S} s", bd["bootlab build none"],
           lambda v: v <= TARGET_BUILD_S)
    if bd["bootlab build gzip"]:
        print(f"  build gzip median: {bd['bootlab build gzip']:.3f} s (no target)")
    ran = all(v for v in (*ls.values(), *ex.values(), *bd.values()))
    agree = not any(f.startswith("MISMATCH") for f in (ls_found, ex_found, bd_found))
    return 0 if ran and agree else 1


if __name__ == "__main__":
    sys.exit(main())
