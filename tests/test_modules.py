from pathlib import Path

import pytest

from bootlab.errors import BadInput
from bootlab.kernel.find import modules_dir
from bootlab.kernel.modules import ModuleIndex


def make(tmp_path: Path, dep: str, builtin: str = "") -> ModuleIndex:
    (tmp_path / "modules.dep").write_text(dep)
    (tmp_path / "modules.builtin").write_text(builtin)
    return ModuleIndex.load(tmp_path)


def test_dependencies_come_first_once(tmp_path: Path) -> None:
    idx = make(tmp_path, "k/a.ko: k/b.ko k/c.ko\nk/b.ko: k/c.ko\nk/c.ko:\nk/d-x.ko.xz: k/c.ko\n")
    assert idx.closure(["a", "d_x"]) == ["k/c.ko", "k/b.ko", "k/a.ko", "k/d-x.ko.xz"]
    assert idx.closure(["d-x"]) == ["k/c.ko", "k/d-x.ko.xz"]  # '-' and '_' are the same name


def test_builtin_modules_are_skipped(tmp_path: Path) -> None:
    idx = make(tmp_path, "k/a.ko: k/b.ko\nk/b.ko:\n", "kernel/k/b.ko\n")
    assert idx.closure(["a"]) == ["k/a.ko"]


def test_unknown_module_is_bad_input(tmp_path: Path) -> None:
    idx = make(tmp_path, "k/a.ko:\n")
    with pytest.raises(BadInput, match="'nope' not found"):
        idx.closure(["nope"])


def test_malformed_lines_and_cycles_do_not_crash(tmp_path: Path) -> None:
    idx = make(tmp_path, "garbage line\n\nk/a.ko: k/b.ko\nk/b.ko: k/a.ko\n:\n")
    assert set(idx.closure(["a"])) == {"k/a.ko", "k/b.ko"}


def test_missing_modules_dep(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="modules.dep"):
        ModuleIndex.load(tmp_path)


def test_real_debian_virtio_console_closure(kernel: Path) -> None:
    root = modules_dir(kernel.name.removeprefix("vmlinuz-"))
    assert root is not None
    paths = ModuleIndex.load(root).closure(["virtio_mmio", "virtio_console"])
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert names.index("virtio_ring.ko") < names.index("virtio.ko") < names.index("virtio_mmio.ko")
    assert names[-1] == "virtio_console.ko"
