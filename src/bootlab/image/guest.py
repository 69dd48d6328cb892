"""The initramfs bootlab boots by default: busybox, our agent as /init, and the modules it needs."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from bootlab import cache
from bootlab.errors import BadInput
from bootlab.image import busybox as bb
from bootlab.image import compress, cpio
from bootlab.image.entry import Entry, Tree, directory, file, fingerprint, host_file, skeleton

FORMAT_VERSION = "guest-initramfs-v1"


def source_date_epoch() -> int:
    """Timestamps in built images: $SOURCE_DATE_EPOCH, or 0, so builds are reproducible."""
    value = os.environ.get("SOURCE_DATE_EPOCH") or "0"
    if not value.isdigit() or int(value) > 2**32 - 1:  # (what cpio's and ext4's time fields hold)
        raise BadInput(f"SOURCE_DATE_EPOCH={value!r}: expected whole seconds since 1970, before 2106")
    return int(value)


@dataclass
class GuestSpec:
    agent: Path
    busybox: Path
    modules_root: Path | None = None  # /lib/modules/<release>
    module_paths: list[str] = field(default_factory=list)  # relative to modules_root, load order
    optional_modules: set[str] = field(default_factory=set)  # soft dependencies: failing is fine
    extra: list[Entry] = field(default_factory=list)


MODULE_COMPRESSIONS = {".xz": "xz", ".gz": "gzip", ".zst": "zstd"}


def _compression(rel: str) -> tuple[str, str | None]:
    """kernel/fs/ext4/ext4.ko.zst -> (kernel/fs/ext4/ext4.ko, "zstd"); a plain .ko -> (rel, None)."""
    for ext, algorithm in MODULE_COMPRESSIONS.items():
        if rel.endswith(".ko" + ext):
            return rel[: -len(ext)], algorithm
    return rel, None


def plain_module_name(rel: str) -> str:
    """kernel/fs/ext4/ext4.ko.zst -> kernel/fs/ext4/ext4.ko"""
    return _compression(rel)[0]


def module_entry(root: Path, rel: str, release: str) -> Entry:
    """A module, uncompressed: the agent loads modules with plain finit_module, and busybox's
    modprobe cannot read .ko.zst (the archive is compressed as a whole anyway)."""
    src = root / rel
    plain, algorithm = _compression(rel)
    dest = f"lib/modules/{release}/{plain}"
    if algorithm is None:
        return host_file(dest, src, 0o644)
    try:
        data, _ = compress.decompress_stream(algorithm, src.read_bytes())
    except compress.CorruptData as e:
        raise BadInput(f"module {src}: {e}") from None
    return file(dest, data)


def entries(spec: GuestSpec) -> list[Entry]:
    tree = Tree()
    tree.extend(skeleton())
    for d in ("mnt", "var", "usr/bin", "usr/sbin", "sbin"):
        tree.add(directory(d))
    tree.extend(bb.entries(spec.busybox))
    tree.add(host_file("init", spec.agent, 0o755))
    tree.add(file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"))
    tree.add(file("etc/group", b"root:x:0:\n"))
    load_list: list[str] = []
    if spec.modules_root is not None:
        release = spec.modules_root.name
        for rel in spec.module_paths:
            e = module_entry(spec.modules_root, rel, release)
            tree.add(e)
            load_list.append(("-" if rel in spec.optional_modules else "") + "/" + e.path)
    tree.add(file("etc/bootlab/modules", "".join(p + "\n" for p in load_list).encode()))
    tree.extend(spec.extra)
    epoch = source_date_epoch()
    return [dataclasses.replace(e, mtime=epoch) for e in tree.sorted()]


def cache_key(spec: GuestSpec) -> str:
    """Identity of every input, without building the entry list (that costs a busybox run)."""
    modules = [cache.file_identity(spec.modules_root / rel) for rel in spec.module_paths] \
        if spec.modules_root is not None else []
    return cache.key(FORMAT_VERSION, source_date_epoch(), cache.file_identity(spec.agent),
                     cache.file_identity(spec.busybox), str(spec.modules_root), spec.module_paths,
                     sorted(spec.optional_modules),
                     modules, fingerprint(spec.extra))


def build(spec: GuestSpec) -> Path:
    """The cached uncompressed cpio: unpacking is faster than any decompression under TCG."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            cpio.write(f, entries(spec))

    return cache.cached("initramfs", cache_key(spec), write, ".cpio")
