"""bootlab.VM: boot a kernel once, run many commands in it, move files in and out.

    with bootlab.VM(kernel="/boot/vmlinuz-6.1.0-56-amd64") as vm:
        r = vm.run(["uname", "-r"])
        print(r.returncode, r.stdout)
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import signal as signals
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Sequence, Union

from bootlab import cache
from bootlab.errors import BadInput, BootlabError, Timeout, VMFailed
from bootlab.image import busybox as bb
from bootlab.image import guest
from bootlab.image.entry import Entry, path_parts
from bootlab.kernel import find
from bootlab.kernel.modules import ModuleIndex
from bootlab.vm import accel as accel_mod
from bootlab.vm import arch as arch_mod
from bootlab.vm.agent_build import agent_binary
from bootlab.vm.machine import QCOW2_MAGIC, Disk, Machine, Share
from bootlab.vm.protocol import STDIN_CHUNK, Channel, Frame, T, decode_exec_error, decode_exit, encode, encode_exec
from bootlab.vm.session import Session

if TYPE_CHECKING:
    from bootlab.analysis.console import Outcome
    from bootlab.kernel.fetch import FetchedKernel

Sink = Union[Callable[[bytes], object], BinaryIO, None]
Input = Union[bytes, BinaryIO, None]

DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "TERM": "dumb",
}
LOGS_KEPT = 50


@dataclass
class RunResult:
    """A finished guest command. `returncode` follows the shell: 128+N when killed by signal N,
    126 when the command could not be executed, 127 when it was not found."""

    returncode: int
    stdout: bytes | None
    stderr: bytes | None
    signal: int | None = None
    exec_errno: int | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class _Job:
    id: int
    on_stdout: Callable[[bytes], object]
    on_stderr: Callable[[bytes], object]
    done: threading.Event = field(default_factory=threading.Event)
    frame: Frame | None = None  # the EXIT or EXEC_ERROR frame
    sink_error: Exception | None = None  # raised by on_stdout/on_stderr (a closed pipe): run re-raises it


def _sink(target: Sink, collected: list[bytes]) -> Callable[[bytes], object]:
    if target is None:
        return collected.append
    if callable(target):
        return target

    def write(data: bytes) -> None:
        target.write(data)  # type: ignore[union-attr]
        target.flush()  # type: ignore[union-attr]

    return write


SMALL_MEMORY_MIB = 128  # below this, a silent kernel is probably short of memory


def _mebibytes(size: str) -> float:
    """QEMU's -m value in MiB: a number with an optional K, M, G or T suffix (M if none)."""
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1 << 20}
    unit = size[-1:].upper()
    try:
        return float(size[:-1]) * scale[unit] if unit in scale else float(size)
    except ValueError:
        return float("inf")  # (not ours to judge here; QEMU says what is wrong with it)


def new_console_log() -> Path:
    """A fresh console log file under the cache; old ones beyond LOGS_KEPT are removed."""
    logs = cache.root() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    old = sorted(logs.glob("console-*.log"))
    for p in old[: max(0, len(old) - LOGS_KEPT + 1)]:
        p.unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return logs / f"console-{stamp}-{os.getpid()}.log"


