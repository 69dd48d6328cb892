"""The library API: many commands in one boot, files in and out, timeouts."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

import bootlab

pytestmark = pytest.mark.vm


def test_twenty_commands_in_one_boot(vm: bootlab.VM) -> None:
    results = [vm.run(["sh", "-c", f"echo {i}; exit {i % 5}"]) for i in range(20)]
    assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(20)]
    assert [r.returncode for r in results] == [i % 5 for i in range(20)]
    assert vm.release and vm.release in vm.run(["uname", "-r"]).stdout.decode()


def test_64_mib_out_of_the_guest_intact(vm: bootlab.VM, tmp_path: Path) -> None:
    data = os.urandom(64 << 20)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    vm.put(src, "/tmp/big.bin")
    guest_sum = vm.run(["sha256sum", "/tmp/big.bin"]).stdout.split()[0].decode()
    assert guest_sum == hashlib.sha256(data).hexdigest()
    out = tmp_path / "out.bin"
    vm.get("/tmp/big.bin", out)
    assert out.read_bytes() == data
    assert vm.get("/tmp/big.bin") == data
    vm.run(["rm", "/tmp/big.bin"])


def test_streams_arrive_while_the_command_runs(vm: bootlab.VM) -> None:
    import time

    stamps: list[float] = []
    r = vm.run(["sh", "-c", "echo a; sleep 1; echo b"], stdout=lambda b: stamps.append(time.monotonic()))
    assert r.ok and r.stdout is None
    assert len(stamps) == 2 and stamps[1] - stamps[0] > 0.5


def test_put_with_mode_and_env_and_cwd(vm: bootlab.VM) -> None:
    vm.put(b"#!/bin/sh\necho \"$GREETING from $(pwd)\"\n", "/tmp/hello.sh", mode=0o755)
    r = vm.run(["/tmp/hello.sh"], env={"GREETING": "hi"}, cwd="/proc")
    assert r.stdout == b"hi from /proc\n"


def test_command_timeout_kills_it_and_the_vm_stays_usable(vm: bootlab.VM) -> None:
    with pytest.raises(bootlab.Timeout):
        vm.run(["sleep", "60"], timeout=1)
    assert vm.run(["echo", "still here"]).stdout == b"still here\n"


def test_stdin_closed_early_by_the_command(vm: bootlab.VM) -> None:
    r = vm.run(["head", "-c", "5"], input=b"x" * (4 << 20))
    assert r.returncode == 0 and r.stdout == b"xxxxx"
    assert vm.run(["true"]).ok


def test_stdin_to_a_slow_reader_arrives_whole_and_in_order(vm: bootlab.VM) -> None:
    """The agent writes each stdin frame straight into the command's pipe and keeps only what
    does not fit: a reader that sleeps first leaves the pipe full, so frames are split."""
    import hashlib
    import random

    data = random.Random(5).randbytes(6 << 20)
    r = vm.run(["sh", "-c", "sleep 1; md5sum"], input=data)
    assert r.ok and r.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_a_failing_output_sink_stops_the_command_and_is_raised(vm: bootlab.VM) -> None:
    """The sink's error is the caller's, not the VM's: the command is stopped (SIGPIPE, then
    SIGKILL for one that ignores it) and the VM goes on."""
    def full(data: bytes) -> None:
        raise BrokenPipeError("the reader went away")

    with pytest.raises(BrokenPipeError, match="reader went away"):
        vm.run(["yes"], stdout=full)
    with pytest.raises(BrokenPipeError):
        vm.run(["sh", "-c", "trap '' PIPE; while :; do echo x; done"], stdout=full)
    assert vm.run(["echo", "still here"]).stdout == b"still here\n"


def test_missing_guest_file_is_an_error(vm: bootlab.VM) -> None:
    with pytest.raises(bootlab.BootlabError, match="no-such-file"):
        vm.get("/no-such-file")


def test_console_log_is_kept_apart(vm: bootlab.VM) -> None:
    text = vm.console_log.read_text(errors="replace")
    assert "Linux version" in text
    assert "Run /init as init process" in text


def test_a_kernel_without_pvh_boots_as_a_bzimage(kernel: Path) -> None:
    """What a custom kernel built without CONFIG_PVH gets: the bzImage itself on microvm."""
    with bootlab.VM(kernel, accel="tcg", prefer_pvh=False) as other:
        argv = other._session.machine.argv()
        assert argv[argv.index("-kernel") + 1] == str(kernel)
        assert other.run(["uname", "-r"]).stdout.decode().strip() == kernel.name.removeprefix("vmlinuz-")


def test_a_vm_booted_from_a_thread_outlives_the_thread(kernel: Path) -> None:
    """QEMU is killed when the *thread* that forked it ends (PR_SET_PDEATHSIG), so a VM booted
    from a worker thread (a pool booting several at once) must not be forked from that thread."""
    booted: list[bootlab.VM] = []
    worker = threading.Thread(target=lambda: booted.append(bootlab.VM(kernel, accel="tcg").start()))
    worker.start()
    worker.join()
    task = Path(f"/proc/self/task/{worker.native_id}")
    deadline = time.monotonic() + 10
    while task.exists() and time.monotonic() < deadline:  # until the thread is gone for the kernel too
        time.sleep(0.01)
    assert not task.exists()
    with booted[0] as vm:
        r = vm.run(["echo", "alive"])
    assert (r.returncode, r.stdout) == (0, b"alive\n")
