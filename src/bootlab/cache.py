"""The content-keyed cache under $XDG_CACHE_HOME/bootlab: extracted vmlinux, built images, probes.

Everything is written to a temporary name and renamed, so a crash never leaves a half file that
a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bootlab"


def key(*parts: object) -> str:
    """A short stable hash of the inputs that determine an artifact."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def file_identity(path: Path) -> list[object]:
    """Cheap identity of a host file: enough to notice it was replaced or rebuilt."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino]


def atomic_write(dest: Path, write: Callable[[Path], None], mode: int | None = None) -> Path:
    """Produce `dest` by calling write(tmp) and renaming; nothing is left behind on failure.
    `mode` (e.g. 0o644, less the umask) for files meant for users rather than the cache."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # (the name cut short: a 250-byte dest is legal, and its temporary name must be too)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:32]}.", dir=dest.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        if mode is not None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, mode & ~umask)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def cached(kind: str, cache_key: str, build: Callable[[Path], None], suffix: str = "") -> Path:
    """Return the cached artifact for `cache_key`, building it once with build(tmp_path)."""
    dest = root() / kind / f"{cache_key}{suffix}"
    if dest.exists():
        return dest
    return atomic_write(dest, build)
