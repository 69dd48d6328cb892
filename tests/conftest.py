"""Shared fixtures. Tests marked `vm` boot the real Debian kernel under TCG: no mock of QEMU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bootlab.kernel.find import default_kernel

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kernel() -> Path:
    """The real kernel the project's setup installs (linux-image-amd64)."""
    return default_kernel()


def bootlab_cli(*args: str, input: bytes | None = None, timeout: float = 300,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the real CLI in a child process, as a user would."""
    return subprocess.run([sys.executable, "-m", "bootlab", *args], input=input,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def vm():
    """One booted guest shared by the API tests: many commands in one boot is the point."""
    import bootlab

    with bootlab.VM(accel="tcg") as machine:
        yield machine
