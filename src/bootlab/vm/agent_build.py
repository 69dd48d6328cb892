"""Compile the guest agent (package data, C) into a static binary, once per source and arch."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from bootlab import cache
from bootlab.errors import BootlabError
from bootlab.vm.arch import Arch


def source() -> bytes:
    return resources.files("bootlab.vm").joinpath("guest/agent.c").read_bytes()


def agent_binary(arch: Arch) -> Path:
    src = source()
    compiler = shutil.which(arch.cc)
    key = cache.key("agent-v1", arch.name, hashlib.sha256(src).hexdigest())
    dest = cache.root() / "agent" / f"{key}-{arch.name}"
    if dest.exists():
        return dest
    if compiler is None:
        raise BootlabError(f"no C compiler {arch.cc!r} to build the guest agent for {arch.name}: "
                           f"apt-get install {'gcc libc6-dev' if arch.cc == 'cc' else 'gcc-' + arch.cc.removesuffix('-gcc') + ' libc6-dev-' + arch.debian_arch + '-cross'}")

    def build(tmp: Path) -> None:
        c_file = tmp.with_name(tmp.name + ".c")  # (with_suffix would drop tmp's unique ending)
        c_file.write_bytes(src)
        try:
            r = subprocess.run([compiler, "-static", "-Os", "-s", "-o", str(tmp), str(c_file)],
                               capture_output=True, text=True)
        finally:
            c_file.unlink(missing_ok=True)
        if r.returncode != 0:
            raise BootlabError(f"building the guest agent failed: {r.stderr.strip().splitlines()[-1:]} "
                               "(is libc6-dev installed? it provides the static libc)")

    return cache.atomic_write(dest, build)
