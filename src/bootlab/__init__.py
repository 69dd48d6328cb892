"""bootlab: boot and debug Linux kernels in QEMU: one line, rootless, fast."""

from bootlab.errors import BadInput, BootlabError, Timeout, VMFailed
from bootlab.vm.vm import VM, RunResult

__all__ = ["VM", "RunResult", "BootlabError", "BadInput", "Timeout", "VMFailed"]
__version__ = "0.1.0"
