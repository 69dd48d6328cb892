"""A QEMU virtual machine described as data; `argv()` renders it to a list, never a shell string."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bootlab.vm.arch import Arch

AGENT_PORT_NAME = "org.bootlab.agent"  # guest/agent.c finds its port by this name: keep in step


def _opt(value: str | Path) -> str:
    """QEMU's option syntax doubles commas inside a value."""
    return str(value).replace(",", ",,")


QCOW2_MAGIC = b"QFI\xfb"  # the first bytes of a qcow2 image


@dataclass(frozen=True)
class Disk:
    """A host image attached as a virtio block device (/dev/vda, /dev/vdb ... in order)."""

    path: Path
    readonly: bool = False
    format: str = "raw"

    def args(self, index: int, device: str) -> list[str]:
        ro = "on" if self.readonly else "off"
        return ["-drive", f"file={_opt(self.path)},if=none,id=disk{index},format={self.format},readonly={ro}",
                "-device", f"{device},drive=disk{index}"]


@dataclass(frozen=True)
class Share:
    """A host directory exported over virtio-9p under `tag` (the guest mounts it by tag)."""

    host: Path
    tag: str
    readonly: bool = True

    def args(self, index: int, device: str) -> list[str]:
        ro = ",readonly=on" if self.readonly else ""
        # multidevs=remap: a tree spanning several host filesystems keeps inode numbers unique.
        return ["-fsdev", f"local,id=fs{index},path={_opt(self.host)},security_model=none,multidevs=remap{ro}",
                "-device", f"{device},fsdev=fs{index},mount_tag={self.tag}"]


@dataclass
class Machine:
    arch: Arch
    kernel: Path
    console_log: Path
    initrd: Path | None = None
    append: list[str] = field(default_factory=list)
    memory: str = "512M"
    cpus: int = 1
    accel: str = "tcg"
    console_stdio: bool = False  # also show the console on QEMU's stdio (interactive use, -v)
    agent_socket: str | None = None  # abstract unix socket the agent's port connects to
    disks: list[Disk] = field(default_factory=list)
    shares: list[Share] = field(default_factory=list)
    net: bool = False  # virtio-net on QEMU user networking
    host_forwards: list[tuple[int, int]] = field(default_factory=list)  # (127.0.0.1 port, guest port)
    extra_args: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        a = self.arch
        argv = [a.qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-M", a.machine, "-accel", self.accel, "-m", self.memory, "-smp", str(self.cpus)]
        if a.cpu and self.accel == "tcg":
            argv += ["-cpu", a.cpu]
        argv += ["-kernel", str(self.kernel), "-append", " ".join(self.append)]
        if self.initrd is not None:
            argv += ["-initrd", str(self.initrd)]
        if self.console_stdio:
            console = f"stdio,id=console,signal=off,logfile={_opt(self.console_log)}"
        else:
            console = f"file,id=console,path={_opt(self.console_log)}"
        argv += ["-chardev", console, "-serial", "chardev:console"]
        if self.agent_socket is not None:
            argv += ["-device", a.serial_device,
                     "-chardev", f"socket,id=agent,path={_opt(self.agent_socket)},abstract=on",
                     "-device", f"virtserialport,chardev=agent,name={AGENT_PORT_NAME}"]
        for i, disk in enumerate(self.disks):
            argv += disk.args(i, a.block_device)
        for i, share in enumerate(self.shares):
            argv += share.args(i, a.p9_device)
        if self.net:
            fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in self.host_forwards)
            argv += ["-netdev", f"user,id=net0{fwd}", "-device", f"{a.net_device},netdev=net0"]
        return argv + self.extra_args
