"""busybox and its applet links, as entries."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bootlab.errors import BadInput
from bootlab.image.entry import Entry, host_file, symlink

DEFAULT_PATHS = (Path("/bin/busybox"), Path("/usr/bin/busybox"))


def find_busybox(explicit: Path | None = None) -> Path:
    if explicit is not None:
        if not explicit.is_file():
            raise BadInput(f"busybox {explicit}: no such file")
        return explicit
    for p in DEFAULT_PATHS:
        if p.is_file():
            return p
    found = shutil.which("busybox")
    if found:
        return Path(found)
    raise BadInput("busybox not found: install it (apt-get install busybox-static) or pass --busybox PATH")


def applets(busybox: Path) -> list[str]:
    """The install paths busybox itself reports (`--list-full`), e.g. 'bin/sh', 'usr/bin/awk'.

    A busybox of another architecture cannot run here; the host's busybox (the same Debian
    package, so the same applets) answers for it."""
    try:
        out = subprocess.run([str(busybox), "--list-full"], capture_output=True, check=True,
                             timeout=10).stdout.decode()
    except OSError as e:
        host = next((p for p in DEFAULT_PATHS if p.is_file() and p != busybox), None)
        if e.errno == 8 and host is not None:  # ENOEXEC: another architecture
            return applets(host)
        raise BadInput(f"busybox {busybox}: cannot list its applets ({e})") from None
    except subprocess.SubprocessError as e:
        raise BadInput(f"busybox {busybox}: cannot list its applets ({e})") from None
    return [line.strip().lstrip("/") for line in out.splitlines() if line.strip()]


def _relative_target(applet: str) -> str:
    """Relative links keep the tree valid wherever it is unpacked or mounted."""
    if applet.startswith("bin/") and applet.count("/") == 1:
        return "busybox"
    return "../" * applet.count("/") + "bin/busybox"


def entries(busybox: Path) -> list[Entry]:
    """bin/busybox plus one symlink per applet; refuses a dynamic busybox (it would lack its libc)."""
    from bootlab.image.elf import read_elf

    info = read_elf(busybox)  # (BadInput for a damaged ELF)
    if info is None:
        raise BadInput(f"busybox {busybox}: not an ELF executable; use a static busybox "
                       "(apt-get install busybox-static)")
    if info.interp is not None:
        raise BadInput(f"busybox {busybox} is dynamically linked; use a static one "
                       "(apt-get install busybox-static)")
    out = [host_file("bin/busybox", busybox, 0o755)]
    for path in applets(busybox):
        if path in ("bin/busybox", "bin/init", "sbin/init", "linuxrc"):
            continue  # PID 1 is ours
        out.append(symlink(path, _relative_target(path)))
    return out
