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


ARCHES = {"x86_64": None, "aarch64": "arm64"}  # bootlab's name -> Debian's (None: the host's)


@pytest.fixture(scope="module", params=list(ARCHES))
def ssh_image(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """Debian with openssh-server, for each architecture (arm64's maintainer scripts run under
    qemu-user, which the project's setup registers)."""
    from bootlab.image.debian import debian_rootfs

    img = tmp_path_factory.mktemp("ssh") / f"debian-ssh-{request.param}.img"
    debian_rootfs("bookworm", img, include=["openssh-server"], arch=ARCHES[request.param],
                  progress=lambda line: None)
    return request.param, img


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ssh_into_a_debian_guest(ssh_image: tuple[str, Path]) -> None:
    from bootlab.vm import ssh

    arch, image = ssh_image
    port = free_port()
    vm = subprocess.Popen([sys.executable, "-m", "bootlab", "run", "--arch", arch, "--disk", str(image), "--root", "/dev/vda",
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
        assert r.stdout.startswith(b"Linux ") and arch.encode() in r.stdout
    finally:
        vm.send_signal(signal.SIGTERM)
        vm.communicate(timeout=30)
