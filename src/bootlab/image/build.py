"""Building an initramfs image from a spec: resolve modules and ELF closures, write, compress.

The output is written to a temporary name and renamed, so a failed build leaves no file; the
same inputs and SOURCE_DATE_EPOCH give byte-identical output.
"""

from __future__ import annotations

import dataclasses
import io
import re
from dataclasses import dataclass
from pathlib import Path

from bootlab import cache
from bootlab.errors import BadInput
from bootlab.image import compress as codecs
from bootlab.image import cpio
from bootlab.image.entry import Entry, Kind, Tree, file, host_file
from bootlab.image.guest import module_entry, plain_module_name, source_date_epoch
from bootlab.image.spec import Spec, host_tree, parse
from bootlab.kernel.modules import ModuleIndex, module_name

COMPRESSIONS = ("none", *codecs.ALGORITHMS)


@dataclass(frozen=True)
class KernelInfo:
    release: str | None
    config: dict[str, str] | None  # CONFIG_* values, when a .config is at hand


def kernel_info(spec: Spec) -> KernelInfo:
    release = spec.release
    config_path: Path | None = None
    if spec.kernel is not None:
        from bootlab.kernel.image import inspect

        release = release or inspect(spec.kernel).release
        near = spec.kernel.parent / f"config-{release}"
        if near.exists():
            config_path = near
    if release and config_path is None and Path(f"/boot/config-{release}").exists():
        config_path = Path(f"/boot/config-{release}")
    config = None
    if config_path is not None:
        config = dict(re.findall(r"^(CONFIG_\w+)=(.*)$", config_path.read_text(errors="replace"), re.M))
    return KernelInfo(release, config)


def check_compression(algorithm: str, info: KernelInfo) -> None:
    """Refuse what the kernel could not unpack: it would fail at boot with a terse message."""
    if algorithm not in COMPRESSIONS:
        raise BadInput(f"unknown compression {algorithm!r}; choose one of {', '.join(COMPRESSIONS)}")
    if algorithm == "none" or info.config is None:
        return
    option = codecs.KERNEL_CONFIG[algorithm]
    if info.config.get(option) != "y":
        usable = [a for a in codecs.ALGORITHMS if info.config.get(codecs.KERNEL_CONFIG[a]) == "y"]
        raise BadInput(f"kernel {info.release} lacks {option}: it cannot unpack a {algorithm} initramfs; "
                       f"use one of: none, {', '.join(usable) or '(no compression is enabled)'}")


def module_entries(names: list[str], modules_root: Path, release: str) -> list[Entry]:
    """The modules and their dependencies, uncompressed (see guest.module_entry), plus
    modules.dep and modules.alias regenerated for this subset so that modprobe inside finds
    exactly what is there."""
    idx = ModuleIndex.load(modules_root)
    paths = idx.closure(names)
    base = f"lib/modules/{release}"
    out = [module_entry(modules_root, rel, release) for rel in paths]
    chosen = set(paths)

    def plain(word: str) -> str:  # "kernel/lib/crc16.ko.zst:" -> "kernel/lib/crc16.ko:"
        return plain_module_name(word.rstrip(":")) + (":" if word.endswith(":") else "")

    dep_lines = [" ".join(map(plain, line.split()))
                 for line in (modules_root / "modules.dep").read_text().splitlines()
                 if line.split(":", 1)[0].strip() in chosen]
    out.append(file(f"{base}/modules.dep", "".join(l + "\n" for l in dep_lines).encode()))
    names_in = {module_name(p) for p in paths}
    alias_file = modules_root / "modules.alias"
    if alias_file.exists():
        aliases = [l for l in alias_file.read_text().splitlines()
                   if l.startswith("alias ") and l.split()[-1].replace("-", "_") in names_in]
        out.append(file(f"{base}/modules.alias", "".join(l + "\n" for l in aliases).encode()))
    for extra in ("modules.builtin", "modules.builtin.modinfo", "modules.softdep"):
        if (modules_root / extra).exists():
            out.append(host_file(f"{base}/{extra}", modules_root / extra, 0o644))
    return out


def resolve(spec: Spec, *, extra_modules: list[str] | None = None) -> list[Entry]:
    """All entries of the spec, closures included, in a stable order with SOURCE_DATE_EPOCH."""
    from bootlab.image import elf

    tree = Tree()
    tree.extend(spec.entries)
    # ELF closures of listed binaries, and of every ELF file the spec put in (its /init too).
    wanted = [b if b.startswith("/") else "/" + b for b in spec.binaries]
    tree.extend(elf.closure(wanted, spec.sysroot) if wanted else [])
    for e in list(tree.entries.values()):
        if e.kind is Kind.FILE and e.source is not None and elf.is_dynamic(e.source):
            for dep in elf.closure([str(e.source)], Path("/"), themselves=False):
                if dep.path not in tree.entries and tree.resolve(dep.path) not in tree.entries:
                    tree.add(dep)
    modules = [*spec.modules, *(extra_modules or [])]
    if modules:
        info = kernel_info(spec)
        release = info.release
        if release is None:
            from bootlab.kernel.find import default_kernel
            from bootlab.kernel.image import inspect

            release = inspect(default_kernel()).release
        root = spec.modules_dir or Path(f"/lib/modules/{release}")
        if not (root / "modules.dep").exists():
            raise BadInput(f"no modules for kernel {release} in {root} (set modules_dir or install them)")
        tree.extend(module_entries(modules, root, str(release)))
    epoch = source_date_epoch()
    return [dataclasses.replace(e, mtime=e.mtime or epoch) for e in tree.sorted()]


def archive(entries: list[Entry], algorithm: str) -> bytes:
    buf = io.BytesIO()
    cpio.write(buf, entries)
    data = buf.getvalue()
    return data if algorithm == "none" else codecs.compress(algorithm, data)


def early_entries(source: Path) -> list[Entry]:
    """An early (uncompressed, first) segment: a directory as it is, or a spec without defaults."""
    if source.is_dir():
        return Tree(entries={e.path: e for e in host_tree(source, "")}).sorted()
    import tomllib

    try:
        doc = tomllib.loads(source.read_text())
    except FileNotFoundError:
        raise BadInput(f"--early {source}: no such file or directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"--early {source}: invalid TOML: {e}") from None
    spec = parse(doc, source, defaults=False)
    return resolve(spec)


def check_output(out: Path, *inputs: Path | None) -> None:
    """Refuse an output path before any work: a directory, a missing parent directory, or one
    of the input files (the image would overwrite the spec it was built from)."""
    if out.is_dir():
        raise BadInput(f"-o {out}: is a directory")
    if not out.parent.is_dir():
        raise BadInput(f"-o {out}: directory {out.parent} does not exist")
    if any(p is not None and p.is_file() and p.resolve() == out.resolve() for p in inputs):
        raise BadInput(f"-o {out}: that is the spec itself")


def build(spec: Spec, out: Path, *, algorithm: str | None = None, early: Path | None = None,
          extra_modules: list[str] | None = None) -> Path:
    check_output(out, spec.source, early)
    algorithm = (spec.compress or "gzip") if algorithm is None else algorithm
    check_compression(algorithm, kernel_info(spec) if (spec.kernel or spec.release) else KernelInfo(None, None))
    entries = resolve(spec, extra_modules=extra_modules)
    early_data = archive(early_entries(early), "none") if early is not None else b""
    body = archive(entries, algorithm)
    return cache.atomic_write(out, lambda tmp: tmp.write_bytes(early_data + body), mode=0o644)