class VM:
    """A booted guest with bootlab's agent as PID 1. See the module docstring for use."""

    def __init__(self, kernel: str | Path | None = None, *, arch: str | None = None,
                 memory: str = "512M", cpus: int = 1, accel: str = "auto",
                 append: Sequence[str] = (), modules: Sequence[str] = (),
                 busybox: str | Path | None = None, console_log: str | Path | None = None,
                 live_console: bool = False, boot_timeout: float = 120.0,
                 interactive: bool = False, prefer_pvh: bool = True,
                 initrd: str | Path | None = None, extra_entries: Sequence[Entry] = (),
                 disks: Sequence[Disk | str | Path] = (), root: str | None = None,
                 rootfstype: str | None = None, shares: Sequence[tuple[str | Path, str, bool]] = (),
                 host_root: bool = False, net: bool = False, ssh_port: int | None = None) -> None:
        self.arch = arch_mod.get(arch)
        self.modules_root: Path | None = None  # a fetched kernel's modules, not the host's
        self.foreign = self.arch.name != arch_mod.host_arch()
        if kernel is not None:
            self.kernel_path = Path(kernel)
        elif self.foreign:
            fetched = self._foreign_kernel()
            self.kernel_path, self.modules_root = fetched.kernel, fetched.modules_dir
        else:
            self.kernel_path = find.default_kernel()
        self.memory = memory
        self.cpus = cpus
        self.accel_requested = accel
        self.user_append = list(append)
        self.user_modules = list(modules)
        self.busybox = Path(busybox) if busybox is not None else None
        self.console_log = Path(console_log) if console_log is not None else new_console_log()
        self.live_console = live_console
        self.boot_timeout = boot_timeout
        self.interactive = interactive
        self.prefer_pvh = prefer_pvh
        self.initrd = Path(initrd) if initrd is not None else None  # booted as it is: no agent
        self.extra_entries = list(extra_entries)
        self.disks = [d if isinstance(d, Disk) else Disk(Path(d)) for d in disks]
        self.root = root  # a guest device to switch_root into, e.g. /dev/vda
        self.rootfstype = rootfstype
        self.shares = [(Path(h), g, rw) for h, g, rw in shares]  # (host dir, guest path, writable)
        self.host_root = host_root  # the host's / read-only, under a tmpfs overlay
        self.ssh_port = ssh_port  # 127.0.0.1:PORT -> guest:22, with keys authorized
        self.net = net or ssh_port is not None
        self.accel: accel_mod.AccelChoice | None = None
        self.release: str | None = None  # the guest's `uname -r`, once booted
        self.boot_seconds: float | None = None
        self._session: Session | None = None
        self._channel: Channel | None = None
        self._reader: threading.Thread | None = None
        self._job: _Job | None = None
        self._ids = 0
        self._dead = threading.Event()
        self._lock = threading.Lock()
        self._ready = threading.Event()

    # ---- building what to boot ----

    def _foreign_kernel(self) -> "FetchedKernel":
        """Another architecture's kernel: Debian's, fetched once into the cache."""
        import sys

        from bootlab.kernel import fetch

        got = fetch.cached_kernel(self.arch.name)
        if got is None:
            quiet = not sys.stderr.isatty()
            got = fetch.fetch_kernel(self.arch.name, progress=(lambda line: None) if quiet else
                                     (lambda line: print(f"bootlab: {line}", file=sys.stderr)))
        return got

    def _busybox(self) -> Path:
        if self.busybox is not None or not self.foreign:
            return bb.find_busybox(self.busybox)
        from bootlab.kernel import fetch

        return fetch.fetch_busybox(self.arch.name, progress=lambda line: None)

    def machine(self) -> Machine:
        """Everything resolved and built, but nothing started: what --dry-run prints."""
        if self.cpus < 1:
            raise BadInput(f"--cpus {self.cpus}: must be at least 1")
        # A kernel without a PVH entry boots as it is (microvm's firmware loads a bzImage too),
        # only slower: the decompressor runs under TCG.
        kernel = find.bootable(self.kernel_path, prefer_pvh=self.prefer_pvh)
        # Another architecture's kernel: QEMU's own words are far off ("kernel too old to load
        # a ram disk"), or it says nothing at all.
        if kernel.image.arch not in (None, self.arch.name):
            raise BadInput(f"kernel {self.kernel_path}: an {kernel.image.arch} kernel; "
                           f"boot it with --arch {kernel.image.arch}")
        own_image = self.initrd is not None
        self._check_disks()
        self._check_shares()
        root_fstype = self._root_fstype() if self.root is not None else None
        initrd = self.initrd if own_image else self._initramfs(kernel.image.release, root_fstype)
        self.accel = accel_mod.choose(self.accel_requested, self.arch, kernel.boot_path)
        # cryptomgr.notests: the crypto self-tests cost 0.2 s of TCG boot; --append can undo it.
        append = [f"console={self.arch.console}", "panic=-1", "cryptomgr.notests", *self.arch.kernel_args]
        if not own_image:
            append.insert(2, "rdinit=/init")
        khz = arch_mod.host_tsc_khz() if self.arch.tcg_tsc_hint and self.accel.name == "tcg" else None
        if khz and self.arch.name == arch_mod.host_arch():
            append.append(f"tsc_early_khz={khz}")
        if self.interactive and not own_image:
            append.append("bootlab.shell")
        p9 = self._p9_shares()
        if self.net:
            from bootlab.vm.ssh import USER_NET

            append.append(f"bootlab.net={USER_NET}")
        if self.host_root:
            append.append("bootlab.hostroot=hostroot")
        if self.shares:
            append.append("bootlab.shares=" + ",".join(
                f"share{i}:{guest}" + ("" if rw else ":ro") for i, (_, guest, rw) in enumerate(self.shares)))
        if self.root is not None:
            append += [f"bootlab.root={self.root}", f"bootlab.rootfstype={root_fstype}"]
            if self._root_disk().readonly:  # type: ignore[union-attr]  # _check_disks made sure it exists
                append.append("bootlab.rootflags=ro")
        append += self.user_append
        return Machine(arch=self.arch, kernel=kernel.boot_path, console_log=self.console_log,
                       initrd=initrd, append=append, memory=self.memory, cpus=self.cpus,
                       accel=self.accel.name, console_stdio=self.interactive or self.live_console,
                       agent_socket=None if self.interactive or own_image
                       else f"bootlab-{os.getpid()}-{secrets.token_hex(6)}",
                       disks=self.disks, shares=p9, net=self.net,
                       host_forwards=[(self.ssh_port, 22)] if self.ssh_port else [])

    def _check_disks(self) -> None:
        for d in self.disks:
            if not d.path.is_file():
                raise BadInput(f"--disk {d.path}: no such image file")
            if not os.access(d.path, os.R_OK | (0 if d.readonly else os.W_OK)):
                raise BadInput(f"--disk {d.path}: permission denied{'' if d.readonly else ' (add ,ro to attach it read-only)'}")
            with open(d.path, "rb") as f:
                qcow2 = f.read(4) == QCOW2_MAGIC
            # A qcow2 file attached as raw shows the guest its container, which a write corrupts.
            if qcow2 and d.format == "raw":
                raise BadInput(f"--disk {d.path}: a qcow2 image; attach it with ,format=qcow2")
            if not qcow2 and d.format == "qcow2":
                raise BadInput(f"--disk {d.path},format=qcow2: not a qcow2 image (drop format=qcow2 for a raw one)")
        if self.root is not None:
            if not self.disks:
                raise BadInput(f"--root {self.root}: attach the disk with --disk IMG")
            if not re.fullmatch(r"/dev/vd[a-z]", self.root):
                raise BadInput(f"--root {self.root}: expected a virtio disk such as /dev/vda")
            if self._root_disk() is None:
                raise BadInput(f"--root {self.root}: only {len(self.disks)} disk(s) attached")

    def _p9_shares(self) -> list[Share]:
        out = [Share(Path("/"), "hostroot")] if self.host_root else []
        return out + [Share(h, f"share{i}", not rw) for i, (h, _, rw) in enumerate(self.shares)]

    def _check_shares(self) -> None:
        if self.host_root and self.root is not None:
            raise BadInput("--host-root and --root both choose the guest's root: pick one")
        if self.host_root and self.foreign:
            raise BadInput(f"--host-root runs the host's programs: the guest must be {arch_mod.host_arch()}, "
                           f"not {self.arch.name}")
        for host, target, _ in self.shares:
            if not host.is_dir():
                raise BadInput(f"--share {host}: no such directory")
            if not target.startswith("/") or re.search(r"[\s,:]", target) or ".." in target.split("/"):
                raise BadInput(f"--share {host}:{target}: the guest path must be absolute, "
                               "without spaces, commas, colons or '..'")
            if not path_parts(target):  # "/", "//", "/." (once mounted nowhere, silently)
                raise BadInput(f"--share {host}:{target}: cannot replace the guest's root; share it at "
                               "a directory below / (--host-root boots the host's / as the root)")

    def _root_disk(self) -> Disk | None:
        if self.root is None:
            return None
        index = ord(self.root[-1]) - ord("a")
        return self.disks[index] if index < len(self.disks) else None

    def _root_fstype(self) -> str:
        """The root's filesystem, from its superblock unless given: ext2/3/4 all mount as ext4."""
        if self.rootfstype:
            return self.rootfstype
        disk = self._root_disk()
        assert disk is not None  # _check_disks ran first
        if disk.format == "qcow2":  # (its superblock is somewhere inside the container)
            raise BadInput(f"--root {self.root}: give the filesystem of a qcow2 disk with --rootfstype, e.g. ext4")
        with open(disk.path, "rb") as f:
            f.seek(1080)
            magic = f.read(2)
        if magic == b"\x53\xef":
            return "ext4"
        raise BadInput(f"--root {self.root}: {disk.path} has no ext2/3/4 filesystem; "
                       "give its type with --rootfstype")

    def _initramfs(self, release: str | None, root_fstype: str | None) -> Path:
        mods_root = self.modules_root or find.modules_dir(release)
        if mods_root is None:
            # A kernel fetched or built elsewhere: its modules may sit beside it.
            near = self.kernel_path.parent.parent / "lib" / "modules" / str(release)
            mods_root = near if (near / "modules.dep").exists() else None
        paths: list[str] = []
        wanted = [*self.arch.virtio_bus_modules, "virtio_console", *self.user_modules]
        if self.disks:
            wanted.append("virtio_blk")
        if self.shares or self.host_root:
            wanted += ["9pnet_virtio", "9p"]
        if self.net:
            wanted.append("virtio_net")
        if self.host_root:
            wanted.append("overlay")
        if root_fstype is not None:
            wanted.append(root_fstype)
        extra = list(self.extra_entries)
        if self.ssh_port is not None:
            from bootlab.image.entry import file
            from bootlab.vm import ssh

            ssh.check_port_free(self.ssh_port)
            extra.append(file("etc/bootlab/authorized_keys", ssh.authorized_keys(), 0o600))
        optional: set[str] = set()
        if mods_root is not None:
            paths, optional = ModuleIndex.load(mods_root).resolve(wanted)
        elif self.user_modules:
            raise BadInput(f"no /lib/modules/{release} for kernel {self.kernel_path}: cannot add "
                           f"modules {', '.join(self.user_modules)}")
        spec = guest.GuestSpec(agent=agent_binary(self.arch), busybox=self._busybox(),
                               modules_root=mods_root, module_paths=paths, optional_modules=optional,
                               extra=extra)
        return guest.build(spec)

    # ---- lifecycle ----

    def start(self) -> "VM":
        if self.initrd is not None and not self.interactive:
            raise BadInput("an initramfs of your own has no bootlab agent to run commands in: "
                           "boot it with interactive=True and wait_interactive()")
        t0 = time.monotonic()
        machine = self.machine()
        self._session = Session(machine, interactive=self.interactive, live_console=self.live_console)
        self._session.start()
        if self.interactive:
            return self
        deadline = t0 + self.boot_timeout
        self._channel = self._session.connect_agent(deadline)
        if self._channel is not None:
            self._reader = threading.Thread(target=self._read_frames, daemon=True)
            self._reader.start()
            while not self._ready.wait(0.1):
                if self._dead.is_set() or time.monotonic() > deadline:
                    break
        if not self._ready.is_set():
            if time.monotonic() > deadline and not self._dead.is_set() and self._session.wait(0) is None:
                self.close()
                raise Timeout(f"the guest did not answer within {self.boot_timeout:g} s"
                              f"{self._memory_hint()} (console log: {self.console_log})")
            self._fail("the VM stopped before its agent started")
        self.boot_seconds = time.monotonic() - t0
        return self

    def wait_interactive(self, timeout: float | None = None) -> int | None:
        """For interactive sessions: wait until the guest powers off; QEMU's exit status, or
        None if it was still running after `timeout` seconds."""
        assert self._session is not None
        return self._session.wait(timeout)

    def _read_frames(self) -> None:
        assert self._channel is not None
        try:
            while True:
                frame = self._channel.recv()
                if frame is None:
                    break
                self._dispatch(frame)
        except (OSError, ConnectionError):
            pass
        finally:
            self._dead.set()
            job = self._job
            if job is not None:
                job.done.set()

    def _dispatch(self, f: Frame) -> None:
        if f.type == T.READY:
            self.release = f.payload.decode(errors="replace")
            self._ready.set()
            return
        job = self._job
        if job is None or f.id != job.id:
            return
        if f.type in (T.STDOUT, T.STDERR):
            if job.sink_error is None:  # (after a failure, the rest is dropped, as by a closed pipe)
                try:
                    (job.on_stdout if f.type == T.STDOUT else job.on_stderr)(f.payload)
                except Exception as e:  # noqa: BLE001  (the caller's; run() raises it)
                    job.sink_error = e
        elif f.type in (T.EXIT, T.EXEC_ERROR):
            job.frame = f
            job.done.set()

    def _fail(self, what: str) -> None:
        """Stop everything and raise VMFailed with the console's explanation."""
        session = self._session
        if session is not None:
            session.wait(2)
        qemu_error = session.qemu_error() if session is not None else None
        self.close()
        outcome = self.console_outcome()
        if outcome.failed:
            reason = outcome.reason
        elif qemu_error:
            reason = f"QEMU: {qemu_error}"
        else:
            reason = what + self._memory_hint()
        raise VMFailed(f"{reason} (console log: {self.console_log})", self.console_log, outcome)

    def _memory_hint(self) -> str:
        """A kernel given too little memory stops or hangs before printing a line (Debian's,
        with bootlab's initramfs, needs about 96 MiB): say so when that is what it looks like."""
        try:
            silent = not self.console_log.read_bytes().strip()
        except OSError:
            silent = True
        if silent and _mebibytes(self.memory) < SMALL_MEMORY_MIB:
            return (f"; the kernel printed nothing, and -m {self.memory} may be too little memory "
                    f"for it and its initramfs (try -m 256M)")
        return ""

    def console_outcome(self) -> "Outcome":
        """What the console log says about how the boot went."""
        from bootlab.analysis.console import analyze

        try:
            text = self.console_log.read_text(errors="replace")
        except OSError:
            text = ""
        return analyze(text)

    def close(self) -> None:
        """Power the guest off (quickly) and make sure QEMU is gone."""
        if self._channel is not None and not self._dead.is_set():
            try:
                self._channel.send(encode(T.SHUTDOWN, 0), timeout=1.0)
            except OSError:
                pass
        if self._session is not None:
            if self._channel is not None:
                self._session.wait(3)
            self._session.close()
        if self._channel is not None:
            self._channel.sock.close()
            self._channel = None

    def __enter__(self) -> "VM":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- commands and files ----

    def run(self, argv: Sequence[str], *, input: Input = None, stdout: Sink = None,
            stderr: Sink = None, env: dict[str, str] | None = None, cwd: str = "/",
            timeout: float | None = None) -> RunResult:
        """Run one command in the guest. stdout/stderr: None collects bytes into the result, a
        callable or binary file receives them as they arrive. Raises Timeout (after killing the
        command) or VMFailed when the guest dies."""
        if not argv:
            raise BadInput("no command given")
        if self._channel is None or self._dead.is_set():
            raise BootlabError("the VM is not running")
        with self._lock:
            self._ids += 1
            out: list[bytes] = []
            err: list[bytes] = []
            job = _Job(self._ids, _sink(stdout, out), _sink(stderr, err))
            self._job = job
            full_env = {**DEFAULT_ENV, **(env or {})}
            self._channel.send(encode_exec(job.id, list(argv), full_env, cwd, input is not None))
            if input is not None:
                threading.Thread(target=self._feed, args=(job, input), daemon=True).start()
            deadline = None if timeout is None else time.monotonic() + timeout
            stopping: float | None = None  # when the command was told its output goes nowhere
            killed = False
            while not job.done.wait(0.2):
                if job.sink_error is not None:
                    # Where its output went is gone (`bootlab run -- yes | head -1`): the command
                    # gets SIGPIPE as it would here, SIGKILL if it ignores that.
                    if stopping is None:
                        stopping = time.monotonic()
                        self._signal(job, signals.SIGPIPE)
                    elif time.monotonic() - stopping > 5:
                        break
                    elif time.monotonic() - stopping > 2 and not killed:
                        self._signal(job, signals.SIGKILL)
                        killed = True
                if deadline is not None and time.monotonic() > deadline:
                    self._channel.send(encode(T.SIGNAL, job.id, int(signals.SIGKILL).to_bytes(4, "little")))
                    job.done.wait(5)
                    self._job = None
                    raise Timeout(f"command {argv[0]!r} did not finish within {timeout:g} s")
            self._job = None
            if job.sink_error is not None:
                raise job.sink_error
            if job.frame is None:
                self._fail("the VM stopped while the command ran")
            assert job.frame is not None
            result = self._result(job.frame, out if stdout is None else None,
                                  err if stderr is None else None)
            return result

    def _signal(self, job: _Job, sig: int) -> None:
        """Send a signal to the command's process group; not waiting long for the line."""
        assert self._channel is not None
        try:
            self._channel.send(encode(T.SIGNAL, job.id, int(sig).to_bytes(4, "little")), timeout=1.0)
        except OSError:
            pass  # the VM is gone, or stdin holds the line: the caller gives up after a while

    @staticmethod
    def _result(f: Frame, out: list[bytes] | None, err: list[bytes] | None) -> RunResult:
        so = b"".join(out) if out is not None else None
        se = b"".join(err) if err is not None else None
        if f.type == T.EXEC_ERROR:
            e = decode_exec_error(f.payload)
            return RunResult(127 if e == errno.ENOENT else 126, so, se, exec_errno=e)
        signaled, value = decode_exit(f.payload)
        if signaled:
            return RunResult(128 + value, so, se, signal=value)
        return RunResult(value, so, se)

    def _feed(self, job: _Job, source: Input) -> None:
        assert self._channel is not None
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                data = memoryview(source)
                for i in range(0, len(data), STDIN_CHUNK):
                    if job.done.is_set():
                        return
                    self._channel.send(encode(T.STDIN, job.id, bytes(data[i:i + STDIN_CHUNK])))
            else:
                read = getattr(source, "read1", None) or source.read  # type: ignore[union-attr]
                while not job.done.is_set():
                    chunk = read(STDIN_CHUNK)
                    if not chunk:
                        break
                    self._channel.send(encode(T.STDIN, job.id, chunk))
            if not job.done.is_set():
                self._channel.send(encode(T.STDIN, job.id))
        except (OSError, ValueError):
            pass  # the VM went away; the reader thread reports it

    def put(self, data_or_path: bytes | str | Path, dest: str, mode: int = 0o644) -> None:
        """Write a file in the guest from bytes or a host file."""
        if isinstance(data_or_path, (bytes, bytearray)):
            src: Input = bytes(data_or_path)
            r = self.run(["sh", "-c", 'cat > "$1" && chmod "$2" "$1"', "put", dest, f"{mode:o}"], input=src)
        else:
            with open(data_or_path, "rb") as f:
                r = self.run(["sh", "-c", 'cat > "$1" && chmod "$2" "$1"', "put", dest, f"{mode:o}"],
                             input=f)
        if not r.ok:
            raise BootlabError(f"writing {dest} in the guest failed: {(r.stderr or b'').decode(errors='replace').strip()}")

    def get(self, path: str, dest: str | Path | None = None) -> bytes | None:
        """Read a guest file: its bytes, or streamed into the host file `dest`."""
        if dest is None:
            r = self.run(["cat", "--", path])
        else:
            with open(dest, "wb") as f:
                r = self.run(["cat", "--", path], stdout=f)
        if not r.ok:
            raise BootlabError(f"reading {path} in the guest failed: {(r.stderr or b'').decode(errors='replace').strip()}")
        return r.stdout
