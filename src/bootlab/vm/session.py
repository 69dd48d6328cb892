"""One QEMU process and its channels: start it, connect to the agent, never leave it behind."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from bootlab.errors import BootlabError
from bootlab.vm.machine import Machine
from bootlab.vm.protocol import Channel

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

_PR_SET_PDEATHSIG = 1
# Looked up here: between fork and exec the child should not be loading libraries.
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def _die_with(parent: int) -> None:
    """In the child before exec: if bootlab dies, even by SIGKILL, the kernel kills QEMU too."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # bootlab died before that took hold
        os._exit(1)


def _popen(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen, tying the child to this process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: QEMU
    started from a short-lived thread (a pool booting several VMs at once) died with it. So it
    is started from the main thread, or else from one thread kept for it."""
    kw["preexec_fn"] = functools.partial(_die_with, os.getpid())
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(argv, **kw)
    return _spawner().submit(subprocess.Popen, argv, **kw).result()


_spawner_lock = threading.Lock()
_spawner_pool: ThreadPoolExecutor | None = None


def _spawner() -> ThreadPoolExecutor:
    """One worker thread, which stays until the interpreter shuts down."""
    global _spawner_pool
    with _spawner_lock:
        if _spawner_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _spawner_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bootlab-spawn")
        return _spawner_pool


class Session:
    """A running QEMU. Use as a context manager: leaving it always ends the process."""

    def __init__(self, machine: Machine, *, interactive: bool = False, live_console: bool = False) -> None:
        self.machine = machine
        self.interactive = interactive
        self.live_console = live_console
        self.proc: subprocess.Popen[bytes] | None = None
        self._listener: socket.socket | None = None
        self._stderr_chunks: list[bytes] = []
        self._stderr_thread: threading.Thread | None = None

    def start(self) -> None:
        if self.machine.agent_socket is not None:
            # Abstract socket: nothing in the filesystem to clean up, whatever happens to us.
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            self._listener.bind("\0" + self.machine.agent_socket)
            self._listener.listen(1)
        argv = self.machine.argv()
        if self.interactive:
            stdin, stdout, group = None, None, None  # QEMU owns the terminal
        else:
            stdin, group = subprocess.DEVNULL, 0  # a terminal's ^C reaches bootlab, not QEMU
            stdout = 2 if self.live_console else subprocess.DEVNULL
        try:
            self.proc = _popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, process_group=group)
        except FileNotFoundError:
            self.close()
            raise BootlabError(f"{argv[0]} not found: apt-get install "
                               f"{'qemu-system-x86' if 'x86' in argv[0] else 'qemu-system-arm'}") from None
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            if sum(map(len, self._stderr_chunks)) < 64 << 10:
                self._stderr_chunks.append(line)

    def qemu_stderr(self) -> str:
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=1)
        return b"".join(self._stderr_chunks).decode(errors="replace")

    def qemu_error(self) -> str | None:
        """QEMU's own complaint, without the noise of harmless warnings."""
        lines = [l for l in self.qemu_stderr().splitlines()
                 if l.strip() and "warning:" not in l and "terminating on signal" not in l]
        return lines[-1].strip() if lines else None

    def connect_agent(self, deadline: float) -> Channel | None:
        """Wait for QEMU to connect the agent port; None if QEMU exited or the deadline passed."""
        assert self._listener is not None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return None
            self._listener.settimeout(min(0.2, max(0.01, deadline - time.monotonic())))
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, BlockingIOError):
                continue
            conn.settimeout(None)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self._listener.close()
            self._listener = None
            return Channel(conn)
        return None

    def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> "Session":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
