from pathlib import Path

import pytest

from bootlab.errors import BadInput
from bootlab.vm import arch
from bootlab.vm.accel import choose
from bootlab.vm.machine import Machine


def test_argv_is_a_list_and_commas_are_escaped() -> None:
    m = Machine(arch=arch.get("x86_64"), kernel=Path("/k"), console_log=Path("/tmp/a,b.log"),
                initrd=Path("/i.cpio"), append=["console=ttyS0", "x=1,2"], agent_socket="sock")
    argv = m.argv()
    assert argv[0] == "qemu-system-x86_64"
    assert "file,id=console,path=/tmp/a,,b.log" in argv
    assert argv[argv.index("-append") + 1] == "console=ttyS0 x=1,2"
    assert argv[argv.index("-initrd") + 1] == "/i.cpio"
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert any(a.startswith("socket,id=agent,path=sock,abstract=on") for a in argv)


def test_interactive_console_goes_to_stdio_and_the_log() -> None:
    m = Machine(arch=arch.get("x86_64"), kernel=Path("/k"), console_log=Path("/l"), console_stdio=True)
    assert "stdio,id=console,signal=off,logfile=/l" in m.argv()


def test_arch_table() -> None:
    assert arch.get("arm64") is arch.get("aarch64")
    assert arch.get("aarch64").console == "ttyAMA0"
    with pytest.raises(BadInput, match="unknown architecture"):
        arch.get("sparc")


def test_accel_names_are_checked() -> None:
    with pytest.raises(BadInput):
        choose("hax", arch.get(None), Path("/k"))
    assert choose("tcg", arch.get(None), Path("/k")).name == "tcg"
