"""The TOML spec: every kind of entry, and clear errors for every way to get it wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootlab.errors import BadInput
from bootlab.image import spec as spec_mod
from bootlab.image.entry import Kind


def load(tmp_path: Path, text: str) -> spec_mod.Spec:
    p = tmp_path / "spec.toml"
    p.write_text(text)
    return spec_mod.load(p)


def test_every_entry_kind(tmp_path: Path) -> None:
    (tmp_path / "host.txt").write_text("from host")
    (tmp_path / "tree/sub").mkdir(parents=True)
    (tmp_path / "tree/sub/f").write_text("t")
    (tmp_path / "tree/l").symlink_to("sub/f")
    s = load(tmp_path, '''
init = "#!/bin/sh\\necho hi\\n"
[[dir]]
path = "/srv"
mode = 0o700
uid = 5
[[file]]
path = "/etc/hostname"
content = "lab\\n"
mtime = 1700000000
[[file]]
path = "/etc/copied"
source = "host.txt"
mode = "0600"
[[tree]]
source = "tree"
path = "/opt/t"
[[symlink]]
path = "/bin/vi"
target = "busybox"
[[hardlink]]
path = "/etc/again"
target = "/etc/hostname"
[[device]]
path = "/dev/sda"
type = "block"
major = 8
minor = 0
mode = 0o660
[[fifo]]
path = "/run/pipe"
''')
    by = {e.path: e for e in s.entries}
    assert by["init"].mode == 0o755 and by["init"].read() == b"#!/bin/sh\necho hi\n"
    assert by["srv"].kind is Kind.DIR and by["srv"].mode == 0o700 and by["srv"].uid == 5
    assert by["etc/hostname"].read() == b"lab\n" and by["etc/hostname"].mtime == 1700000000
    assert by["etc/copied"].read() == b"from host" and by["etc/copied"].mode == 0o600
    assert by["opt/t/sub/f"].read() == b"t" and by["opt/t/l"].target == "sub/f"
    assert by["bin/vi"].target == "busybox"
    assert by["etc/again"].hardlink_of == "etc/hostname"
    assert by["dev/sda"].kind is Kind.BLOCK and by["dev/sda"].rdev == (8, 0)
    assert by["run/pipe"].kind is Kind.FIFO
    assert by["dev/console"].rdev == (5, 1)  # defaults every bootable initramfs wants


@pytest.mark.parametrize("text, message", [
    ("nonsense = 1", "unknown key 'nonsense'"),
    ("[[file]]\npath = '/x'\n", "exactly one of content"),
    ("[[file]]\npath = '/x'\nsource = 'missing.bin'\n", "missing.bin: no such file"),
    ("[[file]]\npath = '/x'\ncontent = 'a'\ncolour = 'red'\n", "unknown key 'colour'"),
    ("[[file]]\npath = '../x'\ncontent = 'a'\n", "may not contain '..'"),
    ("[[dir]]\npath = '/x'\nmode = 'rwx'\n", "not octal"),
    ("[[dir]]\npath = '/x'\nmode = 0o17777\n", "out of range"),
    ("[[device]]\npath = '/d'\ntype = 'pipe'\n", "char\" or \"block"),
    ("[[dir]]\npath = '/x'\nuid = -1\n", "whole number"),
    ("file = 3", "array of tables"),
    ("init = 'a'\ninit_file = 'b'\n", "not both"),
    ("modules = 'ext4'", "list of strings"),
    ("x = = 1", "invalid TOML"),
])
def test_bad_specs_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BadInput, match=message.replace("(", r"\(")) as e:
        load(tmp_path, text)
    assert "\n" not in str(e.value)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such spec file"):
        spec_mod.load(tmp_path / "nope.toml")
