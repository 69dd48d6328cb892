"""--ssh: a key bootlab owns, the keys it authorizes in the guest, and a free host port."""

from __future__ import annotations

import errno
import fcntl
import shutil
import socket
import subprocess
from pathlib import Path

from bootlab import cache
from bootlab.errors import BadInput, BootlabError

# QEMU user networking's fixed plan: guest, netmask, gateway (the host), DNS forwarder.
USER_NET = "10.0.2.15/255.255.255.0/10.0.2.2/10.0.2.3"


def key_path() -> Path:
    return cache.root() / "ssh" / "id_ed25519"


def ensure_key() -> Path:
    """bootlab's own key pair, made once; `ssh -i` it when you have no key of your own."""
    key = key_path()
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise BootlabError("ssh-keygen not found: apt-get install openssh-client")
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # One maker at a time: runs started together would otherwise remove each other's half-made
    # pair, and ssh-keygen refuses to overwrite (it asks, on a stdin it does not have).
    with open(key.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if key.exists() and key.with_suffix(".pub").exists():
            return key  # made meanwhile by another run
        for p in (key, key.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "bootlab", "-f", str(key)],
                       check=True, stdin=subprocess.DEVNULL)
    return key


def authorized_keys() -> bytes:
    """bootlab's public key and the user's own, so that plain `ssh -p PORT root@127.0.0.1` works."""
    keys = [ensure_key().with_suffix(".pub")]
    keys += sorted((Path.home() / ".ssh").glob("id_*.pub"))
    lines = []
    for k in keys:
        try:
            text = k.read_text().strip()
        except OSError:
            continue
        if text and text not in lines:
            lines.append(text)
    return ("\n".join(lines) + "\n").encode()


def check_port_free(port: int) -> None:
    if not 1 <= port <= 65535:
        raise BadInput(f"--ssh {port}: not a TCP port number")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            why = "already in use" if e.errno == errno.EADDRINUSE else e.strerror
            raise BadInput(f"--ssh {port}: 127.0.0.1:{port} is {why}; pick another port") from None
