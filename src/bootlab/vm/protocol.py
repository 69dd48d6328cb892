"""The host side of the guest agent's wire format (see guest/agent.c; keep the two in step).

Frames both ways: a 12-byte little-endian header {type, id, length}, then `length` bytes.
One port carries everything, so the order of a command's output and its exit is never in doubt.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading
from dataclasses import dataclass
from enum import IntEnum

HEADER = struct.Struct("<III")
MAX_PAYLOAD = 1 << 20
STDIN_CHUNK = 256 << 10
EXEC_STDIN = 1


class T(IntEnum):
    EXEC = 1
    STDIN = 2
    SIGNAL = 3
    SHUTDOWN = 4
    READY = 101
    STDOUT = 102
    STDERR = 103
    EXIT = 104
    EXEC_ERROR = 105


@dataclass(frozen=True)
class Frame:
    type: int
    id: int
    payload: bytes


def encode(type_: int, id_: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError("frame payload too large")
    return HEADER.pack(type_, id_, len(payload)) + payload


def encode_exec(id_: int, argv: list[str], env: dict[str, str], cwd: str, with_stdin: bool) -> bytes:
    def z(s: str) -> bytes:
        b = s.encode()
        if b"\0" in b:
            raise ValueError(f"NUL byte in command argument or environment: {s!r}")
        return b + b"\0"

    body = struct.pack("<III", EXEC_STDIN if with_stdin else 0, len(argv), len(env))
    body += b"".join(z(a) for a in argv) + b"".join(z(f"{k}={v}") for k, v in env.items()) + z(cwd)
    return encode(T.EXEC, id_, body)


def decode_exit(payload: bytes) -> tuple[bool, int]:
    """(signaled, number): the exit code, or the signal that ended the command."""
    kind, value = struct.unpack("<ii", payload[:8])
    return kind == 1, value


def decode_exec_error(payload: bytes) -> int:
    (err,) = struct.unpack("<i", payload[:4])
    return err


def describe_errno(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))}: {os.strerror(err)}"


class Channel:
    """A connected stream socket speaking frames; send is thread-safe, receive is one reader's."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()
        self._buf = bytearray()

    def send(self, data: bytes, timeout: float | None = None) -> None:
        """Send whole frames; with a timeout, give up (OSError) if another sender holds the line."""
        if not self._send_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise OSError("channel busy")
        try:
            self.sock.sendall(data)
        finally:
            self._send_lock.release()

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(1 << 20, n - len(self._buf)))
            if not chunk:
                return False
            self._buf += chunk
        return True

    def recv(self) -> Frame | None:
        """The next frame, or None when the guest side has closed."""
        if not self._fill(HEADER.size):
            return None
        type_, id_, length = HEADER.unpack_from(self._buf)
        if length > MAX_PAYLOAD:
            raise ConnectionError(f"guest agent sent an oversized frame ({length} bytes)")
        if not self._fill(HEADER.size + length):
            return None
        payload = bytes(self._buf[HEADER.size:HEADER.size + length])
        del self._buf[:HEADER.size + length]
        return Frame(type_, id_, payload)
