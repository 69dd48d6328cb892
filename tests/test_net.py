"""Networking on QEMU user networking: real traffic from the guest to a server on the host."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import pytest

from conftest import bootlab_cli


@pytest.fixture()
def http_server(tmp_path: Path):
    """A server on the host's loopback; the guest reaches it as 10.0.2.2 (user-net's gateway)."""
    (tmp_path / "hello.txt").write_text("served by the host\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


@pytest.mark.vm
def test_guest_fetches_from_the_host(http_server: int) -> None:
    r = bootlab_cli("run", "--net", "--", "sh", "-c",
                    f"cat /etc/resolv.conf; wget -q -O - http://10.0.2.2:{http_server}/hello.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"nameserver 10.0.2.3\nserved by the host\n"


@pytest.mark.vm
def test_ssh_keys_are_authorized_in_the_guest() -> None:
    from bootlab.vm import ssh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = bootlab_cli("run", "--ssh", str(port), "--", "cat", "/root/.ssh/authorized_keys")
    assert r.returncode == 0, r.stderr
    assert ssh.key_path().with_suffix(".pub").read_bytes().strip() in r.stdout


def test_ssh_port_in_use_is_status_2() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = bootlab_cli("run", "--ssh", str(port), "--", "true")
    assert r.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in r.stderr.decode()
