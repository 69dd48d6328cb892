"""The TOML spec: every kind of entry, and clear errors for every way to get it wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    ("busybox = 'host.txt'", "not an ELF executable"),  # was a pyelftools traceback
    # each of these was a traceback, or (init_file) a hang or a disk filled from /dev/zero
    ("[[dir]]\npath = '/.'\n", "non-empty string"),
    ("file = [1]", "must be a table"),
    ("[[tree]]\nsource = '.'\npath = 5\n", "non-empty string"),
    ("[[tree]]\nsource = '.'\npath = '/..'\n", "may not contain '..'"),
    ('[[file]]\npath = "/a\\u0000b"\ncontent = "x"\n', "NUL byte"),
    ('[[symlink]]\npath = "/l"\ntarget = "a\\u0000b"\n', "without NUL bytes"),
    ("init_file = '/dev/zero'", "not a regular file"),
    ("[[dir]]\npath = '/x'\nmode = true\n", "out of range"),
    ("busybox = 5", "busybox must be true, false or the path"),
    ("[[hardlink]]\npath = '/h'\ntarget = '/h'\n", "a hard link to itself"),  # was an empty file
    ("compress = ''", "compress must be a non-empty string"),  # meant gzip
    ("compress = 4", "compress must be a non-empty string"),
    ("release = 6.1", "release must be a non-empty string"),  # meant "6.1"
])
def test_bad_specs_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "host.txt").write_text("not a program")
    with pytest.raises(BadInput, match=message.replace("(", r"\(")) as e:
        load(tmp_path, text)
    assert "\n" not in str(e.value)


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such spec file"):
        spec_mod.load(tmp_path / "nope.toml")


# Values of every TOML type, and strings a path or mode check could trip over.
_VALUE = st.one_of(st.integers(min_value=-2**70, max_value=2**70), st.booleans(), st.floats(),
                   st.text(max_size=6), st.sampled_from(["0755", "../x", "/abs", "host.txt", "", "a/../../b",
                                                          "\0", "char", "block", "ext4", "gzip"]))
_VALUES = st.one_of(_VALUE, st.lists(_VALUE, max_size=3))
_TABLES = {kind: st.lists(st.dictionaries(st.sampled_from(sorted(keys) + ["bogus"]), _VALUES, max_size=5),
                          max_size=2) for kind, keys in spec_mod.TABLE_KEYS.items()}
_TOP = {key: _VALUES for key in spec_mod.TOP_KEYS - set(spec_mod.TABLE_KEYS)}


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if value != value else {float("inf"): "inf", float("-inf"): "-inf"}.get(value, repr(value))
    if isinstance(value, str):
        return '"' + "".join(c if c.isalnum() or c in " ./_-" else f"\\U{ord(c):08x}" for c in value) + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return str(value)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.fixed_dictionaries({}, optional={**_TOP, **_TABLES}))
def test_fuzz_specs_load_or_give_one_line(tmp_path_factory: pytest.TempPathFactory, doc: dict) -> None:
    """Any mix of known keys and wrong values: a Spec, or BadInput (a non-ELF busybox was a traceback)."""
    tmp_path = tmp_path_factory.mktemp("fuzz")
    (tmp_path / "host.txt").write_text("not a program")
    lines = [f"{key} = {_toml(value)}" for key, value in doc.items() if key not in spec_mod.TABLE_KEYS]
    for kind in spec_mod.TABLE_KEYS:
        for table in doc.get(kind, []):
            lines += [f"[[{kind}]]"] + [f"{key} = {_toml(value)}" for key, value in table.items()]
    try:
        load(tmp_path, "\n".join(lines) + "\n")
    except BadInput as e:
        assert "\n" not in str(e)


def test_a_tree_whose_entries_vanish_while_it_is_read() -> None:
    """/proc/self/fd lists the descriptor os.walk reads it with, gone by the time it is looked at."""
    entries = spec_mod.host_tree(Path("/proc/self/fd"), "fd")
    assert all(e.path.startswith("fd/") for e in entries)


def test_a_double_slash_is_the_root_too(tmp_path: Path) -> None:
    """POSIX lets '//' be a root of its own; PurePosixPath keeps it as a part, and a tree at
    '//' once became names like '///a'."""
    (tmp_path / "t").mkdir()
    (tmp_path / "t/a").write_text("a")
    s = load(tmp_path, '[[tree]]\nsource = "t"\npath = "//"\n[[dir]]\npath = "//x//y/"\n')
    names = {e.path for e in s.entries}
    assert {"a", "x/y"} <= names and not any(n.startswith("/") for n in names)
