"""Several bootlab processes filling an empty cache at once (a test matrix, parallel CI jobs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def _all_at_once(setup: str, action: str, cache: Path, n: int = 6) -> list[bytes]:
    """Run `action` in n processes with an empty cache, released together once each has run
    `setup` (its imports); their outputs, after checking that all succeeded."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    go = cache / "go"
    script = f"{setup}\nimport os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.001)\n{action}"
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(n)]
    time.sleep(1)  # (the imports)
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * n, [err.decode()[-300:] for _, err in results]
    return [out.strip() for out, _ in results]


def test_the_agent_is_built_once_by_many(tmp_path: Path) -> None:
    """Each build wrote its C source to one shared name (Path.with_suffix dropped the unique
    end of the temporary's name): of six builds at once, four failed to link."""
    built = _all_at_once("from bootlab.vm import agent_build, arch",
                         "print(agent_build.agent_binary(arch.get(None)))", tmp_path)
    assert len(set(built)) == 1 and Path(os.fsdecode(built[0])).stat().st_size > 0
    assert os.listdir(tmp_path / "bootlab" / "agent") == [Path(os.fsdecode(built[0])).name]


def test_the_vmlinux_is_extracted_once_by_many(tmp_path: Path, kernel: Path) -> None:
    """Each run wrote the extracted vmlinux to one shared NAME.tmp, then renamed or removed it:
    of several runs at once, all but one failed with FileNotFoundError."""
    paths = _all_at_once("from pathlib import Path; from bootlab.kernel.find import bootable",
                         f"print(bootable(Path({str(kernel)!r})).boot_path)", tmp_path, n=4)
    assert len(set(paths)) == 1 and paths[0].endswith(b".pvh.elf")
    assert os.listdir(tmp_path / "bootlab" / "vmlinux") == [Path(os.fsdecode(paths[0])).name]  # no temporary left


def test_the_ssh_key_pair_is_made_once_by_many(tmp_path: Path) -> None:
    """Runs with --ssh started together removed each other's half-made pair, and ssh-keygen then
    refused to overwrite (CalledProcessError); or one run's key went with another's .pub."""
    made = _all_at_once("from bootlab.vm import ssh", "print(ssh.ensure_key())", tmp_path)
    key = Path(os.fsdecode(made[0]))
    assert set(made) == {made[0]}
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True, check=True).stdout
    assert derived.split()[:2] == key.with_suffix(".pub").read_bytes().split()[:2]  # one pair
