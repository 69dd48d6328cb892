"""--ssh against a real Debian image with openssh-server: log in from the host with ssh."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def ssh_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bootlab.image.debian import debian_rootfs

    img = tmp_path_factory.mktemp("ssh") / "debian-ssh.img"
    debian_rootfs("bookworm", img, include=["openssh-server"], progress=lambda line: None)
    return img


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ssh_into_a_debian_guest(ssh_image: Path) -> None:
    from bootlab.vm import ssh

    port = free_port()
    vm = subprocess.Popen([sys.executable, "-m", "bootlab", "run", "--disk", str(ssh_image), "--root", "/dev/vda",
                           "--ssh", str(port), "--timeout", "300", "--",
                           "sh", "-c", "mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e"],
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        argv = [shutil.which("ssh") or "ssh", "-i", str(ssh.key_path()), "-p", str(port),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=5", "root@127.0.0.1", "uname", "-a"]
        deadline = time.monotonic() + 120
        while True:
            r = subprocess.run(argv, capture_output=True, timeout=30)
            if r.returncode == 0 or time.monotonic() > deadline or vm.poll() is not None:
                break
            time.sleep(1)
        assert r.returncode == 0, (r.stderr, vm.poll())
        assert r.stdout.startswith(b"Linux ") and b"x86_64" in r.stdout
    finally:
        vm.send_signal(signal.SIGTERM)
        vm.communicate(timeout=30)
