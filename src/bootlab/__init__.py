"""bootlab: boot and debug Linux kernels in QEMU: one line, rootless, fast."""

from __future__ import annotations

from bootlab.errors import BadInput, BootlabError, Timeout, VMFailed
from bootlab.lean import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

    from bootlab.vm.vm import VM, RunResult

__all__ = ["VM", "RunResult", "BootlabError", "BadInput", "Timeout", "VMFailed"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # The VM stack (threads, subprocess, sockets) loads only when used: `bootlab initramfs ls`
    # should not pay for it.
    if name in ("VM", "RunResult"):
        from bootlab.vm import vm

        return getattr(vm, name)
    raise AttributeError(f"module 'bootlab' has no attribute {name!r}")
