"""`bootlab run` as a user runs it: real Debian kernel, real QEMU (TCG), real busybox."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import bootlab_cli

pytestmark = pytest.mark.vm


def qemu_processes_with(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmdline and marker.encode() in cmdline:
            pids.append(int(d.name))
    return pids


def test_stdout_stderr_and_status_are_separate_and_exact() -> None:
    r = bootlab_cli("run", "--", "sh", "-c", "printf 'out\\n'; printf 'err\\n' >&2; exit 7")
    assert r.returncode == 7
    assert r.stdout == b"out\n"
    assert r.stderr == b"err\n"


def test_uname_shows_the_kernel_booted(kernel: Path) -> None:
    r = bootlab_cli("run", "--kernel", str(kernel), "--", "uname", "-r")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == kernel.name.removeprefix("vmlinuz-")


def test_binary_output_is_byte_identical() -> None:
    r = bootlab_cli("run", "--", "cat", "/bin/busybox")
    assert r.returncode == 0
    assert r.stdout == Path("/bin/busybox").read_bytes()
    assert r.stderr == b""


def test_host_stdin_is_the_commands_stdin() -> None:
    data = bytes(range(256)) * 1000 + b"\0end"
    r = bootlab_cli("run", "--", "cat", input=data)
    assert r.returncode == 0
    assert r.stdout == data


def test_not_found_and_not_executable() -> None:
    r = bootlab_cli("run", "--", "no-such-command")
    assert r.returncode == 127
    assert b"no-such-command: command not found" in r.stderr
    r = bootlab_cli("run", "--", "/etc/passwd")
    assert r.returncode == 126


def test_killed_by_signal_is_128_plus_n() -> None:
    r = bootlab_cli("run", "--", "sh", "-c", "kill -TERM $$")
    assert r.returncode == 128 + signal.SIGTERM


def test_timeout_is_124_and_leaves_no_qemu(tmp_path: Path) -> None:
    log = tmp_path / "timeout-console.log"
    r = bootlab_cli("run", "--timeout", "6", "--console-log", str(log), "--", "sleep", "100")
    assert r.returncode == 124
    assert b"timeout" in r.stderr
    assert qemu_processes_with(str(log)) == []


def test_panic_is_125_with_the_kernels_reason(tmp_path: Path) -> None:
    log = tmp_path / "panic.log"
    r = bootlab_cli("run", "--append", "rdinit=/nope", "--console-log", str(log), "--", "true")
    assert r.returncode == 125
    err = r.stderr.decode()
    # With no /nope in the initramfs the kernel falls back to a root device, finds none, panics.
    assert "/nope" in err and "Unable to mount root fs" in err
    assert str(log) in err
    assert "Kernel panic" in log.read_text(errors="replace")


@pytest.mark.parametrize("args, message", [
    (["--kernel", "/nonexistent/bzImage"], "no such file"),
    (["--kernel", "/etc/passwd"], "not a kernel image"),
    (["--memory", "lots"], "not a size"),
    (["--cpus", "0"], "not a positive integer"),
    (["--timeout", "-1"], "not a positive number"),
    (["--accel", "hax"], "invalid choice"),
    (["--busybox", "/nonexistent"], "no such file"),
    (["--busybox", "/etc/passwd"], "not an ELF executable"),  # was a pyelftools traceback
    (["--busybox", "/bin/ls"], "dynamically linked"),
    (["--add", "/etc/hostname:/"], "a file needs a name in the guest"),  # these three were tracebacks
    (["--add", "/etc/hostname:/./x/.."], "may not contain '..'"),
    (["--disk", "d" * 300], "file name too long"),
    (["--add", "/dev/zero:/z"], "not a regular file or a directory"),  # was read to the end of memory
    (["--module", "no_such_module_xyz"], "not found"),
])
def test_bad_input_is_one_line_and_status_2(args: list[str], message: str) -> None:
    r = bootlab_cli("run", *args, "--", "true")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert r.stdout == b""


def test_dry_run_prints_the_qemu_argv() -> None:
    r = bootlab_cli("run", "--dry-run", "--", "true")
    assert r.returncode == 0
    line = r.stdout.decode()
    assert line.startswith("qemu-system-x86_64 ") and "-kernel" in line and "-initrd" in line


@pytest.mark.vm
def test_too_little_memory_is_named_when_the_kernel_says_nothing() -> None:
    """With -m 48M the VM stopped at once, console empty, and all we said was that the agent
    never started; with 64M it hangs until the timeout, as silently."""
    r = bootlab_cli("run", "-m", "48M", "--timeout", "60", "--", "true")
    assert r.returncode == 125, r.stderr
    assert "the kernel printed nothing, and -m 48M may be too little memory" in r.stderr.decode()


def test_memory_sizes_as_qemu_reads_them() -> None:
    from bootlab.vm.vm import _mebibytes

    assert [_mebibytes(s) for s in ("48M", "65536K", "2G", "1T", "96")] == [48, 64, 2048, 1 << 20, 96]
    assert bootlab_cli("run", "-m", "0", "--dry-run", "--", "true").returncode == 2
    assert bootlab_cli("run", "-m", "00G", "--dry-run", "--", "true").returncode == 2


@pytest.mark.vm
def test_a_reader_that_goes_away_ends_the_command_quietly_with_sigpipes_status() -> None:
    """`bootlab run -- yes | head -2`: was "the VM failed: the VM stopped while the command ran",
    exit 125, seconds later; now the command gets SIGPIPE and bootlab exits 141 saying nothing."""
    proc = subprocess.Popen([sys.executable, "-m", "bootlab", "run", "--", "yes"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(4) == b"y\ny\n"
    proc.stdout.close()
    assert proc.wait(timeout=60) == 141
    assert b"failed" not in proc.stderr.read()


@pytest.mark.vm
def test_output_that_cannot_be_written_is_one_line_not_a_traceback() -> None:
    with open("/dev/full", "wb") as full:
        r = subprocess.run([sys.executable, "-m", "bootlab", "run", "--", "echo", "hi"], stdin=subprocess.DEVNULL,
                           stdout=full, stderr=subprocess.PIPE, timeout=120)
    assert r.returncode == 125
    assert r.stderr == b"bootlab: error: cannot write the command's stdout here: No space left on device\n"
    with open("/dev/full", "wb") as full:  # stderr too: nothing can be said, the status still tells
        r = subprocess.run([sys.executable, "-m", "bootlab", "run", "--", "sh", "-c", "echo x >&2"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=full, timeout=120)
    assert r.returncode == 125


def test_dry_run_prints_a_path_that_is_not_utf8_as_its_bytes(tmp_path: Path) -> None:
    """Under a strict UTF-8 stdout (a UTF-8 locale), printing the name was a traceback."""
    share = os.path.join(os.fsencode(tmp_path), b"d\xff")
    os.mkdir(share)
    r = bootlab_cli("run", "--dry-run", "--share", os.fsdecode(share) + ":/mnt", "--", "true",
                    env={"PYTHONIOENCODING": "utf-8:strict"})
    assert r.returncode == 0, r.stderr
    assert b"path=" + share + b"," in r.stdout and r.stdout.endswith(b"\n")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_signal_to_bootlab_mid_boot_leaves_no_qemu(tmp_path: Path, sig: int) -> None:
    log = tmp_path / f"sig{sig}.log"
    p = subprocess.Popen([sys.executable, "-m", "bootlab", "run", "--console-log", str(log), "--",
                          "sleep", "100"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not qemu_processes_with(str(log)):  # QEMU is up: the VM is booting
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(sig)
    p.communicate(timeout=30)
    expected = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}
    assert p.returncode == expected[sig]
    deadline = time.monotonic() + 10
    while qemu_processes_with(str(log)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert qemu_processes_with(str(log)) == []


def test_module_is_loaded_before_the_command() -> None:
    r = bootlab_cli("run", "--module", "ext4", "--", "cat", "/proc/modules")
    assert r.returncode == 0, r.stderr
    loaded = {line.split()[0] for line in r.stdout.decode().splitlines()}
    assert {"ext4", "jbd2", "mbcache", "virtio_console"} <= loaded


def test_interactive_shell_on_the_console() -> None:
    r = bootlab_cli("run", input=b"echo marker-$((6*7))\nexit\n", timeout=120)
    assert r.returncode == 0, r.stderr
    assert b"marker-42" in r.stdout


def test_verbose_shows_the_console_on_stderr_only() -> None:
    r = bootlab_cli("run", "-v", "--", "echo", "hi")
    assert r.returncode == 0
    assert r.stdout == b"hi\n"
    assert b"Linux version" in r.stderr and b"Run /init as init process" in r.stderr


def test_cpus_and_memory_reach_the_guest() -> None:
    r = bootlab_cli("run", "--cpus", "2", "--memory", "1G", "--", "sh", "-c", "nproc; grep MemTotal /proc/meminfo")
    assert r.returncode == 0, r.stderr
    cpus, mem = r.stdout.decode().splitlines()
    assert cpus == "2"
    assert 900_000 < int(mem.split()[1]) <= 1_048_576  # kB: 1 GiB less what the kernel keeps


def test_initrd_with_a_missing_disk_is_status_2(tmp_path: Path) -> None:
    img = tmp_path / "img.cpio"
    img.write_bytes(b"070701")
    r = bootlab_cli("run", "--initrd", str(img), "--disk", str(tmp_path / "nope.img"))
    assert r.returncode == 2 and "no such image file" in r.stderr.decode()


def test_library_refuses_commands_in_an_image_without_agent(tmp_path: Path) -> None:
    import bootlab

    vm = bootlab.VM(initrd=tmp_path / "any.cpio")
    with pytest.raises(bootlab.BadInput, match="no bootlab agent"):
        vm.start()


@pytest.mark.parametrize("command", [["run"], ["initramfs"], ["initramfs", "ls"], ["initramfs", "examine"],
                                     ["initramfs", "extract"], ["initramfs", "build"], ["rootfs"],
                                     ["rootfs", "build"], ["rootfs", "debootstrap"], ["kernel"], ["kernel", "fetch"]])
def test_every_command_help_ends_with_examples(command: list[str]) -> None:
    r = bootlab_cli(*command, "--help")
    assert r.returncode == 0
    examples = r.stdout.decode().split("examples:", 1)[1]
    assert f"bootlab {command[0]}" in examples


@pytest.mark.parametrize("columns, width", [("40", 40), ("0", 80), ("junk", 80)])
def test_help_wraps_to_the_terminal_width(columns: str, width: int) -> None:
    """$COLUMNS, else the terminal (not one here: stdout is a pipe), else 80; as argparse does."""
    r = bootlab_cli("initramfs", "ls", "--help", env={"COLUMNS": columns})
    options = r.stdout.decode().split("options:")[1].split("examples:")[0].splitlines()
    assert width - 20 < max(map(len, options)) <= width


def test_descriptions_wrap_and_examples_keep_their_lines() -> None:
    text = bootlab_cli("run", "--help", env={"COLUMNS": "60"}).stdout.decode()
    description = text.split("\n\n")[1]
    assert description.startswith("Boot a kernel") and max(map(len, description.splitlines())) <= 60
    assert "\n  bootlab run -- uname -a" in text.split("examples:")[1]  # (raw, as written)


@pytest.mark.parametrize("command", [[], ["initramfs"], ["rootfs"], ["kernel"]])
def test_each_subcommand_has_its_help_on_its_own_line(command: list[str]) -> None:
    """argparse measured subcommands without their indent: `initramfs`'s help went a line down."""
    text = bootlab_cli(*command, "--help").stdout.decode()
    listed = text.split("positional arguments:")[1].split("options:")[0].splitlines()[2:]
    assert listed and all(len(line.split(None, 1)) == 2 for line in listed if line.strip()), listed


def test_a_fifo_added_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = bootlab_cli("run", "--dry-run", "--add", f"{fifo}:/f", "--", "true", timeout=60)
    assert r.returncode == 2 and b"not a regular file or a directory" in r.stderr
