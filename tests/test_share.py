"""Host sharing over virtio-9p, and the host's own root as the guest's, on the real kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import bootlab_cli

pytestmark = pytest.mark.vm


def test_shares_read_only_by_default_and_rw_on_request(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from the host\n")
    r = bootlab_cli("run", "--share", f"{tmp_path}:/mnt/ro", "--share", f"{tmp_path}:/mnt/rw,rw", "--",
                    "sh", "-c", "cat /mnt/ro/in.txt; echo from-guest > /mnt/rw/out.txt; echo x > /mnt/ro/no")
    assert r.stdout == b"from the host\n"
    assert r.returncode != 0 and b"Read-only file system" in r.stderr
    assert (tmp_path / "out.txt").read_text() == "from-guest\n"
    assert not (tmp_path / "no").exists()


def test_share_defaults_to_the_same_path(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("same path\n")
    r = bootlab_cli("run", "--share", str(tmp_path), "--", "cat", str(tmp_path / "f"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"same path\n"


def test_host_root_runs_host_programs_and_keeps_the_host_untouched(tmp_path: Path) -> None:
    marker = tmp_path / "written-in-guest"
    r = bootlab_cli("run", "--host-root", "--", "sh", "-c",
                    f"python3 -c 'print(6*7)'; echo x > {marker}; cat {marker}; uname -r")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split()
    assert lines[:2] == ["42", "x"]
    assert lines[2].startswith("6.1.")
    assert not marker.exists()  # the guest's writes land in its tmpfs overlay


@pytest.mark.parametrize("args, message", [
    (["--share", "/no/such/dir"], "no such directory"),
    (["--share", "/tmp:relative"], "must be absolute"),
    (["--share", "/tmp:/a b"], "without spaces"),
    (["--share", "/tmp,fast"], "unknown option"),
    (["--share", "/tmp:/"], "cannot replace the guest's root"),  # was accepted, and mounted nowhere
    (["--share", "/tmp://."], "cannot replace the guest's root"),
    (["--host-root", "--disk", "/etc/hostname", "--root", "/dev/vda"], "pick one"),
])
def test_bad_share_usage_is_status_2(args: list[str], message: str) -> None:
    r = bootlab_cli("run", *args, "--", "true")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr.decode()
