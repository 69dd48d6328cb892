"""What `bootlab run --add` and `--spec` put into the guest, as entries or a ready image."""

from __future__ import annotations

import os
from pathlib import Path

from bootlab import cache
from bootlab.errors import BadInput
from bootlab.image.entry import Entry, Kind, path_parts
from bootlab.image.spec import Spec, host_tree


def parse_add(value: str) -> tuple[Path, str]:
    """HOST[:GUEST]; GUEST defaults to the host path, as an absolute path in the guest."""
    host, sep, guest = value.partition(":")
    if not host:
        raise BadInput(f"--add {value!r}: expected HOST[:GUEST]")
    path = Path(os.path.expanduser(host))
    if not path.exists():
        raise BadInput(f"--add {value!r}: {host}: no such file or directory")
    target = guest if sep and guest else str(path.resolve())
    if not target.startswith("/"):
        raise BadInput(f"--add {value!r}: the guest path must be absolute")
    parts = path_parts(target)
    if ".." in parts:
        raise BadInput(f"--add {value!r}: the guest path may not contain '..'")
    if not parts and not path.is_dir():
        raise BadInput(f"--add {value!r}: a file needs a name in the guest, not /")
    return path, "/".join(parts)


def add_entries(value: str) -> list[Entry]:
    """A host file or tree at its guest path, with the ELF libraries its programs need."""
    from bootlab.image import elf

    host, guest = parse_add(value)
    if host.is_dir():
        entries = host_tree(host, guest)
        if guest:
            entries.insert(0, Entry(guest, Kind.DIR, 0o755))
        programs = [str(e.source) for e in entries if e.kind is Kind.FILE and e.source is not None
                    and elf.is_dynamic(e.source)]
    elif host.is_file():
        entries = [Entry(guest, Kind.FILE, host.stat().st_mode & 0o7777, source=host)]
        programs = [str(host.resolve())] if elf.is_dynamic(host) else []
    else:  # (a fifo would hang the build, a device be read to its end)
        raise BadInput(f"--add {value!r}: {host} is not a regular file or a directory")
    libs = elf.closure(programs, Path("/"), themselves=False) if programs else []
    return libs + entries


def cached_spec_image(spec: Spec, modules: list[str]) -> Path:
    """A spec with its own init, built uncompressed into the cache for booting as it is."""
    from bootlab.image import build
    from bootlab.image.entry import fingerprint

    entries = build.resolve(spec, extra_modules=modules)
    key = cache.key("spec-image-v1", fingerprint(entries))
    return cache.cached("initramfs", key, lambda tmp: tmp.write_bytes(build.archive(entries, "none")), ".cpio")
