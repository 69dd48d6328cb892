"""Per-architecture facts, as a table of frozen dataclasses rather than `if arch ==` chains."""

from __future__ import annotations

import platform
from dataclasses import dataclass

from bootlab.errors import BadInput


@dataclass(frozen=True)
class Arch:
    name: str
    qemu: str  # the qemu-system binary
    machine: str  # -M value; options keep firmware and legacy devices to the minimum we need
    cpu: str | None  # -cpu value under TCG (None: QEMU's default)
    console: str  # the kernel console device name
    virtio_bus_modules: tuple[str, ...]  # what makes virtio devices appear on this machine
    serial_device: str  # the virtio-serial controller on that bus
    block_device: str  # a virtio disk on that bus
    p9_device: str  # a virtio-9p share on that bus
    net_device: str  # a virtio network card on that bus
    cc: str  # C compiler that targets it (for the static guest agent)
    debian_arch: str
    kernel_args: tuple[str, ...] = ()
    # Under TCG the guest TSC ticks at the host's rate. Telling the kernel that rate skips its
    # PIT calibration, which fails on a busy host and then hangs boot (microvm has no HPET).
    tcg_tsc_hint: bool = False


ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            name="x86_64",
            qemu="qemu-system-x86_64",
            # microvm: no PCI, no SeaBIOS, virtio-mmio announced through ACPI; with a PVH vmlinux
            # it reaches /init in ~1.1 s under TCG against ~4 s for pc + bzImage.
            machine="microvm,x-option-roms=off",
            cpu=None,
            console="ttyS0",
            virtio_bus_modules=("virtio_mmio",),
            serial_device="virtio-serial-device",
            block_device="virtio-blk-device",
            p9_device="virtio-9p-device",
            net_device="virtio-net-device",
            cc="cc",
            debian_arch="amd64",
            tcg_tsc_hint=True,
        ),
        Arch(
            name="aarch64",
            qemu="qemu-system-aarch64",
            machine="virt",
            # "max" emulates pointer authentication, 4.5x slower under TCG; a57 boots in 1.5 s.
            cpu="cortex-a57",
            console="ttyAMA0",
            virtio_bus_modules=("virtio_mmio",),
            serial_device="virtio-serial-device",
            block_device="virtio-blk-device",
            p9_device="virtio-9p-device",
            net_device="virtio-net-device",
            cc="aarch64-linux-gnu-gcc",
            debian_arch="arm64",
        ),
    )
}

ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}


def host_tsc_khz() -> int | None:
    """The host's TSC rate in kHz as /proc/cpuinfo reports it (x86 hosts only)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return round(float(line.split(":", 1)[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def host_arch() -> str:
    m = platform.machine()
    return ALIASES.get(m, m)


def get(name: str | None) -> Arch:
    key = ALIASES.get(name, name) if name else host_arch()
    try:
        return ARCHES[key]
    except KeyError:
        raise BadInput(f"unknown architecture {name!r}; known: {', '.join(ARCHES)}") from None
